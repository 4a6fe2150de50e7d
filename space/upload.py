"""Assembles the Hugging Face Space (space/README.md, space/app.py, space/requirements.txt, the project's app.py as
demo.py, and the modeling package) into a folder and uploads it.

    python space/upload.py --repo-id NAME/SPACE [--model-id NAME/MODEL] [--private] [--target DIR]
    python space/upload.py --dry-run [--target DIR]      # assemble only

`--model-id` sets the Space variable MODEL_ID, the model the Space serves. Uploading needs a Hub token
(`hf auth login` or HF_TOKEN).
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parent
ROOT = SPACE_DIR.parent
SPACE_FILES = ("README.md", "app.py", "requirements.txt")


def assemble(target: str | Path) -> Path:
    """Writes the Space into `target` (created if needed). Only the Space's own names are replaced there."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE_DIR / name, target / name)
    shutil.copy2(ROOT / "app.py", target / "demo.py")
    if (target / "modeling").exists():
        shutil.rmtree(target / "modeling")
    shutil.copytree(ROOT / "modeling", target / "modeling", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-id", help="the Space, e.g. your-name/asff-resnet-demo (required unless --dry-run)")
    parser.add_argument("--model-id", help="Hub model id to serve, set as the Space variable MODEL_ID")
    parser.add_argument("--target", type=Path, help="folder to assemble into (default: a new temporary folder)")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    parser.add_argument("--dry-run", action="store_true", help="assemble only, upload nothing")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.repo_id:
        parser.error("--repo-id is required (or pass --dry-run)")

    target = assemble(args.target or tempfile.mkdtemp(prefix="asff-space-"))
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    print(f"Assembled {len(files)} files in {target}: {', '.join(files)}")
    if args.dry_run:
        return 0

    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", private=args.private or None,
                          exist_ok=True)
    if args.model_id:
        api.add_space_variable(args.repo_id, "MODEL_ID", args.model_id)
    api.upload_folder(repo_id=args.repo_id, folder_path=target, repo_type="space",
                      commit_message="Update the ASFF-ResNet demo")
    print(f"Uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
