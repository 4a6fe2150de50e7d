"""The saved image processor (Shades-of-Gray colour constancy, crop or squash to the square input) and the training
transforms built from it: save/load round trip, remote code, the same pixels as the eval transform, and the
dermoscopy augmentation."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_IMAGE_SIZE, lesion_image, offline_env, tiny_config
from PIL import Image
from transformers import AutoImageProcessor, ConvNextImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling import AsffResNetForImageClassification, AsffResNetImageProcessor
from modeling.data import (
    DermoscopeFrame,
    HairLines,
    ShadesOfGray,
    build_transforms,
    transforms_for_processor,
)
from modeling.image_processing import build_image_processor, processor_settings, with_preprocessing
from modeling.image_processing_asff_resnet import fit_to_square, shades_of_gray

SHAPES = [(48, 48), (45, 61), (61, 45), (37, 100)]  # odd margins: the centre crop's offsets must agree


def colour_cast(image: Image.Image, gains=(1.0, 0.75, 0.5)) -> Image.Image:
    """The image under a warm (reddish) illuminant."""
    array = np.asarray(image, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [colour_cast(lesion_image(i % 2, rng, size=64)).resize((w, h)) for i, (h, w) in enumerate(SHAPES)]


def pixels(processor, image) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("color_constancy", [False, True])
@pytest.mark.parametrize("resize_mode", ["crop", "squash"])
def test_round_trip_and_eval_transform_give_the_processor_pixels(tmp_path, color_constancy, resize_mode):
    processor = build_image_processor(TINY_IMAGE_SIZE, color_constancy=color_constancy, resize_mode=resize_mode)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is AsffResNetImageProcessor and loaded is not processor
    assert (loaded.do_color_constancy, loaded.color_constancy_power, loaded.resize_mode) == (
        color_constancy, 6.0, resize_mode)
    evaluation = transforms_for_processor(loaded, train=False)
    for image in images():
        expected = pixels(processor, image)
        assert expected.shape == (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
        assert torch.equal(pixels(loaded, image), expected)
        torch.testing.assert_close(evaluation(image).as_subclass(torch.Tensor), expected, atol=1e-5, rtol=0)
    # No augmentation (strength 0) is the eval transform.
    torch.testing.assert_close(transforms_for_processor(loaded, train=True, strength=0)(image), expected, atol=1e-5,
                               rtol=0)


def test_default_processor_gives_the_older_checkpoints_pixels():
    """Colour constancy off + crop: what the ConvNextImageProcessor (crop_pct 1) of existing checkpoints gives."""
    old = ConvNextImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_pct=1.0,
                                 image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD))
    new = build_image_processor(TINY_IMAGE_SIZE)
    assert not new.do_color_constancy and new.resize_mode == "crop"
    old_eval = transforms_for_processor(old, train=False)
    for image in images():
        assert torch.equal(pixels(new, image), pixels(old, image))
        torch.testing.assert_close(old_eval(image).as_subclass(torch.Tensor), pixels(old, image), atol=1e-5, rtol=0)
    assert processor_settings(old)["color_constancy_power"] is None
    assert with_preprocessing(old) is old  # nothing asked: the checkpoint's processor as it is
    switched = with_preprocessing(old, color_constancy=True, resize_mode="squash")
    assert switched.do_color_constancy and switched.resize_mode == "squash" and switched.resample == old.resample


def test_shades_of_gray_equalises_a_colour_cast():
    image = colour_cast(lesion_image(1, np.random.default_rng(3), size=96), gains=(1.0, 0.7, 0.45))
    before = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    means = before.float().mean((1, 2))
    assert means.max() / means.min() > 1.8  # a strong cast
    after = shades_of_gray(before, 6)
    assert after.dtype == torch.uint8 and after.shape == before.shape
    corrected = after.float().mean((1, 2))
    assert corrected.max() / corrected.min() < 1.15  # channel means near-equal
    # The illuminant estimate is the p-norm: after correction the three channel p-norms are equal.
    norms = after.double().flatten(1).pow(6).mean(1).pow(1 / 6)
    assert norms.max() / norms.min() < 1.03
    # Grey-world (p = 1) equalises the means exactly (up to rounding); a grey image is left as it is.
    grey_world = shades_of_gray(before, 1).float().mean((1, 2))
    assert grey_world.max() - grey_world.min() < 1.5
    grey = torch.full((3, 8, 8), 120, dtype=torch.uint8)
    assert torch.equal(shades_of_gray(grey), grey)
    assert torch.equal(shades_of_gray(torch.zeros(3, 4, 4, dtype=torch.uint8)), torch.zeros(3, 4, 4, dtype=torch.uint8))
    # The processor applies it before resizing: the processor's output is the corrected image, resized.
    processor = build_image_processor(32, color_constancy=True)
    expected = fit_to_square(after, 32, "crop").float() / 255
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    torch.testing.assert_close(pixels(processor, image) * std + mean, expected, atol=1e-5, rtol=0)
    with pytest.raises(TypeError):
        shades_of_gray(before.float())


def test_squash_keeps_the_whole_image_and_crop_cuts_the_sides():
    wide = torch.zeros(3, 20, 60, dtype=torch.uint8)
    wide[:, :, :5] = 255  # a white stripe at the left edge
    assert fit_to_square(wide, 20, "squash")[:, :, 0].float().mean() > 200  # still there
    assert fit_to_square(wide, 20, "crop")[:, :, 0].float().mean() < 1  # cut off
    with pytest.raises(ValueError, match="resize_mode"):
        build_image_processor(32, resize_mode="pad")


def test_train_transform_applies_colour_constancy_before_augmentation():
    """The same Shades-of-Gray step first in training: with augmentation off, train output = eval output; and the
    colour-corrected training images have near-equal channel means."""
    image = colour_cast(lesion_image(0, np.random.default_rng(1), size=64), gains=(1.0, 0.7, 0.45))
    processor = build_image_processor(32, color_constancy=True)
    train = transforms_for_processor(processor, train=True, augmentation="dermoscopy")
    assert isinstance(train.transforms[1], ShadesOfGray)  # right after the conversion to a tensor
    unnormalised = build_transforms(32, [0, 0, 0], [1, 1, 1], train=True, color_constancy_power=6.0)
    torch.manual_seed(0)
    means = torch.stack([unnormalised(image).mean((1, 2)) for _ in range(4)]).mean(0)
    assert means.max() / means.min() < 1.2


@pytest.mark.slow  # a fresh Python process
def test_saved_model_directory_ships_the_processor_code_for_remote_loading(tmp_path):
    """A model directory (model + processor + pipeline) loads its processor with trust_remote_code in a process that
    cannot import this repository, and pipeline() applies the same colour step."""
    from modeling.pipeline_asff_resnet import add_pipeline_to

    torch.manual_seed(0)
    AsffResNetForImageClassification(tiny_config()).save_pretrained(tmp_path / "model")
    build_image_processor(TINY_IMAGE_SIZE, color_constancy=True, resize_mode="squash").save_pretrained(
        tmp_path / "model")
    add_pipeline_to(tmp_path / "model")
    assert (tmp_path / "model" / "image_processing_asff_resnet.py").is_file()
    image = images()[1]
    image.save(tmp_path / "lesion.png")
    expected = pixels(AutoImageProcessor.from_pretrained(tmp_path / "model"), image)
    torch.save(expected, tmp_path / "expected.pt")
    code = f"""
