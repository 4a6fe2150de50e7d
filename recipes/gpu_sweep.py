"""The experiments of one accelerator session, in one command: cross-source training (issue "generalize"), its
ablations, the fine-tuning recipe, and the fusion modes on an ImageNet-initialised EfficientNet-Lite0 (issue
"transfer").

    python recipes/gpu_sweep.py --pack .devpack --out OUT [--deadline_s 480] [--lanes 2] [--smoke]

Why not `train_hf.py` here: a device session has a few minutes, and the Trainer's CPU data pipeline (PIL decode and
torchvision transforms per image) feeds a GPU far slower than it trains. This script keeps every image on the GPU as
uint8 (decoded once from the pack written by recipes/pack_device_data.py, the splits of `train_hf.py --dataset A B
--drop_duplicates true`), and applies the same augmentation on whole batches (random resized crop, flips, rotation,
the dermoscopy frame/vignette, hair-like lines, colour jitter, blur). The models are the project's own classes
(`AsffResNetForImageClassification`), the colour constancy the processor's own function, and the shipped models are
saved with `save_pretrained`; their calibration, OOD statistics and every reported metric are computed afterwards on
the CPU, on the original images, with the project's tools (modeling.calibration, train_hf.py --do_eval_only).

Each run writes its validation/test logits, per-epoch validation ROC AUC per source, fusion-weight statistics and
the Grad-CAM frame share (share of CAM mass in the outer 1/8 frame, target = true class) to OUT. Selection (best
epoch) uses only the validation splits of the sources a run trains on: the other source stays unseen.

What a device session needs (measured on the H200 sessions):
- The device's transformers is older (5.17: no `SubConfigSpec`): always install the carried wheel first,
  `pip install --no-deps --target /tmp/site .devpack/transformers-*.whl` and `PYTHONPATH=/tmp/site`.
- The copied working tree plus the carried pack must stay under 64 MiB: the committed checkpoints alone are
  ~150 MB, so take `checkpoints/` and `results/` out of the index for the call (`git rm -r --cached -q checkpoints
  results`, both listed in `.git/info/exclude`) and restore it afterwards (`git reset -q`).
- Each lane's first epoch costs ~45 s more (cuDNN autotuning, the image cache); a 15-epoch Lite2 run on both sources
  takes ~65 s alone and ~160 s with three lanes sharing the GPU.
- The pack's WebP re-encodes are not the originals, and the networks learn the difference: every model trained
  on them scores lower on the original images (RESULTS.md). A pack that keeps the sources' JPEG codec
  (`pack_device_data.py --codec jpeg`) closed most of that gap: the mean per-source validation ROC AUC on the
  originals fell -0.007..+0.001 from the sweep's own (per source down to -0.012), against -0.010..-0.028 with
  WebP. It is larger than one call carries: spill it (`--spill .devpack-a`), carry `.devpack-a` in a first call
  that copies it to /tmp, then `.devpack` in the training call within the machine's idle window (30 s), and pass
  both folders (`--pack_parts`).
- Lanes share the GPU: four lanes of 15 Lite2 epochs (three at 288 px) took ~260 s; one alone at 288 px ~140 s."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling import AsffResNetConfig, AsffResNetForImageClassification  # noqa: E402
from modeling.backbones import pretrained_backbone_defaults  # noqa: E402
from modeling.image_processing_asff_resnet import fit_to_square, shades_of_gray  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BOTH = ("isic2020-part", "isic2019-part")


@dataclass
class Run:
    name: str
    sources: tuple[str, ...]  # the sources it trains (and selects) on
    backbone: str = "resnet50"  # or "lite0" / "lite1" / "lite2" (ImageNet weights)
    fusion: str = "channel"
    seed: int = 1
    color_constancy: bool = True
    resize: str = "crop"
    augmentation: str = "dermoscopy"
    epochs: int = 25
    lr: float = 1e-3
    batch: int = 64
    init_from: str | None = None  # another run's best weights (fine-tuning)
    focus: float = 0.0  # lesion-focus loss coefficient (needs the pack's masks.npz; crop mode)
    side: int = 224  # the model's square input (the pack's images are brought to it as the processor would)
    ema: float = 0.0  # > 0: select and ship an exponential moving average of the weights (decay per step)
    ship: bool = False  # return its weights
    lane: int = 0


def plan(smoke: bool, only: str | None = None, lanes: int = 3) -> list[Run]:
    """In priority order within each lane (a lane runs its runs one after the other; lanes share the GPU)."""
    lite = {"backbone": "lite0", "epochs": 12, "lr": 5e-4}
    runs = [
        # lane 0: ResNet-50 from scratch (the paper's architecture): both sources, then the cross-source table
        Run("r50-both-channel", BOTH, ship=True, lane=0),
        Run("r50-2020-channel", BOTH[:1], lane=0),
        Run("r50-2019-channel", BOTH[1:], lane=0),
        Run("r50-2019-finetune-channel", BOTH[1:], epochs=10, lr=3e-4, init_from="r50-2020-channel", lane=0),
        Run("r50-2019-scratch10-channel", BOTH[1:], epochs=10, lane=0),
        # lane 2: plain ResNet-50 (no fusion) for the same table
        Run("r50-both-none", BOTH, fusion="none", lane=2),
        Run("r50-2020-none", BOTH[:1], fusion="none", lane=2),
        Run("r50-2019-none", BOTH[1:], fusion="none", lane=2),
        # lane 1: EfficientNet-Lite0 from ImageNet: the shipped candidate, the fusion claim (2 seeds), ablations
        Run("lite0-both-channel", BOTH, ship=True, lane=1, **lite),
        Run("lite0-2020-channel-s1", BOTH[:1], lane=1, **lite),
        Run("lite0-2020-none-s1", BOTH[:1], fusion="none", lane=1, **lite),
        Run("lite0-2020-spatial-s1", BOTH[:1], fusion="spatial", lane=1, **lite),
        Run("lite0-2020-channel-s2", BOTH[:1], seed=2, lane=1, **lite),
        Run("lite0-2020-none-s2", BOTH[:1], fusion="none", seed=2, lane=1, **lite),
        Run("lite0-2020-spatial-s2", BOTH[:1], fusion="spatial", seed=2, lane=1, **lite),
        Run("lite0-both-none", BOTH, fusion="none", lane=1, **lite),
        Run("lite0-both-spatial", BOTH, fusion="spatial", lane=1, **lite),
        Run("lite0-both-channel-nocc", BOTH, color_constancy=False, lane=1, **lite),
        Run("lite0-both-channel-standardaug", BOTH, augmentation="standard", lane=1, **lite),
        Run("lite0-both-channel-squash", BOTH, resize="squash", lane=1, **lite),
        Run("lite0-2019-channel", BOTH[1:], lane=1, **lite),
        Run("lite0-both-channel-s2", BOTH, seed=2, lane=1, **lite),
        Run("lite0-both-none-s2", BOTH, fusion="none", seed=2, lane=1, **lite),
        Run("lite0-both-spatial-s2", BOTH, fusion="spatial", seed=2, lane=1, **lite),
    ]
    lite2 = {"backbone": "lite2", "epochs": 15, "lr": 5e-4, "augmentation": "standard"}
    runs += [
        # EfficientNet-Lite2 from ImageNet on both sources (issue "transfer": the claim with 2 seeds; issue
        # "generalize": the release candidate, trained with the lesion-focus loss from the start)
        Run("lite2-both-channel-s1", BOTH, ship=True, lane=0, **lite2),
        Run("lite2-both-none-s1", BOTH, fusion="none", lane=1, **lite2),
        Run("lite2-both-channel-focus", BOTH, focus=0.5, ship=True, lane=2, **lite2),
        Run("lite2-both-channel-s2", BOTH, seed=2, ship=True, lane=0, **lite2),
        Run("lite2-both-none-s2", BOTH, fusion="none", seed=2, lane=1, **lite2),
        Run("lite2-both-spatial-s1", BOTH, fusion="spatial", lane=2, **lite2),
        # a second device command: more seeds, and the lesion-focus coefficient
        Run("lite2-both-channel-focus-s2", BOTH, focus=0.5, seed=2, ship=True, lane=0, **lite2),
        Run("lite2-both-channel-s3", BOTH, seed=3, lane=1, **lite2),
        Run("lite2-both-none-s3", BOTH, fusion="none", seed=3, lane=2, **lite2),
        Run("lite2-both-channel-focus02", BOTH, focus=0.2, ship=True, lane=0, **lite2),
        Run("lite2-both-spatial-s2", BOTH, fusion="spatial", seed=2, lane=1, **lite2),
        Run("lite2-both-none-s4", BOTH, fusion="none", seed=4, lane=2, **lite2),
    ]
    focus = {**lite2, "focus": 0.5}
    runs += [
        # a third Lite2 session, on a pack that keeps the sources' JPEG codec and the ISIC 2019 images at 288 px:
        # the codec (224, as lite2-both-channel-focus), the input size, a second seed, a moving average of weights
        Run("lite2-both-channel-focus-jpeg", BOTH, ship=True, lane=0, **focus),
        Run("lite2-both-channel-focus-288", BOTH, side=288, ship=True, lane=1, **focus),
        Run("lite2-both-channel-focus-288-s2", BOTH, side=288, seed=2, ship=True, lane=2, **focus),
        Run("lite2-both-channel-focus-288-ema", BOTH, side=288, ema=0.995, ship=True, lane=3, **focus),
        Run("lite2-both-channel-focus-288-s3", BOTH, side=288, seed=3, ship=True, lane=0, **focus),
    ]
    if smoke and only:  # the named runs, one epoch each on a few images
        runs = [Run(**{**asdict(r), "epochs": 1, "batch": 8}) for r in runs]
    elif smoke:
        keep = {"r50-both-channel", "r50-2020-channel", "r50-2019-finetune-channel", "lite0-both-channel",
                "lite0-2020-spatial-s1", "lite0-both-channel-squash", "lite0-both-channel-nocc"}
        runs = [Run(**{**asdict(r), "epochs": 1, "batch": 8}) for r in runs if r.name in keep]
    if only:  # a later session's follow-up: these runs, in this order, spread over the lanes
        names = only.split(",")
        unknown = set(names) - {r.name for r in runs}
        if unknown:
            raise SystemExit(f"unknown run(s) {sorted(unknown)}")
        by_name = {r.name: r for r in runs}
        runs = [Run(**{**asdict(by_name[n]), "lane": i % lanes}) for i, n in enumerate(names)]
    return runs


# ----------------------------------------------------------------------------------------------------------- data

def decode(blob: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(blob)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def to_square(image: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """The image processor's own resize (shortest edge + centre crop, or squash; bicubic, antialiased)."""
    return image if tuple(image.shape[-2:]) == (side, side) else fit_to_square(image, side, mode)


