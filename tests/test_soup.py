"""Model soups (`modeling.soup`, `recipes/model_soup.py`): the weights' uniform average, the greedy search, the
refusal of other architectures, and the recipe's record, on tiny models and generated images."""

import json
import sys

import numpy as np
import pytest
import torch
from app_fixtures import save_tiny_model
from helpers import ROOT, make_image_folder, tiny_config
from safetensors.torch import load_file

from modeling import AsffResNetForImageClassification
from modeling.image_processing import build_image_processor
from modeling.inference import load_classifier, predict
from modeling.soup import SoupError, average_weights, check_compatible, greedy_soup, write_soup
from modeling.synthetic import lesion_image
from modeling.training import recipe_settings

sys.path.insert(0, str(ROOT / "recipes"))


def with_settings(folder, **settings):
    (folder / "training_settings.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture
def three(tmp_path):
    return [with_settings(save_tiny_model(tmp_path / name, seed=seed), name=name, seed=seed, side=64,
                          best_epoch=seed + 1, epochs_completed=5, history=[{"epoch": 1}])
            for seed, name in enumerate(["a", "b", "c"])]


def test_the_soup_is_the_mean_of_the_weights_and_loads_like_any_model(three, tmp_path):
    out = write_soup(tmp_path / "soup", three, {"score": 0.5})
    states = [load_file(d / "model.safetensors") for d in three]
    soup = load_file(out / "model.safetensors")
    assert soup.keys() == states[0].keys()
    for key, tensor in soup.items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, sum(s[key] for s in states) / 3, atol=1e-6), key
        else:
            assert torch.equal(tensor, states[0][key])  # BatchNorm's step counter: the first model's
    assert not torch.equal(soup["classifier.0.weight"], states[0]["classifier.0.weight"])
    model, processor, _ = load_classifier(out)
    probabilities = predict(model, processor, lesion_image(1, np.random.default_rng(0), 64)).probabilities
    assert sum(probabilities.values()) == pytest.approx(1)
    settings = json.loads((out / "training_settings.json").read_text())
    assert settings["name"] == "soup" and "history" not in settings and "best_epoch" not in settings
    assert [run["name"] for run in settings["soup"]["ingredients"]] == ["a", "b", "c"]
    assert settings["soup"]["score"] == 0.5 and "history" not in settings["soup"]["ingredients"][0]
    # the card's settings name every run of the soup
    described = recipe_settings(settings)["weights_soup"]
    assert described.startswith("a (seed 0, 64 px, epoch 1 of 5); b (seed 1")


def test_a_soup_of_one_model_is_that_model(three, tmp_path):
    out = write_soup(tmp_path / "one", three[:1])
    mine, theirs = load_file(out / "model.safetensors"), load_file(three[0] / "model.safetensors")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_other_architectures_and_missing_weights_are_refused_by_name(three, tmp_path):
    other = tmp_path / "spatial"
    save_tiny_model(other, fusion_mode="spatial")
    with pytest.raises(SoupError, match=r"spatial is not the architecture of .*a \(config differs in fusion_mode"):
        check_compatible([three[0], other])
    wider = tmp_path / "wider"
    torch.manual_seed(0)
    AsffResNetForImageClassification(tiny_config(head_hidden_size=8)).save_pretrained(wider)
    with pytest.raises(SoupError, match="head_hidden_size"):
        average_weights([three[0], wider])
    with pytest.raises(SoupError, match="has no model.safetensors"):
        check_compatible([three[0], tmp_path / "nothing"])
    # input size and calibration may differ (what training and calibration set)
    config = json.loads((three[1] / "config.json").read_text())
    config.update(image_size=96, temperature=1.7)
    (three[1] / "config.json").write_text(json.dumps(config))
    build_image_processor(96).save_pretrained(three[1])
    check_compatible(three)


def test_the_greedy_soup_adds_best_first_and_keeps_only_what_does_not_lower_the_score(three, tmp_path):
    own = {"a": 0.70, "b": 0.90, "c": 0.80}
    with_both = {("b", "c"): 0.85, ("b", "a"): 0.95}  # b+c falls below b: c is rejected; b+a rises: a is kept

    def score(folder):
        settings = json.loads((folder / "training_settings.json").read_text())
        if "soup" not in settings:
            return own[settings["name"]]
        return with_both[tuple(run["name"] for run in settings["soup"]["ingredients"])]

    scored = []
    chosen, record = greedy_soup(three, lambda d: scored.append(d.name) or score(d), tmp_path / "work",
                                 scores={str(three[0]): 0.70}, log=lambda line: None)
    assert [d.name for d in chosen] == ["b", "a"]
    assert "a" not in scored  # its known score was used
    assert record["trials"] == [{"added": "c", "score": 0.85, "kept": False},
                                {"added": "a", "score": 0.95, "kept": True}]
    assert record["score"] == 0.95 and record["model_scores"] == own


def test_the_recipe_writes_a_scored_soup(three, tmp_path):
    import model_soup

    data = make_image_folder(tmp_path / "data", {"train": 10}, size=64)
    record = model_soup.main([str(tmp_path / "soup"), *map(str, three[:2]), "--dataset", str(data)])
    settings = json.loads((tmp_path / "soup" / "training_settings.json").read_text())
    assert settings["soup"]["score"] == record["score"] and 0 <= record["score"] <= 1
    assert settings["soup"]["score_by_source"]["mean"] == record["score"]
    assert [run["name"] for run in settings["soup"]["ingredients"]] == ["a", "b"]
