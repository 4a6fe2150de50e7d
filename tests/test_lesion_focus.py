"""modeling.lesion_focus and its parts: the CAM frame share of hand-made maps, the raw (unscaled) Grad-CAM it is
computed on, the seeded stratified sample, the summary, the CLI on generated images, and the report, metrics.json
and model card written after training or evaluation."""

import json

import numpy as np
import pytest
import torch
from helpers import TINY_IMAGE_SIZE, TINY_TRAIN_ARGS, make_image_folder, skin_with_lesion, tiny_config
from PIL import Image

import modeling.training as training
from modeling import AsffResNetForImageClassification
from modeling.explain import _denormalise, cam_frame_share, cam_target_layer, raw_grad_cams
from modeling.image_processing import build_image_processor
from modeling.lesion_focus import (
    FIGURE_FILE,
    JSON_FILE,
    UNIFORM_FRAME_SHARE,
    cam_grid,
    cam_lesion_share,
    frame_shares,
    lesion_mask,
    lesion_reference,
    main,
    mask_at_grid,
    stratified_sample,
    summarise,
)
from modeling.model_card import build_model_card
from modeling.report import frame_share_markdown
from train_hf import parse_args

# --------------------------------------------------------------------------- the frame share of a map


def test_frame_share_of_hand_made_maps():
    centre = np.zeros((224, 224))
    centre[28:196, 28:196] = 1.0
    assert cam_frame_share(centre) == 0.0
    assert cam_frame_share(np.ones((224, 224))) == UNIFORM_FRAME_SHARE == 0.4375
    assert cam_frame_share(np.ones((32, 32))) == 0.4375  # 4 px frame
    assert cam_frame_share(1.0 - centre) == 1.0
    one_corner = np.zeros((224, 224))
    one_corner[0, 0] = 5.0
    assert cam_frame_share(one_corner) == 1.0
    assert np.isnan(cam_frame_share(np.zeros((224, 224))))  # no mass: counted apart, not a share


def test_frame_share_is_scale_invariant_and_not_min_max_normalised():
    rng = np.random.default_rng(0)
    cam = rng.random((56, 56)) ** 3
    assert cam_frame_share(cam * 1e-6) == pytest.approx(cam_frame_share(cam)) == pytest.approx(
        cam_frame_share(cam * 7.0))
    # An offset is mass: a centred blob on a raised floor has frame mass that min-max scaling would remove.
    blob = np.zeros((64, 64))
    blob[24:40, 24:40] = 1.0
    raised = blob + 0.1
    assert cam_frame_share(raised) == pytest.approx(0.1 * 0.4375 * 64 ** 2 / raised.sum())
    normalised = (raised - raised.min()) / (raised.max() - raised.min())
    assert cam_frame_share(normalised) == 0.0 != cam_frame_share(raised)
    with pytest.raises(ValueError, match="non-negative"):
        cam_frame_share(cam - 0.5)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        cam_frame_share(np.ones((2, 8, 8)))


# --------------------------------------------------------------------------- the raw Grad-CAM behind it


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = AsffResNetForImageClassification(tiny_config("channel")).eval()
    return model, build_image_processor(TINY_IMAGE_SIZE)


def _inputs(processor, n: int = 4) -> torch.Tensor:
    from helpers import lesion_image

    rng = np.random.default_rng(1)
    images = [lesion_image(i % 2, rng, size=48) for i in range(n)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _reference_cams(model, inputs: torch.Tensor, classes: list[int], contrast: bool = False) -> np.ndarray:
    """Grad-CAM by hand: ReLU(sum over channels of the spatially averaged gradient x activation) at the fused map,
    upsampled bilinearly (half-pixel centres, as cv2 does), never rescaled. `contrast`: of the logit margin, each
    class's logit minus the other's (two classes)."""
    layer, _ = cam_target_layer(model, "fused")
    saved = {}
    handle = layer.register_forward_hook(lambda module, args, output: saved.setdefault("map", output))
    try:
        logits = model(pixel_values=inputs).logits
        rows, classes = torch.arange(len(classes)), torch.as_tensor(classes)
        score = logits[rows, classes] - (logits[rows, 1 - classes] if contrast else 0)
        gradients, = torch.autograd.grad(score.sum(), saved["map"])
    finally:
        handle.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * saved["map"]).sum(dim=1, keepdim=True)).detach()
    size = inputs.shape[-2:]
    return torch.nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def test_raw_grad_cams_equal_a_hand_computed_grad_cam_without_rescaling(tiny):
    model, processor = tiny
    inputs = _inputs(processor)
    classes = [0, 1, 1, 0]
    cams, logits = raw_grad_cams(model, inputs, classes)
    assert cams.shape == (4, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) and logits.shape == (4, 2)
    expected = _reference_cams(model, inputs, classes)
    assert expected.max() > 0
    np.testing.assert_allclose(cams, expected, rtol=1e-4, atol=1e-6 * expected.max())
    for cam, reference in zip(cams, expected, strict=True):
        if reference.sum() > 0:
            assert cam_frame_share(cam) == pytest.approx(cam_frame_share(reference), abs=1e-5)


