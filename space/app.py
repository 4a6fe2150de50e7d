"""Hugging Face Space entry point: the project's demo (its `app.py`, shipped beside this file as `demo.py`) serving
the model named by the Space variable MODEL_ID (a Hub model id; a local directory works too)."""

import os
import sys

MODEL_ID = os.environ.get("MODEL_ID", "").strip()
if not MODEL_ID:  # checked before the heavy imports, so a misconfigured Space fails fast with a clear message
    sys.exit("Set the Space variable MODEL_ID to the Hub id of a model saved by train_hf.py "
             "(e.g. your-name/asff-resnet50-isic2020).")

from demo import build_demo, launch_demo, load_or_exit  # noqa: E402

demo = build_demo(*load_or_exit(MODEL_ID))

if __name__ == "__main__":
    launch_demo(demo)  # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, as Spaces set them