def read_images(folder: Path, parts: list[Path] | tuple = ()) -> bytes:
    """The packed image bytes: `images.bin`, or its pieces `images.bin.K` spread over the pack and `parts` (a pack
    larger than one device call carries; recipes/pack_device_data.py --spill), joined in order of K."""
    if (folder / "images.bin").exists():
        return (folder / "images.bin").read_bytes()
    pieces = {int(p.suffix[1:]): p for d in (folder, *parts) for p in Path(d).glob("images.bin.*")}
    if not pieces or sorted(pieces) != list(range(len(pieces))):
        raise SystemExit(f"incomplete pack: pieces {sorted(pieces)} of images.bin in {[str(folder), *map(str, parts)]}")
    return b"".join(pieces[k].read_bytes() for k in sorted(pieces))


class Pack:
    """The packed images, decoded once; square uint8 tensors per (colour constancy, resize mode) on demand."""

    def __init__(self, folder: Path, smoke: bool, parts: list[Path] | tuple = ()):
        meta = json.loads((folder / "index.json").read_text())
        self.labels, self.side = meta["labels"], meta["side"]
        items = meta["images"]
        if smoke:  # a few images per source and split
            seen: dict = {}
            kept = []
            for item in items:
                key = (item["source"], item["split"], item["label"])
                if seen.get(key, 0) < 6:
                    seen[key] = seen.get(key, 0) + 1
                    kept.append(item)
            items = kept
        self.items = items
        blob = read_images(folder, parts)
        with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
            self.raw = list(pool.map(lambda it: decode(blob[it["offset"]:it["offset"] + it["length"]]), items))
        self.ids = [it["id"] for it in items]
        self.split = np.array([it["split"] for it in items])
        self.source = np.array([it["source"] for it in items])
        self.label = torch.tensor([it["label"] for it in items])
        self.masks = self._read_masks(folder / "masks.npz")
        self._cache: dict = {}

    def _read_masks(self, path: Path) -> torch.Tensor | None:
        """(N, S, S) bool proxy lesion masks of the training images (recipes/pack_device_data.py --lesion_masks) at
        the mask side S, all False for the other images and for those without a mask; None without the file."""
        if not path.exists():
            return None
        stored = np.load(path)
        side = int(stored["side"]) if "side" in stored else self.side
        by_id = dict(zip(stored["ids"].tolist(), range(len(stored["ids"])), strict=True))
        bits = stored["bits"]
        masks = torch.zeros(len(self.ids), side, side, dtype=torch.bool)
        for index, sample_id in enumerate(self.ids):
            if sample_id in by_id:
                masks[index] = torch.from_numpy(np.unpackbits(bits[by_id[sample_id]])[:side * side].reshape(
                    side, side).astype(bool))
        return masks

    def masks_at(self, side: int) -> torch.Tensor | None:
        """The masks on a `side` square: the centre crop covers the same field at every side (nearest)."""
        if self.masks is None or self.masks.shape[-1] == side:
            return self.masks
        return F.interpolate(self.masks[:, None].float(), size=(side, side), mode="nearest")[:, 0] > 0.5

    def images(self, color_constancy: bool, resize: str, side: int | None = None) -> torch.Tensor:
        side = side or self.side
        key = (color_constancy, resize, side)
        if key not in self._cache:
            def prepare(image):
                image = shades_of_gray(image, 6.0) if color_constancy else image  # first, as in the processor
                return to_square(image, side, resize)
            with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
                self._cache[key] = torch.stack(list(pool.map(prepare, self.raw)))
        return self._cache[key]

    def rows(self, split: str, sources) -> np.ndarray:
        return np.flatnonzero((self.split == split) & np.isin(self.source, list(sources)))


