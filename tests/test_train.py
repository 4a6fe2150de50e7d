"""train_hf.py end to end on generated images: outputs, model card, remote-code loading, a single test
evaluation, fine-tuning onto a new label set, eval-only, resume after SIGKILL, and 2-process torchrun. The runs are
in-process (train_hf's own parse_args and main); the slow tests run the CLI as a subprocess, as a user does."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TINY_IMAGE_SIZE, TINY_TRAIN_ARGS, make_image_folder, offline_env, tiny_config
from huggingface_hub import ModelCard

import modeling.calibration as calibration
import modeling.training as training
from modeling.compare import main as compare_main
from train_hf import parse_args

ENV = offline_env()
TINY = TINY_TRAIN_ARGS


@pytest.fixture(scope="module")
def tiny_config_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("config")
    tiny_config().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder, tiny_config_dir):
    """One training run (2 epochs on a few dozen images) through train_hf's parse_args and main."""
    out = tmp_path_factory.mktemp("run")
    training.main(*parse_args(["--dataset", str(image_folder), "--config_name", str(tiny_config_dir), "--output_dir",
                               str(out), "--num_train_epochs", "2", *TINY]))
    return out


def test_cli_writes_model_report_metrics_and_card(trained):
    for name in ["model.safetensors", "config.json", "preprocessor_config.json", "modeling_asff_resnet.py",
                 "configuration_asff_resnet.py", "metrics.json", "README.md"]:
        assert (trained / name).is_file(), name
    for name in ["roc.png", "pr.png", "confusion.png", "reliability.png", "report.json", "report.md"]:
        assert (trained / "report" / name).is_file(), name
        assert (trained / "report" / "validation" / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    test = metrics["test"]
    assert test["n"] == 12 and 0 <= test["metrics"]["accuracy"] <= 1
    assert set(test["ci95"]) >= {"accuracy", "roc_auc", "f1"}
    assert metrics["settings"]["init"] == "random (from scratch)"
    assert not (trained / ".staging").exists()
    card = ModelCard.load(trained / "README.md")
    assert "NOT A DIAGNOSTIC DEVICE" in card.text
    assert card.data.eval_results and {r.metric_type for r in card.data.eval_results} >= {"accuracy", "roc_auc"}
    assert card.data.to_dict()["decision_threshold"] == pytest.approx(test["threshold"])
    assert test["threshold_source"].startswith("validation")


@pytest.mark.slow  # a fresh Python importing torch and transformers
def test_saved_model_loads_with_remote_code_in_a_fresh_process(trained, tmp_path):
    code = (f"from transformers import AutoModelForImageClassification as A; "
            f"m = A.from_pretrained({str(trained)!r}, trust_remote_code=True); print(type(m).__name__)")
    env = {**ENV, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AsffResNetForImageClassification" in result.stdout


def test_test_split_is_evaluated_exactly_once(image_folder, tiny_config_dir, tmp_path, monkeypatch):
    seen, fitted = [], []
    original, original_collect = training.predict_logits, calibration.collect_features

    def counting(trainer, dataset):
        seen.append(len(dataset))
        return original(trainer, dataset)

    def collecting(model, batches, desc="features"):
        fitted.append(len(batches.dataset))
        return original_collect(model, batches, desc)

    monkeypatch.setattr(training, "predict_logits", counting)
    monkeypatch.setattr(calibration, "collect_features", collecting)
    args = parse_args(["--dataset", str(image_folder), "--config_name", str(tiny_config_dir), "--output_dir",
                       str(tmp_path), "--num_train_epochs", "1", "--validation_fraction", "0.25", *TINY])
    result = training.main(*args)
    assert seen == [12]  # the test split once, and only it through the Trainer's prediction
    assert sorted(fitted) == [8, 24]  # calibration, threshold, OOD: validation and train, never test
    checkpoint = Path(result["channel"]["settings"]["best_checkpoint"])  # the run's own, whatever its step
    assert checkpoint.parent == tmp_path and (checkpoint / "trainer_state.json").is_file()
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]  # the whole run's
    assert not any(key.startswith("test_") for entry in history for key in entry)
    assert result["channel"]["test"]["n"] == 12


def test_fine_tune_onto_a_new_label_set_then_eval_only(trained, tmp_path):
    data = make_image_folder(tmp_path / "three", {"train": 6, "test": 3}, labels=("a", "b", "c"), seed=3)
    (data / "train" / "a" / "truncated.jpg").write_bytes(b"\xff\xd8\xff" + b"0" * 50)  # skipped, and recorded
    out = tmp_path / "finetuned"
    args = parse_args(["--dataset", str(data), "--model_name_or_path", str(trained), "--output_dir", str(out),
                       "--num_train_epochs", "1", *TINY])
    result = training.main(*args)
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert result["channel"]["test"]["n"] == 9
    head = "re-initialised for ['a', 'b', 'c'] (the starting model's: ['benign', 'malignant'])"
    assert result["channel"]["settings"]["head"] == head and head in (out / "README.md").read_text()
    skipped = json.loads((out / "metrics.json").read_text())["skipped_files"]
    assert [Path(f["path"]).name for f in skipped] == ["truncated.jpg"] and "unreadable" in skipped[0]["reason"]
    assert result["channel"]["settings"]["unreadable_files_skipped"] == 1
    eval_out = tmp_path / "eval"
    evaluated = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(out),
                                           "--dataset", str(data / "test"), "--output_dir", str(eval_out), *TINY]))
    assert evaluated["test"]["n"] == 9 and evaluated["test"]["threshold_source"] == "default"
    assert (eval_out / "report" / "confusion.png").exists() and (eval_out / "metrics.json").exists()


