"""Train and evaluate the ShapesWorld oracle on CPU (a few minutes on 2 cores).

Training data is rendered on the fly from train-split scenes (fresh scenes every chunk,
so the net never sees the same image twice) and degraded with `degrade.degrade`; a share
of each batch stays clean. Evaluation uses test-split scenes (never trained on), clean and
degraded with a fixed seed. After the attribute heads, the damaged head trains on the frozen
trunk (`damage_train.py`; alone, on a saved oracle: `python -m repro.shapes.oracle --train-damage`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from repro.errors import ReproError
from repro.shapes.degrade import DegradeConfig, degrade
from repro.shapes.oracle import (
    ARCH,
    GLOBAL_HEADS,
    SLOT_HEADS,
    Oracle,
    OracleNet,
    default_oracle_dir,
    save_oracle,
    scene_targets,
)
from repro.shapes.render import render_batch
from repro.shapes.splits import split_of, split_scenes
from repro.shapes.world import ORIENTED_SHAPES, POSITIONS, sample_scene


@dataclass
class OracleTrainConfig:
    """Settings for `train_oracle`."""

    steps: int = 3000
    """Optimiser steps (the committed weights: 3000, ~9 min on an H100 machine, CPU-bound by rendering)."""
    batch_size: int = 256
    """Images per step."""
    lr: float = 3e-3
    """Peak learning rate of the one-cycle schedule (AdamW)."""
    width: int = 32
    """Channels of the first conv layer (the net widens to 4x this)."""
    chunk_scenes: int = 8192
    """Scenes rendered at a time; each chunk is used for `passes` passes."""
    passes: int = 2
    """Passes over each chunk (fresh degradations each pass)."""
    clean_fraction: float = 0.2
    """Share of each batch left undegraded."""
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    """Augmentation strengths (also the "degraded" evaluation's)."""
    seed: int = 0
    """Seeds scenes, augmentations and initialisation."""
    threads: int = 2
    """torch CPU threads."""
    device: str = "auto"
    """Where to train: auto (CUDA if there is one), cpu, cuda, ... The saved weights are the same kind."""
    render_workers: int | None = None
    """Processes rendering training chunks (default: all cores for big chunks)."""
    eval_scenes: int = 2000
    """Held-out (test split) scenes scored after training."""
    out_dir: str | None = None
    """Where to save (default: models/oracle under the project root, or $REPRO_MODELS_DIR/oracle)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.chunk_scenes < self.batch_size:
            raise ReproError("steps and batch_size must be >= 1 and chunk_scenes >= batch_size")
        if not 0 <= self.clean_fraction <= 1:
            raise ReproError(f"clean_fraction must lie in [0, 1], not {self.clean_fraction}")


def _loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    total = 0.0
    for k in SLOT_HEADS:
        total = total + F.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten(), ignore_index=-100)
    for k in GLOBAL_HEADS:
        total = total + F.cross_entropy(logits[k], targets[k])
    return total


def _train_chunks(cfg: OracleTrainConfig, rng: np.random.Generator):
    """Yield (uint8 images [n, 128, 128, 3], scenes) of fresh train-split scenes forever."""
    while True:
        scenes = []
        while len(scenes) < cfg.chunk_scenes:
            s = sample_scene(rng)
            if split_of(s) == "train":
                scenes.append(s)
        yield torch.from_numpy(render_batch(scenes, workers=cfg.render_workers, with_masks=False).images), scenes


def attribute_accuracy(readings: list[dict], scenes: list) -> dict[str, float]:
    """Per-attribute accuracy of readings against the true scenes.

    occupancy: per slot, empty vs occupied right (N x 5 decisions). shape, colour, texture,
    size: per true object, read in its slot. pose: per oriented object. background, style:
    per image. all: every attribute of the image right and no extra object.
    """
    hits: dict[str, list[bool]] = {k: [] for k in
                                   ("occupancy", "shape", "pose", "colour", "texture", "size", "background", "style", "all")}
    for r, s in zip(readings, scenes):
        truth = {o.position: o for o in s.objects}
        ok_all = True
        for p in POSITIONS:
            occ = (r["slots"][p] is not None) == (p in truth)
            hits["occupancy"].append(occ)
            ok_all &= occ
        for o in s.objects:
            g = r["slots"][o.position]
            for a in ("shape", "colour", "texture", "size"):
                ok = g is not None and g[a] == getattr(o, a)
                hits[a].append(ok)
                ok_all &= ok
            if o.shape in ORIENTED_SHAPES:
                ok = g is not None and g["orientation"] == o.orientation
                hits["pose"].append(ok)
                ok_all &= ok
        for a in ("background", "style"):
            ok = r[a] == getattr(s, a)
            hits[a].append(ok)
            ok_all &= ok
        hits["all"].append(bool(ok_all))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def evaluate_oracle(oracle: Oracle, n: int = 2000, seed: int = 1, degrade_cfg: DegradeConfig | None = None) -> dict:
    """Accuracy on n held-out (test split) renders, clean and degraded: {"clean": {...}, "degraded": {...}}."""
    scenes = split_scenes("test", n, seed=seed)
    images = torch.from_numpy(render_batch(scenes, with_masks=False).images)
    gen = torch.Generator().manual_seed(seed)
    bad = torch.cat([degrade(images[a : a + 256], gen, degrade_cfg or DegradeConfig())
                     for a in range(0, n, 256)])
    return {
        "clean": attribute_accuracy(oracle.read(images), scenes),
        "degraded": attribute_accuracy(oracle.read(bad), scenes),
        "n_scenes": n,
        "split": "test",
        "seed": seed,
    }


def train_oracle(cfg: OracleTrainConfig = OracleTrainConfig(), save: bool = True, log_every: int = 100) -> dict:
    """Train an oracle with `cfg`, evaluate it on held-out renders, save it; returns the metrics."""
    from repro.io import provenance

    from repro.devices import pick_device

    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = OracleNet(cfg.width).to(device, memory_format=torch.channels_last)  # channels_last: ~4x faster convs on CPU
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    chunks = _train_chunks(cfg, rng)
    step, t0 = 0, time.time()
    net.train()
    while step < cfg.steps:
        images, scenes = next(chunks)
        images = images.to(device)
        targets = {k: v.to(device) for k, v in scene_targets(scenes).items()}
        for _ in range(cfg.passes):
            perm = torch.randperm(len(scenes), generator=gen)
            for a in range(0, len(scenes) - cfg.batch_size + 1, cfg.batch_size):
                if step >= cfg.steps:
                    break
                idx = perm[a : a + cfg.batch_size].to(device)
                x = images[idx]
                n_clean = int(cfg.clean_fraction * len(idx))
                x = torch.cat([x[:n_clean], degrade(x[n_clean:], gen, cfg.degrade)])
                x = x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
                loss = _loss(net(x), {k: v[idx] for k, v in targets.items()})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if log_every and step % log_every == 0:
                    print(f"step {step}/{cfg.steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    net.eval()
    if net.damage_head is not None:  # the damaged head trains on the frozen trunk (damage_train.py)
        from repro.shapes.damage_train import DamageTrainConfig, damage_rates, train_damage_head

        damage_cfg = DamageTrainConfig(threads=cfg.threads, seed=cfg.seed)
        damage_timing = train_damage_head(net.cpu(), damage_cfg)
        net.to(device)
    oracle = Oracle(net, {"damage_threshold": DamageTrainConfig.threshold}, device)
    metrics = evaluate_oracle(oracle, n=cfg.eval_scenes, degrade_cfg=cfg.degrade)
    metrics["train_seconds"] = round(train_s, 1)
    metrics["train_device"] = str(device)
    config = {
        "arch": ARCH,
        "width": cfg.width,
        "train": asdict(cfg),
        "metrics": metrics,
        "provenance": provenance(command="python -m repro.shapes.oracle --train"),
        "damage_threshold": damage_cfg.threshold,
        "damage": {"train": asdict(damage_cfg), **damage_timing, "rates": damage_rates(oracle)},
    }
    if save:
        save_oracle(net.cpu(), config, cfg.out_dir or default_oracle_dir())
    return metrics