# ---------------------------------------------------------------------------------------------------- augmentation

def hair_bank(count: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """Masks of 1-8 thin quadratic Bezier curves (modeling.data.HairLines, drawn once for a bank)."""
    masks = torch.zeros(count, side * side, dtype=torch.bool)
    steps = torch.linspace(0, 1, 3 * side)[:, None]
    for index in range(count):
        for _ in range(int(torch.randint(1, 9, (), generator=generator))):
            start, control, end = torch.rand(3, 2, generator=generator) * side
            end = start + (end - start) * (0.3 + 0.7 * torch.rand((), generator=generator))
            points = (1 - steps) ** 2 * start + 2 * (1 - steps) * steps * control + steps ** 2 * end
            thickness = int(torch.randint(1, 3, (), generator=generator))
            for dy in range(thickness):
                for dx in range(thickness):
                    ys, xs = (points[:, 0] + dy).round().long(), (points[:, 1] + dx).round().long()
                    keep = (ys >= 0) & (ys < side) & (xs >= 0) & (xs < side)
                    masks[index, ys[keep] * side + xs[keep]] = True
    return masks.view(count, 1, side, side)


def uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def augment(x: torch.Tensor, dermoscopy: bool, hairs: torch.Tensor, masks: torch.Tensor | None = None):
    """x: (B, 3, S, S) float in [0, 1] -> augmented, as build_transforms(train=True, strength=1) does per image:
    random resized crop (scale 0.35-1), flips, rotation +-30 deg, [dermoscope frame, hair], colour jitter, [blur].
    With `masks` ((B, S, S) bool lesion masks), returns (x, masks moved by the same geometric transforms)."""
    n, _, side, _ = x.shape
    dev = x.device
    area = uniform(n, 0.35, 1.0, dev)
    log_ratio = math.log(4 / 3) * (2 if dermoscopy else 1)
    ratio = torch.exp(uniform(n, -log_ratio, log_ratio, dev))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    tx, ty = uniform(n, -1, 1, dev) * (1 - w), uniform(n, -1, 1, dev) * (1 - h)
    angle = uniform(n, -math.pi / 6, math.pi / 6, dev)
    fx = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    fy = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * w * fx, -sin * h * fy, tx], 1),
                         torch.stack([sin * w * fx, cos * h * fy, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[:, 0] > 0.5
    if dermoscopy:
        coords = (torch.arange(side, device=dev, dtype=torch.float32) + 0.5)
        radius = uniform(n, 0.35, 0.72, dev) * side
        cy = side / 2 + uniform(n, -0.05, 0.05, dev) * side
        cx = side / 2 + uniform(n, -0.05, 0.05, dev) * side
        edge = (uniform(n, 0.01, 0.05, dev) * side).clamp(min=1)
        distance = ((coords[None, :, None] - cy[:, None, None]) ** 2
                    + (coords[None, None, :] - cx[:, None, None]) ** 2).sqrt()
        inside = ((radius[:, None, None] - distance) / edge[:, None, None] + 0.5).clamp(0, 1)[:, None]
        chosen = (torch.rand(n, device=dev) < 0.5)[:, None, None, None]
        level = torch.randint(0, 41, (n, 1, 1, 1), device=dev) / 255
        x = torch.where(chosen, x * inside + level * (1 - inside), x)
        mask = hairs[torch.randint(0, len(hairs), (n,), device=dev)] & (torch.rand(n, device=dev) < 0.5)[
            :, None, None, None]
        level = torch.randint(0, 61, (n, 1, 1, 1), device=dev) / 255
        colour = level * torch.tensor([1.0, 0.8, 0.6], device=dev)[None, :, None, None]
        x = torch.where(mask, colour, x)
    saturation, hue = (0.3, 0.06) if dermoscopy else (0.2, 0.02)
    x = x * uniform(n, 0.8, 1.2, dev)[:, None, None, None]
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = (x - gray.mean((2, 3), keepdim=True)) * uniform(n, 0.8, 1.2, dev)[:, None, None, None] + gray.mean(
        (2, 3), keepdim=True)
    x = x.clamp(0, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = ((x - gray) * uniform(n, 1 - saturation, 1 + saturation, dev)[:, None, None, None] + gray).clamp(0, 1)
    # hue: a rotation of the chroma plane (YIQ)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    phi = uniform(n, -hue, hue, dev) * 2 * math.pi
    i, q = yiq[:, 1], yiq[:, 2]
    c, s = phi.cos()[:, None, None], phi.sin()[:, None, None]
    yiq = torch.stack([yiq[:, 0], i * c - q * s, i * s + q * c], 1)
    x = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
    if dermoscopy:  # Gaussian blur, p = 0.3, sigma 0.1-1.5, kernel side // 32 * 2 + 1
        chosen = torch.rand(n, device=dev) < 0.3
        if chosen.any():
            k = 2 * max(1, side // 32) + 1
            sigma = uniform(int(chosen.sum()), 0.1, 1.5, dev)
            offsets = torch.arange(k, device=dev, dtype=torch.float32) - k // 2
            kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None] ** 2))
            kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (m*3, k)
            sub = x[chosen].reshape(1, -1, side, side)
            sub = F.conv2d(F.pad(sub, (k // 2, k // 2, 0, 0), mode="reflect"), kernel[:, None, None, :],
                           groups=sub.shape[1])
            sub = F.conv2d(F.pad(sub, (0, 0, k // 2, k // 2), mode="reflect"), kernel[:, None, :, None],
                           groups=sub.shape[1])
            x = x.clone()
            x[chosen] = sub.reshape(-1, 3, side, side)
    return x if masks is None else (x, masks)


# ---------------------------------------------------------------------------------------------------------- model

def build(run: Run, labels: list[str], pack_dir: Path):
    id2label = dict(enumerate(labels))
    kwargs = {"fusion_mode": run.fusion, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
              "image_size": run.side, "lesion_focus_loss_coefficient": run.focus}
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if run.backbone.startswith("lite"):
        defaults = pretrained_backbone_defaults(f"efficientnet-{run.backbone}")
        kwargs["backbone"] = defaults["backbone"]
        mean, std = defaults["image_mean"], defaults["image_std"]
    model = AsffResNetForImageClassification(AsffResNetConfig(**kwargs))
    if run.backbone.startswith("lite"):
        from safetensors.torch import load_file

        # the official ImageNet weights, mapped by modeling.backbones (recipes/pack_device_data.py --lite_backbone)
        weights = load_file(str(pack_dir / f"{run.backbone}_backbone.safetensors"))
        model.asff_resnet.backbone.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return model, mean, std


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device)[None, :, None, None]
    s = torch.tensor(std, device=x.device)[None, :, None, None]
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


@torch.no_grad()
def predict(model, images: torch.Tensor, mean, std, batch: int = 256) -> tuple[np.ndarray, list]:
    model.eval()
    logits, weights = [], []
    for start in range(0, len(images), batch):
        x = normalise(images[start:start + batch].float() / 255, mean, std)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            out = model(pixel_values=x)
        logits.append(out.logits.float().cpu())
        if out.fusion_weights is not None:
            weights.append(out.fusion_weights.float().cpu())
    return torch.cat(logits).numpy(), weights


def fusion_summary(weights: list, fusion: str) -> dict | None:
    """What the learned fusion weights do on the evaluated images. channel: a softmax over channels (w for the low
    level, 1 - w for the high): how concentrated it is (largest weight, effective number of channels). spatial:
    the mean share of the low level (stage3-like) per pixel."""
    if not weights:
        return None
    w = torch.cat(weights)
    if fusion == "channel":
        entropy = -(w.clamp_min(1e-12) * w.clamp_min(1e-12).log()).sum(1)
        top = w.max(1).values
        return {"channels": w.shape[1], "max_weight_mean": float(top.mean()), "max_weight_median": float(
            top.median()), "effective_channels_mean": float(entropy.exp().mean()),
                "top_channel_mode_share": float((w.argmax(1) == w.argmax(1).mode().values).float().mean())}
    low = w[:, 0]
    return {"low_level_share_mean": float(low.mean()), "low_level_share_std_over_pixels": float(
        low.flatten(1).std(1).mean())}


def frame_shares(model, images: torch.Tensor, labels: torch.Tensor, mean, std, batch: int = 64) -> list[float]:
    """Grad-CAM at the fused map (the app's default target), raw (no min-max), upsampled to the input; the share of
    its mass in the outer 1/8 of each side; target = the true class. NaN for an all-zero map."""
    model.eval()
    layer = model.asff_resnet.fusion_output
    store = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        store["a"] = output

    handle = layer.register_forward_hook(hook)
    shares = []
    try:
        for start in range(0, len(images), batch):
            x = normalise(images[start:start + batch].float() / 255, mean, std)
            y = labels[start:start + batch].to(x.device)
            model.zero_grad(set_to_none=True)
            out = model(pixel_values=x)  # float32: gradients of a bf16 map are coarse
            out.logits.gather(1, y[:, None]).sum().backward()
            act, grad = store["a"], store["a"].grad
            cam = torch.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
            side = x.shape[-1]
            cam = F.interpolate(cam, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
            f = side // 8
            total = cam.sum((1, 2))
            inner = cam[:, f:side - f, f:side - f].sum((1, 2))
            share = torch.where(total > 0, (total - inner) / total.clamp_min(1e-30), torch.nan)
            shares.extend(share.detach().cpu().tolist())
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return shares


# ------------------------------------------------------------------------------------------------------- training

def train(run: Run, pack: Pack, device, out: Path, deadline: float, pack_dir: Path) -> dict:
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    model, mean, std = build(run, pack.labels, pack_dir)
    if run.focus and (pack.masks is None or run.resize != "crop"):
        raise SystemExit(f"{run.name}: the lesion-focus loss needs the pack's masks.npz and the crop resize")
    masks = pack.masks_at(run.side).to(device) if run.focus else None
    if run.init_from:
        from safetensors.torch import load_file

        state = load_file(str(out / "weights" / f"{run.init_from}.safetensors"))
        model.load_state_dict(state, strict=True)
    model = model.to(device).to(memory_format=torch.channels_last)
    # the weights that are evaluated, selected and shipped: the model's own, or their moving average
    averaged = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(run.ema), use_buffers=True)
        if run.ema else None)
    evaluated_model = averaged.module if averaged is not None else model
    images = pack.images(run.color_constancy, run.resize, run.side).to(device)
    labels = pack.label.to(device)
    train_rows = torch.from_numpy(pack.rows("train", run.sources)).to(device)
    val_by_source = {s: pack.rows("validation", [s]) for s in BOTH}
    hairs = hair_bank(256, run.side, torch.Generator().manual_seed(run.seed)).to(device)
    steps_per_epoch = max(1, len(train_rows) // run.batch)
    total = steps_per_epoch * run.epochs
    warmup = max(1, int(0.1 * total))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0}],
                                  lr=run.lr, fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, step - warmup) / max(1, total - warmup)))))
    history, best, best_state, best_epoch = [], -1.0, None, 0
    started = time.time()
    stopped_early = False
    for epoch in range(run.epochs):
        model.train()
        order = train_rows[torch.randperm(len(train_rows), device=device)]
        losses, focus_losses = [], []
        for step in range(steps_per_epoch):
            rows = order[step * run.batch:(step + 1) * run.batch]
            if masks is None:
                x = augment(images[rows].float() / 255, run.augmentation == "dermoscopy", hairs)
            else:
                x, m = augment(images[rows].float() / 255, run.augmentation == "dermoscopy", hairs, masks[rows])
            x = normalise(x, mean, std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                if masks is None:
                    logits = model(pixel_values=x).logits
                else:  # the model's own term (AsffResNetForImageClassification.lesion_focus_loss)
                    outputs = model.asff_resnet(x, return_dict=True)
                    logits = model.classifier(outputs.pooler_output)
                    focus = model.lesion_focus_loss(outputs, labels[rows], m.float())
            loss = F.cross_entropy(logits.float(), labels[rows])
            if masks is not None:
                loss = loss + run.focus * focus.float()
                focus_losses.append(focus.detach().float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(loss.detach())
        val = {}
        for source, rows in val_by_source.items():
            if len(rows):
                logits, _ = predict(evaluated_model, images[torch.from_numpy(rows).to(device)], mean, std)
                scores = torch.softmax(torch.from_numpy(logits), 1)[:, 1].numpy()
                val[source] = roc_auc(pack.label[rows].numpy(), scores)
        selection = float(np.nan_to_num(np.mean([val[s] for s in run.sources if s in val])))
        history.append({"epoch": epoch + 1, "loss": float(torch.stack(losses).mean()), "val_roc_auc": val,
                        "focus_loss": float(torch.stack(focus_losses).mean()) if focus_losses else None,
                        "selection": selection, "elapsed_s": round(time.time() - started, 1)})
        print(f"[{run.name}] epoch {epoch + 1}/{run.epochs} loss {history[-1]['loss']:.4f} val {val} "
              f"({history[-1]['elapsed_s']} s)", flush=True)
        if best_state is None or selection > best:
            best = selection
            best_state = {k: v.detach().clone() for k, v in evaluated_model.state_dict().items()}
            best_epoch = epoch + 1
        if time.time() > deadline and epoch + 1 < run.epochs:
            stopped_early = True
            print(f"[{run.name}] deadline: stopping after epoch {epoch + 1}", flush=True)
            break
    model.load_state_dict(best_state)
    evaluated = np.concatenate([pack.rows("validation", BOTH), pack.rows("test", BOTH)])
    logits, weights = predict(model, images[torch.from_numpy(evaluated).to(device)], mean, std)
    # a pack without the test split (one that must stay small: the test images are scored on the CPU) gives the
    # validation images' frame share
    cam_split = "test" if len(pack.rows("test", BOTH)) else "validation"
    cam_rows = pack.rows(cam_split, BOTH)
    shares = frame_shares(model, images[torch.from_numpy(cam_rows).to(device)], pack.label[cam_rows], mean, std)
    (out / "weights").mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous().cpu() for k, v in best_state.items()},
              str(out / "weights" / f"{run.name}.safetensors"))
    if run.ship:
        model.cpu().save_pretrained(out / "models" / run.name)
    return {"run": asdict(run), "best_epoch": best_epoch, "best_selection": best, "history": history,
            "stopped_early": stopped_early, "train_s": round(time.time() - started, 1),
            "train_images": int(len(train_rows)), "ids": [pack.ids[i] for i in evaluated],
            "splits": pack.split[evaluated].tolist(), "sources": pack.source[evaluated].tolist(),
            "labels": pack.label[evaluated].tolist(), "logits": np.round(logits, 5).tolist(),
            "fusion": fusion_summary(weights, run.fusion), f"frame_share_{cam_split}": [round(s, 5) for s in shares],
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}