import torch
from transformers import AutoImageProcessor, pipeline
from PIL import Image
model_dir, image = {str(tmp_path / "model")!r}, Image.open({str(tmp_path / "lesion.png")!r})
processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
assert processor.do_color_constancy and processor.resize_mode == "squash"
got = processor(images=image, return_tensors="pt")["pixel_values"][0]
assert torch.equal(got, torch.load({str(tmp_path / "expected.pt")!r})), (got - torch.load(
    {str(tmp_path / "expected.pt")!r})).abs().max()
pipe = pipeline("image-classification", model=model_dir, trust_remote_code=True)
assert type(pipe.image_processor).__name__ == "AsffResNetImageProcessor" and pipe.image_processor.do_color_constancy
print(pipe(image)[0]["label"])
"""
    env = offline_env(PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    labels = AsffResNetForImageClassification(tiny_config()).config.id2label.values()
    assert result.stdout.strip().splitlines()[-1] in labels
    assert str(ROOT) not in result.stderr


# Dermoscopy augmentation


def test_dermoscopy_augmentation_shapes_dtypes_and_seeded_determinism():
    image = lesion_image(1, np.random.default_rng(0), size=80).resize((96, 70))
    for augmentation in ("standard", "dermoscopy"):
        for resize_mode in ("crop", "squash"):
            transform = build_transforms(32, [0.5] * 3, [0.5] * 3, train=True, strength=1.5, resize_mode=resize_mode,
                                         augmentation=augmentation, color_constancy_power=6.0)
            torch.manual_seed(7)
            first = [transform(image) for _ in range(4)]
            torch.manual_seed(7)
            second = [transform(image) for _ in range(4)]
            for a, b in zip(first, second, strict=True):
                assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and torch.isfinite(a).all()
                assert torch.equal(a, b)
            assert not torch.equal(first[0], first[1])
    with pytest.raises(ValueError, match="augmentation"):
        build_transforms(32, [0.5] * 3, [0.5] * 3, train=True, augmentation="heavy")


def test_dermoscope_frame_darkens_the_outside_of_a_circle():
    image = torch.full((3, 64, 64), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    framed = DermoscopeFrame(p=1.0, radius=(0.4, 0.45), shift=0.0, max_level=30)(image)
    assert framed.dtype == torch.uint8 and framed.shape == image.shape
    corners = framed[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners <= 30).all()  # dark outside
    assert (framed[:, 24:40, 24:40] == 200).all()  # the centre untouched
    assert torch.equal(DermoscopeFrame(p=0.0)(image), image)
    # A wide circle leaves only the corners dark: a vignette.
    torch.manual_seed(0)
    vignette = DermoscopeFrame(p=1.0, radius=(0.62, 0.62), shift=0.0)(image)
    assert (vignette[:, 0, 0] < 60).all() and (vignette[:, 0, 32] == 200).all()


def test_hair_lines_are_thin_dark_curves():
    image = torch.full((3, 96, 96), 210, dtype=torch.uint8)
    torch.manual_seed(1)
    haired = HairLines(p=1.0, max_hairs=4, max_level=60)(image)
    changed = (haired != image).any(0)
    assert haired.dtype == torch.uint8 and haired.shape == image.shape
    assert 0 < changed.float().mean() < 0.15  # thin lines, not a blotch
    assert (haired[:, changed] <= 60).all()  # dark
    # Thin: around a hair pixel, most of its 5 x 5 neighbourhood is still skin.
    neighbours = torch.nn.functional.conv2d(changed[None, None].float(), torch.ones(1, 1, 5, 5), padding=2)[0, 0]
    assert (neighbours[changed] / 25).mean() < 0.5
    assert torch.equal(HairLines(p=0.0)(image), image)
