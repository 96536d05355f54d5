"""The judge: a small CNN digit classifier whose features and class probabilities score samples.

Its penultimate features play the role Inception features play in FID ("FD-judge"), and its
softmax feeds mode coverage, the inception score and label agreement. Saved like the models:
`model.safetensors` + `config.json`, no pickle.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn
from tqdm.auto import tqdm

from models.config import Config
from models.imaging import from_uint8
from models.io import atomic_write_bytes, atomic_write_json

JUDGE_FORMAT_VERSION = 1
JUDGE_WEIGHTS = "model.safetensors"
JUDGE_CONFIG = "config.json"


@dataclass(frozen=True)
class JudgeConfig(Config):
    """Widths of the three conv stages and the feature (penultimate) dimension."""

    channels: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 128

    def validate(self) -> None:
        if len(self.channels) != 3 or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"JudgeConfig.channels must be 3 positive ints, got {self.channels}")
        if self.feature_dim < 2:
            raise ValueError(f"JudgeConfig.feature_dim must be >= 2, got {self.feature_dim}")


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class JudgeNet(nn.Module):
    """28x28 -> conv pool conv pool conv pool(3x3) -> linear features (128) -> 10 logits."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or JudgeConfig()
        c1, c2, c3 = self.config.channels
        self.body = nn.Sequential(
            _conv_block(1, c1),
            nn.MaxPool2d(2),
            _conv_block(c1, c2),
            nn.MaxPool2d(2),
            _conv_block(c2, c3),
            nn.MaxPool2d(2),  # 7x7 -> 3x3: keep where strokes are (6 vs 9), unlike global pooling
            nn.Flatten(),
            nn.Linear(c3 * 9, self.config.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.config.feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim)."""
        return self.body(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)


def as_images(x: Any) -> Tensor:
    """(N,784) / (N,28,28) / (N,1,28,28), uint8 0..255 or float 0..1 -> float32 (N,1,28,28)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    t = from_uint8(t).reshape(-1, 1, 28, 28)
    if t.numel() and not torch.isfinite(t).all():
        raise ValueError("images contain NaN or Inf")
    return t


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Small random affine jitter: +-2 px shift, +-10 deg rotation, 0.9-1.1 scale."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle, scale = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1]
    shift = u[:, 2:] * (2 / 14)  # 2 px in normalised [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


@torch.no_grad()
def judge_outputs(
    net: JudgeNet, images: Any, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float64 and softmax probabilities (N, 10) float64, in eval mode."""
    was_training = net.training
    net.eval()
    x = as_images(images)
    feats, probs = [], []
    for start in range(0, x.shape[0], batch_size):
        f = net.features(x[start : start + batch_size])
        feats.append(f.double())
        probs.append(torch.softmax(net.head(f), dim=1).double())
    net.train(was_training)
    dim = net.config.feature_dim
    if not feats:
        return np.zeros((0, dim)), np.zeros((0, 10))
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def judge_accuracy(net: JudgeNet, x: Any, y: Any, batch_size: int = 500) -> float:
    """Share of images whose argmax class equals the label."""
    _, probs = judge_outputs(net, x, batch_size)
    labels = np.asarray(y).reshape(-1)
    return float((probs.argmax(1) == labels).mean()) if labels.size else float("nan")


def train_judge(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    max_steps: int | None = None,
    seed: int = 0,
    config: JudgeConfig | None = None,
    progress: bool = True,
) -> tuple[JudgeNet, list[dict[str, float]]]:
    """Train a judge with AdamW + one-cycle LR and affine jitter; keep the best-val weights.

    Deterministic on the CPU for a given seed: init, batch order and augmentation all come
    from seeded generators (the global RNG is forked, so callers' RNG state is untouched).
    `max_steps` caps the total number of optimisation steps (for tiny test runs).
    Returns the net (eval mode) and a history of per-epoch dicts.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs>=1, batch_size>=1, lr>0; got {epochs}, {batch_size}, {lr}")
    xtr, ytr = as_images(train_x), torch.as_tensor(np.asarray(train_y)).long().reshape(-1)
    xva, yva = as_images(val_x), np.asarray(val_y).reshape(-1)
    if xtr.shape[0] != ytr.shape[0] or xtr.shape[0] == 0:
        raise ValueError(f"train sizes differ or are empty: {xtr.shape[0]} vs {ytr.shape[0]}")
    steps_per_epoch = math.ceil(xtr.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = max(1, min(max_steps, total))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = JudgeNet(config)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.2)
    history: list[dict[str, float]] = []
    best_acc, best_state, step, t0 = -1.0, None, 0, time.perf_counter()
    bar = tqdm(total=total, desc="judge", disable=not progress, leave=False)
    for epoch in range(epochs):
        net.train()
        order, loss_sum, seen = torch.randperm(xtr.shape[0], generator=gen), 0.0, 0
        for start in range(0, xtr.shape[0], batch_size):
            if step >= total:
                break
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(net(_augment(xtr[idx], gen)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step, loss_sum, seen = step + 1, loss_sum + loss.item() * len(idx), seen + len(idx)
            bar.update(1)
        val_acc = judge_accuracy(net, xva, yva)
        history.append(
            {"epoch": epoch + 1, "step": step, "loss": loss_sum / max(seen, 1), "val_acc": val_acc,
             "seconds": time.perf_counter() - t0}
        )  # fmt: skip
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", val_acc=f"{val_acc:.4f}")
        if val_acc > best_acc or math.isnan(val_acc):
            best_acc = val_acc
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if step >= total:
            break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), history


def save_judge(net: JudgeNet, directory: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` + `config.json` (atomically) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    atomic_write_bytes(directory / JUDGE_WEIGHTS, safetensors_bytes(state, {"kind": "judge"}))
    config = net.config.to_dict() | {"channels": list(net.config.channels)}
    payload = {"format_version": JUDGE_FORMAT_VERSION, "kind": "judge", "config": config,
               "extra": extra or {}}  # fmt: skip
    atomic_write_json(directory / JUDGE_CONFIG, payload)
    return directory


def load_judge(directory: Path) -> JudgeNet:
    """Rebuild a JudgeNet from `config.json` and load its safetensors weights (strict, eval)."""
    directory = Path(directory)
    payload = json.loads((directory / JUDGE_CONFIG).read_text())
    if payload.get("kind") != "judge" or payload.get("format_version") != JUDGE_FORMAT_VERSION:
        raise ValueError(f"{directory / JUDGE_CONFIG} is not a judge config (format 1)")
    cfg = payload["config"]
    net = JudgeNet(JudgeConfig.from_dict(cfg))
    net.load_state_dict(load_file(directory / JUDGE_WEIGHTS, device="cpu"), strict=True)
    return net.eval()
