"""Time from `python app.py` to its first answered request, on this machine.

Starts the app as a fresh process (the same command a user types), polls until the server answers, then sends one
/predict request with a generated lesion image, then one /explain (the analysis the page runs on an upload: the
prediction with its Grad-CAM); prints the seconds from launch to the server answering, to the first prediction and to
the first analysis. Repeats and prints the medians. The client is imported before the clock starts, so only the app's
own start-up is timed.

    python benchmarks/app_startup.py [--repeats 3] [--compare OTHER_APP.py] [-- extra app.py arguments]

`--compare` times another version of the app too (e.g. `git show COMMIT:app.py > /tmp/app_before.py`), alternating
with this one, so that both see the same load; it runs with this repository on its path and the reference checkpoint
as its model.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from modeling.synthetic import lesion_image  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_once(image: Path, app_args: list[str], app: Path = ROOT / "app.py",
                timeout: float = 300) -> tuple[float, float, float]:
    """(seconds to the page answering, to the first /predict answer, to the first /explain answer), from the process
    start."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    if app != ROOT / "app.py":
        app_args = ["--model", str(ROOT / "checkpoints" / "asff-resnet50-isic2020"), *app_args]
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(app), "--port", str(port), *app_args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with status {process.returncode}")
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"no answer within {timeout} s")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.05)
        page = time.perf_counter() - start
        client = Client(url, verbose=False, analytics_enabled=False)
        client.predict(handle_file(image), api_name="/predict")
        predicted = time.perf_counter() - start
        client.predict(handle_file(image), 0.5, False, "fused", "gradcam", api_name="/explain")
        return page, predicted, time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another app.py to time, alternating with this one")
    parser.add_argument("app_args", nargs="*", help="extra arguments for app.py (after --)")
    args = parser.parse_args()
    apps = {"app.py": ROOT / "app.py", **({str(args.compare): args.compare.resolve()} if args.compare else {})}
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in apps}
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "lesion.jpg"
        lesion_image(1, np.random.default_rng(0), 224).save(image)
        for _ in range(args.repeats):
            for name, path in apps.items():
                runs[name].append(launch_once(image, args.app_args, path))
    print(f"{os.cpu_count()} CPUs, load average (1 min) now {os.getloadavg()[0]:.1f}")
    for name, times in runs.items():
        for i, (page, first, analysis) in enumerate(times):
            print(f"{name} run {i + 1}: page answers after {page:5.1f} s, first /predict answered after "
                  f"{first:5.1f} s, then the first /explain after {analysis:5.1f} s")
        print(f"{name} median: page {statistics.median(r[0] for r in times):.1f} s, "
              f"first answered request {statistics.median(r[1] for r in times):.1f} s, "
              f"first analysis {statistics.median(r[2] for r in times):.1f} s")


if __name__ == "__main__":
    main()