def test_raw_contrast_cams_are_grad_cams_of_the_margin_and_frame_shares_say_so(tiny):
    """contrast=True (what the app shows): each class's logit minus the other's; the two classes' margin maps then
    differ from their plain ones, and the frame-share summary names the margin as what it measured."""
    model, processor = tiny
    inputs = _inputs(processor)
    classes = [0, 1, 1, 0]
    cams, _ = raw_grad_cams(model, inputs, classes, contrast=True)
    expected = _reference_cams(model, inputs, classes, contrast=True)
    assert expected.max() > 0 and not np.allclose(expected, _reference_cams(model, inputs, classes))
    np.testing.assert_allclose(cams, expected, rtol=1e-4, atol=1e-6 * expected.max())
    from helpers import lesion_image

    rng = np.random.default_rng(2)
    images = [lesion_image(i % 2, rng, size=40) for i in range(4)]
    summary = frame_shares(model, processor, images, [0, 1, 0, 1], progress=False, n_resamples=20,
                           contrast=True).summary
    assert summary["cam_class"].startswith("true label against the other")
    assert frame_shares(model, processor, images, [0, 1, 0, 1], progress=False,
                        n_resamples=20).summary["cam_class"] == "true label"


def test_raw_cams_scale_with_the_logits_and_the_model_is_left_as_it_was(tiny):
    """Min-max scaling would make the maps blind to a scaled head; the raw maps scale with it, their shares do not."""
    model, processor = tiny
    inputs = _inputs(processor)
    cams, _ = raw_grad_cams(model, inputs, [1, 1, 0, 0])
    scaled = AsffResNetForImageClassification(model.config).eval()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled.classifier[-1].weight.mul_(3.0)
        scaled.classifier[-1].bias.mul_(3.0)
    scaled.train()  # raw_grad_cams evaluates in eval mode and gives the mode back
    flags = [p.requires_grad for p in scaled.parameters()]
    tripled, _ = raw_grad_cams(scaled, inputs, [1, 1, 0, 0])
    assert scaled.training and [p.requires_grad for p in scaled.parameters()] == flags
    assert all(p.grad is None for p in scaled.parameters())  # gradients stop at the target layer
    np.testing.assert_allclose(tripled, 3.0 * cams, rtol=1e-4, atol=1e-7)
    assert cams.max() != pytest.approx(1.0)  # not min-max normalised
    for cam, big in zip(cams, tripled, strict=True):
        if cam.sum() > 0:
            assert cam_frame_share(big) == pytest.approx(cam_frame_share(cam), abs=1e-6)


# --------------------------------------------------------------------------- sample and summary


def test_stratified_sample_is_seeded_proportional_and_whole_without_a_limit():
    groups = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    sample = stratified_sample(groups, 20, seed=0)
    assert len(sample) == 20 and len(set(sample)) == 20 and list(sample) == sorted(sample)
    assert [sum(groups[i] == g for i in sample) for g in "abc"] == [12, 6, 2]
    assert list(stratified_sample(groups, 20, seed=0)) == list(sample)
    assert list(stratified_sample(groups, 20, seed=1)) != list(sample)
    assert list(stratified_sample(groups, None)) == list(range(100)) == list(stratified_sample(groups, 100))
    assert len(stratified_sample(["x"] * 7 + ["y"] * 2, 5)) == 5


