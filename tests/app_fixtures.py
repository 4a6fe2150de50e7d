"""Helpers for the demo tests: bad and unusual image files, tiny model directories (calibrated, with an OOD score),
free ports, the app served in this process or as a command."""

import io
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from helpers import TINY_IMAGE_SIZE, lesion_image, make_image_folder, tiny_config
from PIL import Image

from modeling import AsffResNetForImageClassification
from modeling.image_processing import build_image_processor

# Each bad input and a phrase the user-facing message must contain.
BAD_INPUTS = {
    "not_an_image.jpg": "not an image",
    "truncated.jpg": "truncated",
    "empty.jpg": "empty",
    "one_pixel.png": "too small",
    "bomb.png": "too large",  # beyond 2x PIL's limit: PIL itself raises DecompressionBombError
    "bomb_warning.png": "too large",  # between 1x and 2x: PIL only warns, load_image refuses
}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (1-bit greyscale) but holds a single compressed row: opening it reads only
    the header, so it stands for a decompression bomb at no cost."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * (1 + (width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def write_bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG", quality=95)
    jpeg = buffer.getvalue()
    contents = {
        "not_an_image.jpg": b"This is a text file, not a JPEG.\n" * 20,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "bomb.png": png_header_only(20_000, 20_000),
        "bomb_warning.png": png_header_only(10_000, 9_000),
    }
    paths = {}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    Image.new("RGB", (1, 1), (200, 100, 100)).save(folder / "one_pixel.png")
    paths["one_pixel.png"] = folder / "one_pixel.png"
    return paths


def exif_rotated_image(path: Path) -> Path:
    """A 64x32 photo (red left half, blue right half) tagged "rotate 90 degrees clockwise" (orientation 6): shown
    upright it is 32x64 with red on top."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (220, 30, 30)
    pixels[:, 32:] = (30, 30, 220)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def write_unusual_inputs(folder: Path) -> dict[str, Path]:
    """Readable images in modes other than 8-bit RGB, each with the phrase its conversion note contains."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    base = lesion_image(1, rng, 48)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.new("L", base.size, 0))  # fully transparent: must come out white
    images = {
        "rgba.png": rgba,
        "grey.png": base.convert("L"),
        "grey_alpha.png": base.convert("LA"),
        "sixteen_bit.png": Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257),
        "cmyk.jpg": base.convert("CMYK"),
        "palette.gif": base.convert("P"),
    }
    paths = {}
    for name, image in images.items():
        image.save(folder / name)
        paths[name] = folder / name
    paths["exif_rotated.jpg"] = exif_rotated_image(folder / "exif_rotated.jpg")
    return paths


def save_tiny_model(folder: Path, fusion_mode: str = "channel", seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    AsffResNetForImageClassification(tiny_config(fusion_mode)).save_pretrained(folder)
    build_image_processor(TINY_IMAGE_SIZE).save_pretrained(folder)
    return folder


def calibrated_tiny_model(tmp_path_factory) -> Path:
    """A tiny channel model with its temperature, decision threshold and OOD detector fitted on generated images
    (`modeling.calibration.calibrate_saved_model`); made once per test session, under pytest's base temporary folder."""
    from modeling.calibration import calibrate_saved_model

    root = tmp_path_factory.getbasetemp() / "calibrated_tiny_model"
    model_dir, done = root / "model", root / "done"
    if not done.is_file():
        folder = make_image_folder(root / "images", {"train": 16, "test": 6})
        calibrate_saved_model(save_tiny_model(model_dir), str(folder))
        done.touch()
    return model_dir


def exported_tiny_model(tmp_path_factory, name: str) -> Path:
    """A copy (under `name`, for one test module to change as it likes) of the calibrated tiny channel model with a
    card and its float32 and int8 ONNX graphs, exported through the CLI on generated images once per test session."""
    from modeling.export import main as export_cli

    root = tmp_path_factory.getbasetemp() / "exported_tiny_model"
    model_dir, done = root / "tiny-onnx", root / "done"
    if not done.is_file():
        shutil.copytree(calibrated_tiny_model(tmp_path_factory), model_dir, dirs_exist_ok=True)
        (model_dir / "README.md").write_text("# tiny-onnx\n\nA card.\n")
        assert export_cli(["--onnx", str(model_dir), "--calibration-images", "16", "--verify-images", "0"]) == 0
        done.touch()
    copy = tmp_path_factory.mktemp(name) / "tiny-onnx"
    shutil.copytree(model_dir, copy)
    return copy


def ood_score(model, processor, image) -> float:
    from modeling.inference import predict

    score = predict(model, processor, image).ood_score
    assert score is not None, "the model has no OOD score"
    return score


def place_ood_threshold(model, processor, inside, outside: Path) -> Path:
    """Writes to `outside` the synthetic non-lesion image (`modeling.ood_probes`) that the loaded model scores highest,
    and sets the model's OOD threshold halfway between that score and the score of `inside` (a PIL image or path), so
    that `outside` is flagged and `inside` is not, whatever an untrained tiny model makes of them. Returns `outside`."""
    from modeling.ood_probes import SYNTHETIC_FAMILIES, synthetic_image

    rng = np.random.default_rng(0)
    candidates = [synthetic_image(family, rng, 64) for family in SYNTHETIC_FAMILIES for _ in range(2)]
    scores = [ood_score(model, processor, image) for image in candidates]
    low, best = ood_score(model, processor, inside), int(np.argmax(scores))
    assert scores[best] > low, f"no synthetic image scores above the 'inside' image's {low:.3f}"
    candidates[best].save(outside)
    model.config.ood_threshold = (low + scores[best]) / 2
    return outside


@contextmanager
def served_app(model, processor, info, examples=None) -> Iterator[tuple[str, object]]:
    """`app.build_demo` for a loaded classifier (and example images), launched in this process on a free port;
    yields its URL and the demo (whose event functions a test may wrap, e.g. to count requests)."""
    import app

    demo = app.build_demo(model, processor, info, examples)
    port = free_port()
    allowed = sorted({str(Path(p).resolve().parent) for p in examples or []}) or None
    app.launch_demo(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True, allowed_paths=allowed)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 120, process=None) -> None:
    """Polls `url` until it answers; fails early when `process` (a Popen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def served_client(command: list[str], cwd: Path, env: dict, port: int, log_path: Path,
                  timeout: float = 240) -> Iterator:
    """Starts `command` (a Gradio app listening on `port`), yields a gradio_client Client for it, prints the end of
    the app's log when the body fails, and stops the app."""
    from gradio_client import Client

    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", timeout=timeout, process=process)
            yield Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(log_path.parent / "downloads"),
                         analytics_enabled=False)
        except Exception:
            log.flush()
            print(log_path.read_text()[-3000:])
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)