def lane_main(args) -> None:
    out = Path(args.workdir)
    deadline = float(args.deadline_at)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    pack = Pack(Path(args.pack), args.smoke, args.pack_parts)
    for run in [r for r in plan(args.smoke, args.runs, args.lanes) if r.lane == args.lane]:
        estimate = (args.epoch_s.get(run.backbone, 5.0) * run.epochs * (2 if len(run.sources) == 2 else 1)
                    * (run.side / 224) ** 2)
        if time.time() + 0.5 * estimate > deadline:
            print(f"[{run.name}] skipped: not enough time left", flush=True)
            continue
        if run.init_from and not (out / "weights" / f"{run.init_from}.safetensors").exists():
            print(f"[{run.name}] skipped: {run.init_from} did not finish", flush=True)
            continue
        result = train(run, pack, device, out, deadline, Path(args.pack))
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / "runs" / f"{run.name}.json").write_text(json.dumps(result))


def pack_weights(models: Path, out: Path, chunk: int = 15 * 2**20) -> list[str]:
    """The shipped models' weights as float16, byte planes split and zlib-compressed, in chunks under the device's
    16 MiB per-file limit (reassemble with recipes/unpack_device_models.py)."""
    from safetensors.torch import load_file, save_file

    written = []
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in models.iterdir() if p.is_dir()):
        state = load_file(str(folder / "model.safetensors"))
        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        save_file(half, str(folder / "model.fp16.safetensors"))
        raw = (folder / "model.fp16.safetensors").read_bytes()
        size = len(raw)
        planes = np.frombuffer(raw + b"\0" * (size % 2), dtype=np.uint8).reshape(-1, 2)
        payload = zlib.compress(planes[:, 0].tobytes(), 6), zlib.compress(planes[:, 1].tobytes(), 6)
        header = json.dumps({"name": folder.name, "size": size,
                             "planes": [len(p) for p in payload],
                             "config": json.loads((folder / "config.json").read_text())}).encode()
        blob = len(header).to_bytes(8, "little") + header + payload[0] + payload[1]
        for index in range(0, len(blob), chunk):
            name = f"{folder.name}.part{index // chunk}"
            (out / name).write_bytes(blob[index:index + chunk])
            written.append(name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=".devpack")
    parser.add_argument("--pack_parts", nargs="*", type=Path, default=[],
                        help="folders holding more pieces of the pack's images.bin (carried by earlier calls)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", default=".devout")
    parser.add_argument("--deadline_s", type=float, default=480)
    parser.add_argument("--lanes", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--runs", default=None, help="comma-separated run names (default: the whole plan)")
    parser.add_argument("--lane", type=int, default=None)
    parser.add_argument("--deadline_at", type=float, default=None)
    args = parser.parse_args()
    # seconds per epoch of one source (about 2,240 images) at 224 px, for skipping runs that cannot finish
    args.epoch_s = ({"resnet50": 1.5, "lite0": 1.0, "lite1": 1.8, "lite2": 2.5} if torch.cuda.is_available()
                    else {"resnet50": 60, "lite0": 20, "lite1": 30, "lite2": 45})
    if args.lane is not None:
        return lane_main(args)
    started = time.time()
    workdir = Path(args.workdir)
    if workdir.exists():  # a fresh sweep: nothing from an earlier one is reported
        import shutil

        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    deadline_at = started + args.deadline_s
    lanes = [subprocess.Popen([sys.executable, __file__, "--pack", args.pack, "--pack_parts",
                               *map(str, args.pack_parts), "--out", args.out, "--workdir", args.workdir,
                               "--lane", str(lane), "--deadline_at", str(deadline_at),
                               "--lanes", str(args.lanes)]
                              + (["--smoke"] if args.smoke else []) + (["--runs", args.runs] if args.runs else []))
             for lane in range(args.lanes)]
    codes = [lane.wait() for lane in lanes]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {p.stem: json.loads(p.read_text()) for p in sorted((workdir / "runs").glob("*.json"))}
    summary = {"lanes_exit_codes": codes, "wall_s": round(time.time() - started, 1),
               "torch": torch.__version__, "runs": results}
    (out / "sweep_results.json.gz").write_bytes(zlib.compress(json.dumps(summary).encode(), 6))
    written = pack_weights(workdir / "models", out) if (workdir / "models").exists() else []
    print(json.dumps({"runs": {k: {"best_epoch": v["best_epoch"], "selection": round(v["best_selection"], 4),
                                   "train_s": v["train_s"]} for k, v in results.items()},
                      "files": written, "wall_s": summary["wall_s"], "exit_codes": codes}, indent=1), flush=True)


if __name__ == "__main__":
    main()