def test_summary_leaves_all_zero_cams_out_and_counts_them():
    values = np.array([0.1, 0.2, 0.5, np.nan, 0.6, 0.3])
    summary = summarise(values, labels=np.array([0, 0, 1, 1, 1, 0]), label_names=["benign", "malignant"])
    assert summary["n"] == 5 and summary["n_zero_cam"] == 1
    assert summary["mean"] == pytest.approx(0.34) and summary["median"] == pytest.approx(0.3)
    assert summary["share_above_uniform"] == pytest.approx(2 / 5)
    low, high = summary["mean_ci95"]
    assert 0.1 <= low < 0.34 < high <= 0.6
    assert summary["by_label"]["malignant"] == {"n": 2, "n_zero_cam": 1, "mean": pytest.approx(0.55),
                                                "median": pytest.approx(0.55), "share_above_uniform": 1.0}
    empty = summarise(np.array([np.nan]))
    assert empty["n"] == 0 and empty["mean"] is None and empty["mean_ci95"] is None


def test_frame_shares_keeps_the_worst_and_checks_its_inputs(tiny):
    model, processor = tiny
    rng = np.random.default_rng(2)
    from helpers import lesion_image

    images = [lesion_image(i % 2, rng, size=40) for i in range(10)]
    result = frame_shares(model, processor, images, [i % 2 for i in range(10)], batch_size=3, progress=False,
                          n_resamples=100, worst=4)
    shares = [row["frame_share"] for row in result.per_image]
    assert result.summary["n"] + result.summary["n_zero_cam"] == 10 and result.summary["sample"] is None
    assert result.summary["input_size"] == [TINY_IMAGE_SIZE, TINY_IMAGE_SIZE] and result.summary["frame_px"] == [4, 4]
    worst = sorted((s for s in shares if s is not None), reverse=True)[:4]
    assert [w.share for w in result.worst] == pytest.approx(worst, abs=1e-5)
    assert all(w.image.dtype == np.uint8 and w.image.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
               for w in result.worst)
    sampled = frame_shares(model, processor, images, [i % 2 for i in range(10)], limit=4, progress=False)
    assert len(sampled.per_image) == 4 and sampled.summary["sample"]["limit"] == 4
    with pytest.raises(ValueError, match="true labels"):
        frame_shares(model, processor, images, progress=False)
    with pytest.raises(ValueError, match="must match"):
        frame_shares(model, processor, images, [0, 1], progress=False)


# --------------------------------------------------------------------------- the proxy lesion mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("case", [{}, {"vignette": True}, {"hair": True}, {"centre": (70, 150), "radius": 30},
                                  {"vignette": True, "hair": True},
                                  # a small lesion in a small field of view: most of the image is black surround
                                  {"vignette": True, "field": 0.7, "radius": 14}])
def test_lesion_mask_finds_the_dark_blob_not_the_vignette_or_hair(case):
    image, truth = skin_with_lesion(**case)
    mask = lesion_mask(image)
    assert mask is not None and mask.shape == truth.shape and mask.dtype == bool
    assert iou(mask, truth) > 0.9
    assert iou(lesion_mask(image / 255.0), mask) == 1.0  # float [0, 1] input: the same mask


def test_lesion_mask_is_none_without_a_plausible_lesion():
    assert lesion_mask(np.full((64, 64, 3), 180, np.uint8)) is None  # flat: nothing darker
    noise = np.random.default_rng(0).integers(175, 185, (64, 64, 3)).astype(np.uint8)
    tiny_spot = noise.copy()
    tiny_spot[30:31, 30:31] = 20  # one dark pixel: smoothed and opened away
    assert lesion_mask(tiny_spot) is None
    vignette_only, _ = skin_with_lesion(radius=0, vignette=True)  # the only dark region reaches the corners
    assert lesion_mask(vignette_only) is None
    with pytest.raises(ValueError, match="RGB"):
        lesion_mask(np.zeros((8, 8)))


def test_cam_lesion_share_of_hand_made_maps():
    _, truth = skin_with_lesion(size=64, centre=(32, 32), radius=14)
    assert cam_lesion_share(truth.astype(float), truth) == 1.0
    assert cam_lesion_share(np.ones((64, 64)), truth) == pytest.approx(truth.mean())  # uniform: the lesion's area
    assert cam_lesion_share((~truth).astype(float), truth) == 0.0
    assert np.isnan(cam_lesion_share(np.zeros((64, 64)), truth))
    with pytest.raises(ValueError, match="same shape"):
        cam_lesion_share(np.ones((32, 32)), truth)


