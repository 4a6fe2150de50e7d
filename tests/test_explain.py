"""modeling.explain and modeling.plots: Grad-CAM targets and methods on each fusion mode (and the class it explains),
fusion figures and messages, the CAM overlay and its colour scale."""

import threading

import numpy as np
import pytest
import torch
from helpers import TINY_IMAGE_SIZE
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from modeling import presentation
from modeling.explain import (
    CAM_METHODS,
    CAM_TARGETS,
    ClassMarginTarget,
    cam_target_layer,
    explain,
)
from modeling.image_processing import build_image_processor
from modeling.image_utils import ImageLoadError
from modeling.inference import LogitsOnly, load_classifier, pixel_values, predict
from modeling.plots import MIN_OVERLAY_SIDE, cam_overlay, fusion_figure, fusion_message, with_colour_scale

# --------------------------------------------------------------------------- Grad-CAM and fusion


@pytest.mark.parametrize("mode", ["channel", "spatial", "none"])
@pytest.mark.parametrize("target", list(CAM_TARGETS))
def test_explain_targets(loaded, image, mode, target):
    model, processor, _ = loaded[mode]
    result = explain(model, processor, image, target=target, threshold=0.0)
    assert result.cam_overlay.dtype == np.uint8 and result.cam_overlay.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3)
    assert result.cam.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) and 0 <= result.cam.min() <= result.cam.max() <= 1
    assert result.label == "malignant"  # threshold 0: always the positive class
    assert result.probabilities == pytest.approx(predict(model, processor, image).probabilities, abs=1e-5)
    assert result.cam_label == result.label
    assert result.timing_ms["total"] > 0
    if mode == "channel":
        assert result.fusion_weights.shape == (model.config.fusion_channels,)
        assert isinstance(result.fusion_figure, Figure) and len(result.fusion_figure.axes) == 1
    elif mode == "spatial":
        assert result.fusion_weights.shape[0] == 2 and isinstance(result.fusion_figure, Figure)
    else:
        assert result.fusion_weights is None and result.fusion_figure is None and "no fusion" in result.fusion_message


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_explain_methods(loaded, image, method):
    model, processor, _ = loaded["spatial"]
    result = explain(model, processor, image, method=method, threshold=1.0)
    # threshold 1: positive only at p = 1, which this untrained model's softmax does not reach
    assert result.label == "benign" and result.method == method
    assert result.cam_overlay.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3) and np.isfinite(result.cam).all()


@pytest.mark.parametrize("target", ["fused", "stage3"])
def test_cam_matches_plain_pytorch_grad_cam(loaded, image, target):
    """explain cuts the graph at the target layer (frozen weights): the CAM must equal pytorch-grad-cam's own, run
    on a copy with trainable weights and a full backward pass, for the predicted class."""
    model, processor, _ = loaded["channel"]
    result = explain(model, processor, image, target=target)
    trainable = type(model)(model.config).eval()
    trainable.load_state_dict(model.state_dict())
    inputs = pixel_values(processor, image)
    with GradCAM(LogitsOnly(trainable), [cam_target_layer(trainable, target)[0]]) as cam:
        label = model.config.label2id[result.label]
        expected = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(label)])[0]
    np.testing.assert_allclose(result.cam, expected, atol=1e-4)


def test_explain_tta_and_errors(loaded, image):
    model, processor, _ = loaded["channel"]
    result = explain(model, processor, image, tta=True, method="eigencam")
    assert result.probabilities == pytest.approx(predict(model, processor, image, tta=True).probabilities, abs=1e-5)
    assert "tta" in result.timing_ms and result.prediction.spread is not None
    with pytest.raises(ValueError, match="unknown CAM target"):
        explain(model, processor, image, target="stage2")
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain(model, processor, image, method="scorecam")
    with pytest.raises(ImageLoadError):
        explain(model, processor, b"")


def test_explain_is_thread_safe(loaded, image):
    model, processor, _ = loaded["spatial"]
    expected = explain(model, processor, image).cam
    results = [None] * 6

    def work(i):
        results[i] = explain(model, processor, image).cam

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cam in results:
        np.testing.assert_allclose(cam, expected, atol=1e-6)


def test_cam_overlay_sizes():
    rng = np.random.default_rng(0)
    small = cam_overlay(rng.random((32, 32, 3)), rng.random((32, 32)))
    assert small.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3) and small.dtype == np.uint8
    assert cam_overlay(rng.random((256, 300, 3)), rng.random((256, 300))).shape == (256, 300, 3)  # not resized


def test_fusion_figures():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(64))
    channel = fusion_figure(w)
    assert isinstance(channel, Figure) and len(channel.axes) == 1  # one plot, its legend outside the axes
    alpha = torch.rand(1, 4, 4)
    spatial = fusion_figure(torch.cat([alpha, 1 - alpha]), image=rng.random((32, 32, 3)))
    assert isinstance(spatial, Figure) and len(spatial.axes) == 2  # image + colour bar
    assert isinstance(fusion_figure(torch.cat([alpha, 1 - alpha])), Figure)  # no image
    assert fusion_figure(None) is None
    with pytest.raises(ValueError, match="fusion weights"):
        fusion_figure(np.ones((3, 4, 4)))


def test_non_asff_model_predicts_and_explains(tmp_path, image):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8, layer_type="basic",
                          num_labels=2, id2label={0: "benign", 1: "malignant"}, label2id={"benign": 0, "malignant": 1})
    ResNetForImageClassification(config).save_pretrained(tmp_path)
    build_image_processor(TINY_IMAGE_SIZE).save_pretrained(tmp_path)
    model, processor, info = load_classifier(tmp_path)
    assert info.fusion_mode is None
    assert sum(predict(model, processor, image).probabilities.values()) == pytest.approx(1, abs=1e-5)
    result = explain(model, processor, image, target="stage3")  # falls back to the last convolution
    assert result.cam_overlay.shape == (MIN_OVERLAY_SIDE, MIN_OVERLAY_SIDE, 3)
    assert result.fusion_figure is None and "not an ASFF-ResNet" in result.fusion_message


