"""Hugging Face Space entry point: the project's demo (its `app.py`, shipped beside this file as `demo.py`) serving
the model named by the Space variable MODEL_ID (a Hub model id; a local directory works too).

The model repository is downloaded whole (its ONNX graphs included), so predictions run on onnxruntime and Grad-CAM
runs torch above the graph's backbone when the repository has them, as `python app.py` does with a local directory."""

import dataclasses
import os
import sys

MODEL_ID = os.environ.get("MODEL_ID", "").strip()
if not MODEL_ID:  # checked before the heavy imports, so a misconfigured Space fails fast with a clear message
    sys.exit("Set the Space variable MODEL_ID to the Hub id of a model saved by train_hf.py "
             "(e.g. your-name/asff-lite2-isic).")

from demo import ModelRegistry, build_demo_for, launch_and_warm_up, serve_or_exit  # noqa: E402

from modeling.prediction import local_model_dir  # noqa: E402

try:
    MODEL_DIR = local_model_dir(MODEL_ID)
except Exception as error:  # unknown repository, no access, offline
    sys.exit(f"Could not download the model {MODEL_ID}: {type(error).__name__}: {error}")
# Served from its files and ONNX graph until torch has loaded in the background, as `python app.py` does.
served = serve_or_exit(MODEL_DIR)
served.info = dataclasses.replace(served.info, name=MODEL_ID.rstrip("/").split("/")[-1])  # not the snapshot's hash
registry = ModelRegistry(served)
demo = build_demo_for(registry)

if __name__ == "__main__":
    launch_and_warm_up(demo, registry)  # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, as Spaces set them