def test_mask_at_grid_is_the_lesion_as_a_coarse_cam_would_show_it():
    _, truth = skin_with_lesion(radius=50)
    assert np.allclose(mask_at_grid(truth, truth.shape), truth)  # at full resolution: the mask itself
    coarse = mask_at_grid(truth, (14, 14))
    assert coarse.shape == truth.shape and coarse.min() >= 0
    assert cam_lesion_share(coarse, truth) > 0.8 and cam_frame_share(coarse) < 0.01  # blurred, still on the lesion
    assert cam_lesion_share(mask_at_grid(truth, (2, 2)), truth) < cam_lesion_share(coarse, truth)


def test_worst_images_figure_outlines_the_lesion_mask_where_there_is_one():
    from modeling.plots import frame_share_figure

    image, truth = skin_with_lesion(size=64, centre=(32, 32), radius=14)
    cam = np.random.default_rng(0).random((64, 64))
    figure = frame_share_figure([image, image], [cam, cam], ["a", "b"], 1 / 8, masks=[truth, None])
    outlined = [bool(ax.collections) for ax in figure.axes[:2]]
    assert outlined == [True, False]
    assert not any(ax.collections for ax in frame_share_figure([image], [cam], ["a"], 1 / 8).axes)


def test_cam_grid_reads_the_target_map_size_without_moving_the_model(tiny):
    model, processor = tiny
    inputs = processor(images=[Image.new("RGB", (40, 40), (200, 150, 140))] * 2, return_tensors="pt")["pixel_values"]
    layer, _ = cam_target_layer(model, "fused")
    seen = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output.shape[-2:]))
    model(pixel_values=inputs)
    handle.remove()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert cam_grid(model, inputs) == tuple(seen[0])
    assert model.training  # its mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no batch-norm statistic moved
    model.eval()


def test_lesion_reference_summarises_lift_and_correlation_over_images_with_a_mask():
    frame = np.array([0.1, 0.2, 0.3, 0.4, np.nan, 0.5])
    on_lesion = np.array([0.6, 0.5, 0.4, 0.3, 0.9, np.nan])  # the 6th image had no mask, the 5th a zero CAM
    area = np.array([0.2, 0.2, 0.2, 0.2, 0.2, np.nan])
    mask_frame = np.array([0.0, 0.05, 0.1, 0.2, 0.0, np.nan])
    ref = lesion_reference(frame, on_lesion, area, mask_frame, n_resamples=200)
    assert ref["n"] == 4 and ref["n_left_out"] == 2
    assert ref["cam_on_lesion"]["mean"] == pytest.approx(0.45) and ref["mask_area"] == pytest.approx(0.2)
    assert ref["lift"] == pytest.approx(0.45 / 0.2)
    assert ref["mask_frame_share"] == {"mean": pytest.approx(0.0875), "median": pytest.approx(0.075)}
    assert ref["frame_share_spearman"] == pytest.approx(1.0)  # the CAM's frame share rises with the lesion's
    low, high = ref["cam_on_lesion"]["mean_ci95"]
    assert 0.3 <= low <= 0.45 <= high <= 0.6
    assert lesion_reference(*(np.full(3, np.nan),) * 4) == {"definition": ref["definition"], "n": 0,
                                                           "n_left_out": 3}


