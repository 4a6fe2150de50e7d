"""modeling.occlusion: erasing the lesion or its context from the model's view, the test's arithmetic on a model
that reads only the lesion, and the CLI on generated images."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import make_image_folder, skin_with_lesion
from PIL import Image
from torch import nn

from modeling.explain import _denormalise
from modeling.image_processing import build_image_processor
from modeling.lesion_focus import lesion_mask
from modeling.occlusion import (
    FIGURE_FILE,
    JSON_FILE,
    VARIANTS,
    _normalise,
    main,
    occlude,
    occlusion_markdown,
    occlusion_test,
)


def as_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def test_erasing_the_lesion_inpaints_it_away_and_leaves_the_skin():
    image, truth = skin_with_lesion(size=96, centre=(48, 48), radius=20)
    erased = occlude(as_float(image), truth, "lesion")
    assert erased.shape == image.shape and erased.dtype == np.float32
    far = np.ones_like(truth)
    far[20:76, 20:76] = False  # well outside the grown mask: untouched (up to uint8 rounding)
    assert np.abs(erased[far] - as_float(image)[far]).max() <= 1 / 255 + 1e-6
    assert lesion_mask(erased) is None  # nothing dark is left for the proxy to find
    skin = as_float(image)[0, 0]
    assert np.abs(erased[48, 48] - skin).max() < 0.05  # filled with (about) the skin's colour


def test_erasing_the_context_keeps_the_lesion_on_the_skins_median_colour():
    image, truth = skin_with_lesion(size=96, centre=(48, 48), radius=20)
    image = as_float(image)
    erased = occlude(image, truth, "context")
    assert np.array_equal(erased[truth], image[truth])
    assert np.allclose(erased[0, 0], image[0, 0]) and np.allclose(erased[0, :], erased[0, 0])
    with pytest.raises(ValueError, match="lesion' or 'context"):
        occlude(image, truth, "both")
    with pytest.raises(ValueError, match="same size"):
        occlude(image, truth[:10], "lesion")
    assert occlude(image, np.ones_like(truth), "lesion") is None  # no skin left to fill from


def test_normalise_inverts_the_model_view():
    processor = build_image_processor(48)
    x = processor(images=Image.fromarray(skin_with_lesion(size=48, centre=(24, 24), radius=10)[0]),
                  return_tensors="pt")["pixel_values"]
    assert torch.allclose(_normalise(processor, _denormalise(processor, x)), x[0], atol=1e-6)


class Darkness(nn.Module):
    """A 'model' that reads only how dark the image is: p(malignant) rises with it. The generated malignant lesions
    are large and dark, so it needs the lesion and nothing else."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(id2label={0: "benign", 1: "malignant"})

    def forward(self, pixel_values):
        darkness = -pixel_values.mean(dim=(1, 2, 3))
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(darkness), 20 * darkness], dim=1))


def lesions(n: int) -> tuple[list[Image.Image], list[int]]:
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        radius = int(rng.integers(24, 30)) if label else int(rng.integers(10, 14))
        image, _ = skin_with_lesion(size=96, centre=tuple(rng.integers(40, 56, 2)), radius=radius)
        images.append(Image.fromarray(image))
        labels.append(label)
    return images, labels


def test_a_model_that_reads_only_the_lesion_falls_to_chance_without_it():
    images, labels = lesions(12)
    images.append(Image.new("RGB", (96, 96), (200, 170, 160)))  # no lesion: left out, counted
    labels.append(0)
    result = occlusion_test(Darkness(), build_image_processor(96), images, labels, progress=False, n_resamples=200,
                            batch_size=5, sources=["a"] * 7 + ["b"] * 6)
    summary = result.summary
    assert summary["images"] == 13 and summary["without_mask"] == 1 and summary["all"]["n"] == 12
    assert summary["all"]["original"]["roc_auc"] == 1.0
    assert summary["all"]["context erased"]["roc_auc"] == 1.0  # the lesion alone is enough
    assert summary["all"]["lesion erased"]["roc_auc"] < 0.8  # without it: near chance
    assert summary["all"]["lesion erased"]["minus_original"]["delta"] < -0.2
    assert set(summary["sources"]) == {"a", "b"} and summary["sources"]["b"]["n"] == 5
    assert summary["all"]["mask_area_roc_auc"] == 1.0  # here the malignant lesions are the large ones
    assert "area alone (how large the erased region is) scores ROC AUC 1.000" in occlusion_markdown(summary)
    assert [row["p_original"] is None for row in result.per_image] == [False] * 12 + [True]
    assert len(result.examples) == 3 and all(len(row) == len(VARIANTS) for row in result.examples)
    text = occlusion_markdown(summary)
    assert "| **all** | 12 | 1.000" in text and "1 of 13 images had no proxy lesion mask" in text


def test_cli_end_to_end_on_generated_images(tiny_model_dir, tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", {"train": 12, "test": 4}, size=64)
    summary = main([str(tiny_model_dir), "--dataset", str(data), "--output_dir", str(tmp_path / "out"),
                    "--no_progress", "--validation_fraction", "0.5"])
    saved = json.loads((tmp_path / "out" / JSON_FILE).read_text())
    assert saved["summary"] == summary and summary["images"] == 12  # the carved validation split, not test
    assert len(saved["images"]) == 12 and all(row["id"].startswith("train/") for row in saved["images"])
    assert (tmp_path / "out" / FIGURE_FILE).is_file() or summary["without_mask"] == summary["images"]
    assert "ROC AUC: original | lesion erased | context erased" in capsys.readouterr().out
    with pytest.raises(SystemExit) as error:
        main([str(tiny_model_dir), "--dataset", str(data), "--limit", "0", "--output_dir", str(tmp_path / "no")])
    assert error.value.code == 2 and "--limit must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:  # never into the model's own report/ by default
        main([str(tiny_model_dir), "--dataset", str(data)])
    assert error.value.code == 2 and "--output_dir" in capsys.readouterr().err
    assert not (tiny_model_dir / "report").exists()