def test_fine_tuning_takes_the_input_size_and_refuses_a_new_architecture(trained, image_folder, tmp_path):
    """With --model_name_or_path, --image_size is applied (config and saved processor; a CNN takes any size), and flags
    that describe another architecture are an error rather than silently ignored."""
    args = [a for a in TINY if a != "--image_size" and a != str(TINY_IMAGE_SIZE)]
    out = tmp_path / "at40"
    training.main(*parse_args(["--dataset", str(image_folder), "--model_name_or_path", str(trained), "--output_dir",
                               str(out), "--max_steps", "1", "--image_size", "40", *args]))
    assert json.loads((out / "config.json").read_text())["image_size"] == 40
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 40, "width": 40}
    for flag, value in (("--backbone", "tf_efficientnet_lite0"), ("--config_name", str(trained))):
        with pytest.raises(training.UsageError, match=f"{flag} describes a new model"):
            training.main(*parse_args(["--dataset", str(image_folder), "--model_name_or_path", str(trained),
                                       "--output_dir", str(tmp_path / "no"), flag, value, *TINY]))


def test_eval_only_reproduces_recorded_test_metrics(trained, image_folder, tmp_path):
    """Any image size: the eval-only path resizes with the saved image processor."""
    evaluated = training.main(*parse_args(["--do_eval_only", "true", "--model_name_or_path", str(trained),
                                           "--dataset", str(image_folder), "--output_dir", str(tmp_path), *TINY]))
    recorded = json.loads((trained / "metrics.json").read_text())["test"]
    assert evaluated["test"]["threshold"] == pytest.approx(recorded["threshold"])
    for name, value in recorded["metrics"].items():
        assert evaluated["test"]["metrics"][name] == pytest.approx(value, abs=1e-6, nan_ok=True), name


def test_models_under_one_recipe_with_paired_comparison_and_time_budget(image_folder, tiny_config_dir, tmp_path,
                                                                        capsys):
    """`--models a,b` trains each under the same arguments, saves test predictions keyed by image path, and writes
    the comparison with paired differences; a time budget stops training early but keeps the rest of the run."""
    args = parse_args(["--dataset", str(image_folder), "--config_name", str(tiny_config_dir), "--output_dir",
                       str(tmp_path), "--models", "channel,none", "--num_train_epochs", "3",
                       "--max_train_minutes", "1e-6", *TINY])
    results = training.main(*args)
    for name in ("channel", "none"):
        settings = results[name]["settings"]
        assert settings["stopped_by_time_budget_min"] == 1e-6 and 0 < settings["epochs_completed"] < 1
        assert settings["hardware"].startswith("CPU") and settings["mixed_precision"] == "no (float32)"
        rows = (tmp_path / name / "report" / "predictions.csv").read_text().splitlines()
        assert rows[0] == "id,label,p_benign,p_malignant" and len(rows) == 13
        assert rows[1].split(",")[0].startswith("test/") and rows[1].split(",")[0].endswith(".jpg")
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert list(comparison["models"]) == ["channel", "none"] and comparison["paired_vs"] == "channel"
    assert set(comparison["paired_differences"]["none"]) >= {"accuracy", "roc_auc"}
    assert "Paired differences from `channel` (same 12 images)" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "learning_curves.png").stat().st_size > 0  # from each run's saved trainer_state.json
    assert "log_history" in json.loads((tmp_path / "channel" / "trainer_state.json").read_text())
    # The same comparison from the saved run directories, by the CLI (python -m modeling.compare), with the other
    # reference.
    capsys.readouterr()
    compare_main(["--output_dir", str(tmp_path / "cli"), f"none={tmp_path / 'none'}", str(tmp_path / "channel")])
    assert "Paired differences from `none`" in capsys.readouterr().out
    cli = json.loads((tmp_path / "cli" / "comparison.json").read_text())
    assert cli["paired_differences"]["channel"]["roc_auc"]["delta"] == pytest.approx(
        -comparison["paired_differences"]["none"]["roc_auc"]["delta"], abs=1e-9)
    with pytest.raises(SystemExit) as missing:
        compare_main(["--output_dir", str(tmp_path / "x"), str(tmp_path)])
    assert missing.value.code == 2 and "no report/report.json" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess; tests/test_train_hf.py checks the same in-process