def test_frame_shares_reports_the_lesion_reference_per_image_pooled_and_in_the_report(tiny):
    model, processor = tiny
    images = [Image.fromarray(skin_with_lesion(size=TINY_IMAGE_SIZE, centre=(16, 16), radius=7)[0])] * 3
    images.append(Image.new("RGB", (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), (180, 180, 180)))  # no lesion: no mask
    result = frame_shares(model, processor, images, [0, 1, 0, 1], progress=False, n_resamples=50)
    rows = result.per_image
    assert [row["mask_area"] is None for row in rows] == [False, False, False, True]
    assert all(0 < row["mask_area"] < 0.5 and row["mask_frame_share"] == 0.0 for row in rows[:3])
    # A random tiny model's CAM can be all zero for a class: such an image has no share, like its frame share.
    with_cam = [row for row in rows[:3] if row["frame_share"] is not None]
    assert with_cam and all(0 <= row["lesion_share"] <= 1 for row in with_cam)
    assert all(row["lesion_share"] is None for row in rows[:3] if row["frame_share"] is None)
    ref = result.summary["lesion_reference"]
    assert ref["n"] == len(with_cam) and ref["n_left_out"] == 4 - len(with_cam)
    assert ref["mask_frame_share"]["mean"] == 0.0
    assert ref["lift"] == pytest.approx(np.mean([r["lesion_share"] for r in with_cam]) /
                                        np.mean([r["mask_area"] for r in with_cam]), rel=1e-3)
    as_cam = ref["lesion_as_cam"]
    first = processor(images=images[:1], return_tensors="pt")["pixel_values"]
    assert as_cam["grid"] == list(cam_grid(model, first))
    # The three lesion images are the same: what the lesion would score as a CAM at that grid, by hand.
    mask = lesion_mask(_denormalise(processor, first))
    assert as_cam["frame_share"] == pytest.approx(cam_frame_share(mask_at_grid(mask, as_cam["grid"])), abs=1e-6)
    assert as_cam["lift"] == pytest.approx(cam_lesion_share(mask_at_grid(mask, as_cam["grid"]), mask) / mask.mean(),
                                           rel=1e-5)
    text = frame_share_markdown(result.summary)
    assert "### Against the lesion (proxy masks)" in text and f"| **all** | {len(with_cam)} of 4 |" in text
    assert "A CAM that was exactly the lesion mask, at the CAM's own" in text
    result.summary["lesion_reference"] = {"n": 0, "n_left_out": 4}
    assert "Against the lesion" not in frame_share_markdown(result.summary)


# --------------------------------------------------------------------------- CLI, report, card


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    first = make_image_folder(root / "first", {"train": 2, "test": 4}, seed=1)
    second = make_image_folder(root / "second", {"train": 3}, seed=2)  # no test split: all of it
    return first, second


def test_cli_end_to_end_on_generated_images(tiny_model_dir, two_sources, tmp_path, capsys):
    first, second = two_sources
    summary = main([str(tiny_model_dir), "--dataset", str(first), "--output_dir", str(tmp_path / "one"),
                    "--no_progress"])
    saved = json.loads((tmp_path / "one" / JSON_FILE).read_text())
    assert saved["summary"] == summary and summary["images"] == 8
    assert sorted(row["id"] for row in saved["images"]) == sorted(
        f"test/{label}/{i}.jpg" for label in ("benign", "malignant") for i in range(4))
    assert {row["label"] for row in saved["images"]} == {"benign", "malignant"}
    assert all(0 <= row["p"] <= 1 for row in saved["images"])
    figure = Image.open(tmp_path / "one" / FIGURE_FILE)
    assert figure.width >= 800 and figure.height >= 500
    assert "Lesion focus" in capsys.readouterr().out

    pooled = main([str(tiny_model_dir), "--dataset", str(first), str(second), "--limit", "10", "--output_dir",
                   str(tmp_path / "two"), "--no_progress"])
    assert pooled["images"] == 14 and pooled["sample"]["stratified_by"] == "source and label"
    assert set(pooled["sources"]) == {"first", "second"}
    assert sum(part["n"] + part["n_zero_cam"] for part in pooled["sources"].values()) == 10
    ids = [row["id"] for row in json.loads((tmp_path / "two" / JSON_FILE).read_text())["images"]]
    assert len(ids) == 10 and any(i.startswith("second/train/") for i in ids) and all(
        i.startswith(("first/test/", "second/train/")) for i in ids)

    with pytest.raises(SystemExit) as error:
        main([str(tiny_model_dir), "--dataset", str(first), "--split", "validation", "--validation_fraction", "0",
              "--output_dir", str(tmp_path / "three")])
    assert error.value.code == 2


def test_cli_rejects_data_whose_labels_the_model_does_not_know(tiny_model_dir, tmp_path, capsys):
    data = make_image_folder(tmp_path / "abc", {"test": 2}, labels=("a", "b"))
    with pytest.raises(SystemExit) as error:
        main([str(tiny_model_dir), "--dataset", str(data), "--output_dir", str(tmp_path / "out")])
    assert error.value.code == 2 and "do not match the model's" in capsys.readouterr().err