def test_cam_explains_the_requested_class(loaded, image):
    """After a threshold change flips the decision, the app asks for the CAM of the new class: it must differ from
    the other class's and name the class it explains."""
    model, processor, _ = loaded["channel"]
    benign = explain(model, processor, image, threshold=1.0)
    forced = explain(model, processor, image, threshold=1.0, cam_class=1)
    assert benign.cam_label == "benign" and forced.cam_label == "malignant" and forced.label == "benign"
    assert not np.allclose(benign.cam, forced.cam)
    tta = explain(model, processor, image, threshold=1.0, tta=True, cam_class=1)
    assert tta.cam_label == "malignant" and tta.label == "benign"


def test_the_margin_target_is_one_class_against_the_strongest_other():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 4.0]])
    torch.testing.assert_close(ClassMarginTarget(0)(logits), torch.tensor([1.5, -4.0]))
    torch.testing.assert_close(ClassMarginTarget(2)(logits[1]), torch.tensor(1.0))  # one image, as grad-cam calls it


@pytest.mark.parametrize("target", ["fused", "stage3"])
def test_a_contrast_cam_is_grad_cam_of_the_margin(loaded, image, target):
    """explain(contrast=True): pytorch-grad-cam's own GradCAM (trainable copy, full backward) of the decided class's
    logit minus the other's, named with the class it is against; the decided class or one asked for."""
    model, processor, _ = loaded["channel"]
    result = explain(model, processor, image, target=target, contrast=True)
    decided = model.config.label2id[result.label]
    other = model.config.id2label[1 - decided]
    assert result.cam_label == result.label and result.cam_against == other
    trainable = type(model)(model.config).eval()
    trainable.load_state_dict(model.state_dict())
    with GradCAM(LogitsOnly(trainable), [cam_target_layer(trainable, target)[0]]) as cam:
        expected = cam(input_tensor=pixel_values(processor, image),
                       targets=[lambda out: out[..., decided] - out[..., 1 - decided]])[0]
    np.testing.assert_allclose(result.cam, expected, atol=1e-4)
    assert explain(model, processor, image, target=target).cam_against is None  # the plain logit names no other
    forced = explain(model, processor, image, target=target, cam_class=1 - decided, contrast=True)
    assert forced.cam_label == other and forced.cam_against == result.label
    assert explain(model, processor, image, method="eigencam", contrast=True).cam_against is None  # ignores classes


def test_fusion_messages():
    w = np.full(8, 0.01)
    w[3] = 0.93
    message = fusion_message("channel", w)
    assert "Channel 3" in message and "0.930" in message and "1 channel(s) are mostly stage3" in message
    alpha = np.stack([np.full((2, 2), 0.25), np.full((2, 2), 0.75)])
    assert "averages 0.25" in fusion_message("spatial", alpha)
    assert "no fusion" in fusion_message("none", None) and "not an ASFF" in fusion_message(None, None)


def test_colour_scale_under_the_overlay():
    overlay = np.zeros((224, 224, 3), np.uint8)
    scaled = with_colour_scale(overlay)
    assert scaled.shape[1] == 224 and scaled.shape[0] > 224 and scaled.dtype == np.uint8
    bar = scaled[225].astype(int)  # jet: blue at the low end, red at the high end
    assert bar[2, 2] > bar[2, 0] and bar[-3, 0] > bar[-3, 2]


def test_an_empty_grad_cam_is_said_so(loaded, image):
    """A map with no positive evidence shows no heat: the caption says so rather than leaving a blank overlay."""
    import dataclasses

    model, processor, _ = loaded["channel"]
    result = explain(model, processor, image, threshold=0.0)
    empty = dataclasses.replace(result, cam=np.zeros_like(result.cam))
    assert empty.cam_is_empty and result.cam_is_empty == (not np.any(result.cam > 0))
    said = presentation.cam_caption(empty.cam_label, empty.target, empty.method, empty.cam_is_empty)
    assert "This map is empty" in said and f"score of **{empty.cam_label}**" in said
    assert "This map is empty" not in presentation.cam_caption(result.cam_label, result.target, result.method, False)
    assert "This map is empty" not in presentation.cam_caption(result.cam_label, result.target, "eigencam", True)


def test_cam_target_names_give_the_grid_of_the_model_on_screen(loaded, image):
    """The heatmap names the map it explains with the grid it has for this model's input (the app's caption):
    stage3 of a 224 px ResNet-50 is 14x14, of a 288 px model 18x18; the tiny test model's follows its input."""
    from modeling import AsffResNetConfig, AsffResNetForImageClassification
    from modeling.explain import cam_target_name

    resnet = AsffResNetForImageClassification(AsffResNetConfig())
    assert cam_target_name(resnet, "stage3", 224) == "stage3 (14x14)"
    assert cam_target_name(resnet, "stage4", 288) == "stage4 (9x9)"
    assert cam_target_name(resnet, "fused", 288) == "fused features (after ASFF), 18x18"
    model, processor, _ = loaded["channel"]
    result = explain(model, processor, image, target="stage4")
    low, high = model.asff_resnet.stage_reductions
    side = -(-TINY_IMAGE_SIZE // high)
    assert result.target_name == f"stage4 ({side}x{side})"
    assert f"stage4 ({side}x{side})" in presentation.cam_caption(result.cam_label, result.target, result.method,
                                                                  result.cam_is_empty, result.target_name)