def test_bad_dataset_is_a_clear_cli_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "train_hf.py"), "--dataset", str(tmp_path / "empty"),
                             "--output_dir", str(tmp_path / "out")], env=ENV, capture_output=True, text=True)
    assert result.returncode == 2
    assert "no readable images" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_the_checkpoint(image_folder, tiny_config_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train_hf.py"), "--dataset", str(image_folder), "--config_name",
               str(tiny_config_dir), "--output_dir", str(out), "--max_steps", "12", "--save_strategy", "steps",
               "--save_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--save_total_limit", "10", *TINY]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and not (out / "metrics.json").exists(), "the first run was killed before finishing"
    step = int(checkpoints[0].name.split("-")[1])
    assert step < 12
    resumed = subprocess.run([*command, "--resume_from_checkpoint", str(checkpoints[0])], env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"global step {step}" in resumed.stderr
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and (out / "metrics.json").is_file()


@pytest.mark.slow
def test_torchrun_two_processes(image_folder, tiny_config_dir, tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               str(ROOT / "train_hf.py"), "--dataset", str(image_folder), "--config_name", str(tiny_config_dir),
               "--output_dir", str(out), "--num_train_epochs", "1", "--ddp_backend", "gloo", *TINY]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["batch_size"] == 16  # 8 per process x 2 processes
    assert metrics["test"]["n"] == 12


def test_half_precision_export_loads_as_float32(trained, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForImageClassification

    from modeling.export import export_half_precision

    out = export_half_precision(trained, tmp_path / "release")
    with safe_open(out / "model.safetensors", "pt") as weights:
        dtypes = {k: weights.get_tensor(k).dtype for k in weights.keys()}
    floating = {d for k, d in dtypes.items() if not k.startswith("ood_scorer.")} - {torch.int64}  # BN counters
    assert floating == {torch.float16}
    assert {d for k, d in dtypes.items() if k.startswith("ood_scorer.")} == {torch.float32}  # fitted by training
    release = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    original = AutoModelForImageClassification.from_pretrained(trained, trust_remote_code=True).eval()
    assert next(release.parameters()).dtype == torch.float32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(release(x).logits, original(x).logits, atol=1e-2)
    assert (out / "README.md").is_file() and (out / "report" / "roc.png").is_file()
    assert not list(out.glob("checkpoint-*"))
    card = (out / "README.md").read_text()  # the usage snippets load the release where it is, not the training run
    assert f'model="{out}"' in card and card.count(f'from_pretrained("{out}"') == 2
    assert f'"{trained}"' not in card  # (its command, which names the run's directory, stays)
    assert "\n# release\n" in card


def test_the_card_names_what_ended_and_cut_the_run_and_ood_fits_on_the_images_trained_on(
        image_folder, tiny_config_dir, tmp_path, monkeypatch):
    """--max_steps ends a run before --num_train_epochs: the settings say max_steps, not the epochs never run; a
    --max_train_samples cut and the duplicate distance are recorded; the OOD statistics are fitted on the images the
    model trained on (the cut), not on the whole train split."""
    seen = {}
    original = training.fit_calibration

    def counting(model, train_batches, validation_batches, **kwargs):
        batches = list(train_batches)
        seen["train_images"] = sum(len(batch["labels"]) for batch in batches)
        return original(model, batches, validation_batches, **kwargs)

    monkeypatch.setattr(training, "fit_calibration", counting)
    out = tmp_path / "cut"
    training.main(*parse_args(["--dataset", str(image_folder), "--config_name", str(tiny_config_dir), "--output_dir",
                               str(out), "--max_steps", "1", "--max_train_samples", "6", "--drop_duplicates", "true",
                               "--near_duplicate_distance", "3", "--cam_frame_share", "false", *TINY]))
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert "epochs" not in settings and settings["max_steps"] == 1
    assert settings["max_train_samples"] == 6 and settings["near_duplicate_distance"] == 3
    assert seen["train_images"] == 6 and settings["train_images_used"] == 6 < settings["split_sizes"]["train"]
    card = (out / "README.md").read_text()
    assert "| `max_steps` | `1` |" in card and "| `epochs` |" not in card
    assert "| `train_images_used` | `6` |" in card and "| `color_constancy` | `off` |" in card