def test_training_report_metrics_and_card_include_the_frame_share(image_folder, tmp_path):
    config = tmp_path / "config"
    tiny_config().save_pretrained(config)
    out = tmp_path / "run"
    result = training.main(*parse_args(["--dataset", str(image_folder), "--config_name", str(config),
                                        "--output_dir", str(out), "--num_train_epochs", "1",
                                        "--cam_frame_share_limit", "5", *TINY_TRAIN_ARGS]))["channel"]
    summary = result["cam_frame_share"]
    assert summary["images"] == 12 and summary["n"] + summary["n_zero_cam"] == 5
    assert json.loads((out / "metrics.json").read_text())["cam_frame_share"] == summary
    assert json.loads((out / "report" / JSON_FILE).read_text())["summary"] == summary
    report = (out / "report" / "report.md").read_text()
    assert "## Lesion focus: CAM frame share" in report and summary["n"] > 0
    assert (out / "report" / FIGURE_FILE).is_file() and f"({FIGURE_FILE})" in report
    assert "### Lesion focus (Grad-CAM frame share)" in (out / "README.md").read_text()

    evaluated = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(out), "--dataset",
                                           str(image_folder), "--output_dir", str(tmp_path / "eval"),
                                           "--cam_frame_share_limit", "0", *TINY_TRAIN_ARGS]))
    assert evaluated["cam_frame_share"]["images"] == 12 and evaluated["cam_frame_share"]["sample"] is None
    assert (tmp_path / "eval" / "report" / JSON_FILE).is_file()

    skipped = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(out), "--dataset",
                                         str(image_folder), "--output_dir", str(tmp_path / "off"),
                                         "--cam_frame_share", "false", *TINY_TRAIN_ARGS]))
    assert skipped["cam_frame_share"] is None and not (tmp_path / "off" / "report" / JSON_FILE).exists()
    assert "Lesion focus" not in (tmp_path / "off" / "report" / "report.md").read_text()


def test_model_card_shows_the_frame_share_only_when_given():
    report = {"n": 10, "class_counts": {"benign": 6, "malignant": 4}, "threshold": 0.5, "threshold_source": "default",
              "metrics": {"accuracy": 0.8, "roc_auc": 0.9}, "metrics_at_0.5": {"accuracy": 0.8, "roc_auc": 0.9},
              "ci95": {}, "ece": 0.05, "ece_uncalibrated": None}
    share = {"target": "fused", "input_size": [224, 224], "uniform_share": 0.4375, "mean": 0.371, "mean_ci95":
             [0.35, 0.39], "median": 0.42, "share_above_uniform": 0.31, "n": 100, "n_zero_cam": 2, "images": 660,
             "sample": {"limit": 100}}
    common = {"model_name": "m", "summary": report, "settings": {"fusion_mode": "channel"}, "command": "train_hf.py",
              "dataset": "isic", "label_names": ["benign", "malignant"], "decision_threshold": 0.5}
    text = build_model_card(**common, frame_share=share).text
    assert "### Lesion focus (Grad-CAM frame share)" in text
    assert "mean **0.371** [0.350, 0.390]" in text and "31% of images above uniform" in text
    assert "n = 100 test images, a sample of 660; 2 all-zero CAM(s) left out" in text
    assert "Lesion focus" not in build_model_card(**common).text
    assert "Lesion focus" not in build_model_card(**common, frame_share={**share, "mean": None}).text
    assert "proxy lesion masks" not in text
    reference = {"n": 90, "n_left_out": 10, "cam_on_lesion": {"mean": 0.25}, "mask_area": 0.2, "lift": 1.25,
                 "lesion_as_cam": {"grid": [14, 14], "frame_share": 0.066, "lift": 4.4}}
    with_masks = build_model_card(**common, frame_share={**share, "lesion_reference": reference}).text
    assert ("Against proxy lesion masks (Otsu; 90 images): the CAMs put 0.250 of their mass on the lesion, which "
            "covers 0.200 of the area (lift 1.25; 1 = no preference for the lesion); a CAM that was exactly the "
            "lesion, at the CAM's resolution, would score a frame share of 0.066 and a lift of 4.40.") in with_masks
