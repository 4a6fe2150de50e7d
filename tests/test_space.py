"""The Hugging Face Space: front matter and pins match what is installed; the assembled folder starts on its own and
answers /predict through gradio_client."""

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio
import numpy as np
import pytest
from app_fixtures import free_port, served_client
from gradio_client import handle_file
from helpers import lesion_image
from huggingface_hub import SpaceCard

SPACE = Path(__file__).resolve().parents[1] / "space"


def load_upload_script():
    spec = importlib.util.spec_from_file_location("space_upload", SPACE / "upload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def space_env(**extra) -> dict[str, str]:
    """The environment minus anything that would let the Space import the repo's code instead of its own copy."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODEL_ID")}
    return {**env, "GRADIO_ANALYTICS_ENABLED": "False", **extra}


def test_front_matter():
    data = SpaceCard.load(SPACE / "README.md").data
    assert data.sdk == "gradio" and data.sdk_version == gradio.__version__
    assert data.app_file == "app.py" and data.python_version == "3.11" and data.license
    assert data.title and len(data.short_description) <= 60
    assert "NOT a diagnostic device" in (SPACE / "README.md").read_text()


def test_requirements_pinned_to_installed_versions():
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (SPACE / "requirements.txt").read_text(), flags=re.M)
    assert {"torch", "transformers", "grad-cam", "huggingface_hub"} <= {name for name, _ in pins}
    for name, version in pins:
        assert importlib.metadata.version(name) == version, name


def test_dry_run_assembles(tmp_path, capsys):
    upload = load_upload_script()
    assert upload.main(["--dry-run", "--target", str(tmp_path / "space")]) == 0
    target = tmp_path / "space"
    for name in ("README.md", "app.py", "requirements.txt", "demo.py", "modeling/__init__.py", "modeling/explain.py"):
        assert (target / name).is_file(), name
    assert not list(target.rglob("__pycache__"))
    assert "Assembled" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        upload.main([])  # uploading needs --repo-id


def test_space_without_model_id_fails_fast(tmp_path):
    target = load_upload_script().assemble(tmp_path / "space")
    result = subprocess.run([sys.executable, "app.py"], cwd=target, env=space_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "MODEL_ID" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_assembled_space_serves_predict(tmp_path, tiny_model_dir):
    """The Space serves the model's ONNX graph when the model has one (here a float32 graph: onnxruntime predicts)."""
    from modeling.export import main as export_cli

    model_dir = tmp_path / "tiny-with-onnx"
    shutil.copytree(tiny_model_dir, model_dir)
    assert export_cli(["--onnx", str(model_dir), "--quantization", "none", "--verify-images", "0"]) == 0
    target = load_upload_script().assemble(tmp_path / "space")
    image = tmp_path / "lesion.jpg"
    lesion_image(1, np.random.default_rng(0)).save(image)
    port = free_port()
    env = space_env(MODEL_ID=str(model_dir), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    with served_client([sys.executable, "app.py"], target, env, port, tmp_path / "space.log") as client:
        probs, decision, result = client.predict(handle_file(image), 0.5, False, api_name="/predict")
        assert probs["label"] in ("benign", "malignant") and "Prediction" in decision
        assert result["backend"] == "onnx" and result["model"] == "tiny-with-onnx"


def test_a_hub_model_is_served_from_its_downloaded_repository(tmp_path, monkeypatch):
    """A Hub id is downloaded whole (ONNX graphs included), so the Space serves it like a local directory."""
    import huggingface_hub

    from modeling.inference import local_model_dir

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: calls.append(repo_id) or str(tmp_path))
    assert local_model_dir("someone/asff-lite0-isic") == tmp_path and calls == ["someone/asff-lite0-isic"]
    assert local_model_dir(tmp_path) == tmp_path and len(calls) == 1  # a local directory as it is


def test_space_with_an_unreachable_model_fails_with_a_clear_message(tmp_path):
    target = load_upload_script().assemble(tmp_path / "space")
    env = space_env(MODEL_ID="nobody-here/no-such-model", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "app.py"], cwd=target, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "Could not download the model nobody-here/no-such-model" in result.stderr
    assert "Traceback" not in result.stderr
