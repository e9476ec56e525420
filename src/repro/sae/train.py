"""Train one or several SAEs (one per block) on a batch source, with logs, checkpoints and resume.

`train_saes(saes, source, cfg, out_dir=...)` writes into `out_dir`:
    metrics.jsonl          one line per block per logging interval: step, tokens, loss,
                           nmse, auxk, ev, l0 (averaged over the interval), dead_frac, lr,
                           skipped_nonfinite, tokens_per_s
    checkpoints/step_*/    see `checkpoint.py`; `resume=True` continues from the newest
    <block>/               the final SAE (`io.save_sae` layout, with feature stats if asked)

A run killed at any moment and resumed gives bitwise the same weights as an uninterrupted
run on CPU (fixed seeds, same source): everything that changes during training (weights,
Adam state, dead counters, step, source position, RNG states) is in the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from repro.devices import pick_device
from repro.errors import ReproError, choices_hint
from repro.io import FolderLock, write_bytes_atomic
from repro.store.layout import LOCK
from repro.meter import add_sae_training
from repro.sae.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from repro.sae.config import TrainConfig, scaled_lr
from repro.sae.geometric_median import geometric_median
from repro.sae.graphed import GraphedStep, graph_capturable
from repro.sae.io import save_sae
from repro.sae.model import TopKSAE
from repro.sae.sources import BatchSource
from repro.sae.stats import feature_stats
from repro.sae.step import auto_impl, make_optimizer, resolve_compute_dtype, train_step

METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
METRIC_NAMES = ("loss", "nmse", "auxk", "ev", "l0")


@dataclass
class TrainResult:
    """What a finished (or source-exhausted) run did."""

    steps: int
    tokens: int
    skipped_nonfinite: dict[str, int]
    last_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    out_dir: Path | None = None


def block_batch(batch: dict[str, torch.Tensor], block: str, sae: TopKSAE) -> torch.Tensor:
    """The [B, d] tensor of `block` in `batch`, checked against the SAE's width."""
    if block not in batch:
        raise ReproError(f"the batch source yields no block {block!r} for its SAE; it yields {choices_hint(batch)}")
    x = batch[block]
    if x.ndim != 2 or x.shape[-1] != sae.cfg.d_model:
        raise ReproError(
            f"block {block!r}: the SAE has d_model={sae.cfg.d_model} but the source gives batches of shape "
            f"{tuple(x.shape)}; build the SAE with d_model={x.shape[-1]} or feed [B, {sae.cfg.d_model}] batches"
        )
    return x


@torch.no_grad()
def init_b_pre(saes: dict[str, TopKSAE], source: BatchSource, n_samples: int) -> None:
    """Set each SAE's b_pre to the geometric median of the source's first `n_samples` finite vectors.

    The source's position is restored afterwards, so training still starts at its beginning.
    """
    state = copy.deepcopy(source.state_dict())
    rows: dict[str, list[torch.Tensor]] = {block: [] for block in saes}
    got = 0
    for batch in source:
        for block, sae in saes.items():
            x = block_batch(batch, block, sae)[: n_samples - got].float()
            rows[block].append(x)
        got += rows[next(iter(saes))][-1].shape[0]
        if got >= n_samples:
            break
    source.load_state_dict(state)
    for block, sae in saes.items():
        if not rows[block]:
            raise ReproError("the batch source yielded nothing; cannot initialise b_pre (or set init_b_pre=False)")
        x = torch.cat(rows[block]).to(sae.device)
        x = x[torch.isfinite(x).all(1)]  # NaN rows would poison the median
        sae.b_pre.copy_(geometric_median(x))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after `step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())


def training_lr(cfg: TrainConfig, sae: TopKSAE) -> float:
    """The Adam lr `sae` trains at under `cfg`: cfg.lr, or `scaled_lr` of its width when cfg.lr is 0."""
    return cfg.lr or scaled_lr(sae.cfg.n_features)


def trained_lr(sae: TopKSAE, default: float = 1e-4) -> float:
    """The lr a saved SAE was trained at (its cfg.json's training record), or `default`; what a
    control compared with it trains at."""
    training = sae.metadata.get("training") or {}
    lr = training.get("lr") or (training.get("config") or {}).get("lr")
    return float(lr) if lr else default


def train_saes(
    saes: dict[str, TopKSAE],
    source: BatchSource,
    cfg: TrainConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    step_fn: Callable[..., Any] | None = None,
    work_dir: str | os.PathLike | None = None,
    batch_rows: int | None = None,
    save_final: bool = True,
) -> TrainResult:
    """Train `saes` {block: SAE} for `cfg.steps` batches of `source`; each SAE sees its block's [B, d] rows.

    `out_dir` (needed for checkpoints, logs and resume) receives the metrics log, the
    checkpoints and the final SAEs; `metadata` (model=, ...) goes into each SAE's cfg.json.
    With `resume=True` the newest checkpoint in `out_dir` is restored (a fresh start if
    there is none). SAEs are trained in place and moved to `cfg.device`.

    Used by `repro.dist` (several ranks), all off by default: `step_fn` replaces
    `train_step` (same signature); `work_dir` takes the checkpoints and metrics.jsonl
    instead of `out_dir`; `batch_rows` counts tokens per step when the source yields only
    this rank's slice of each batch; `save_final=False` writes no final SAEs.
    """
    if not saes:
        raise ReproError("train_saes needs at least one SAE: pass {block_name: TopKSAE(...)}")
    for block in saes:
        if not block or "/" in block or block.startswith("."):
            raise ReproError(f"block name {block!r} cannot be a folder name; use names like 'unet.mid_block.attentions.0'")
    out = Path(out_dir) if out_dir is not None else None
    final_dir = out if save_final else None
    out = Path(work_dir) if (work_dir is not None and out is not None) else out
    if out is None and (resume or cfg.checkpoint_every):
        raise ReproError("checkpoints and resume need an output folder: pass out_dir=, or set checkpoint_every=0")
    if out is None:
        return _train(saes, source, cfg, out, final_dir, resume, metadata, step_fn, batch_rows)
    with output_lock(Path(out_dir), out, shared=step_fn is not None or work_dir is not None):
        return _train(saes, source, cfg, out, final_dir, resume, metadata, step_fn, batch_rows)


def output_lock(out_dir: Path, work: Path, *, shared: bool = False) -> FolderLock:
    """Hold `out_dir` for one training: an exclusive lock on OUT/.lock, released when the run
    ends (or dies). The ranks of one distributed run (`shared`) share OUT/.lock and each holds
    its own work folder exclusively; a second run into the same folder gets one ReproError."""
    busy = (f"another training is writing to {out_dir} right now (it holds {out_dir / LOCK}): wait for it to end, "
            "or give this one another --out")
    locks = [(out_dir, LOCK, shared)]
    if Path(work) != Path(out_dir):
        locks.append((work, LOCK, False))
    return FolderLock(locks, busy)


def _train(saes, source, cfg: TrainConfig, out: Path | None, final_dir: Path | None, resume: bool,
           metadata: dict[str, Any] | None, step_fn, batch_rows: int | None) -> TrainResult:
    """`train_saes` once its output folder is held: `out` takes checkpoints and metrics,
    `final_dir` (or None) the final SAEs."""
    device = pick_device(cfg.device)
    cdt = resolve_compute_dtype(cfg.compute_dtype, device)
    impl = cfg.impl if cfg.impl != "auto" else auto_impl(device, max(sae.cfg.n_features for sae in saes.values()))
    for block, sae in saes.items():
        sae.to(device=device, dtype=torch.float32)
        sae.metadata["block"] = block
    lrs = {block: training_lr(cfg, sae) for block, sae in saes.items()}
    # a caller's own step_fn (repro.dist) runs as given; otherwise the step is replayed from a
    # CUDA graph wherever the impl and device allow it
    graphed = cfg.cuda_graph and step_fn is None and graph_capturable(impl, device)
    step_fn = step_fn or train_step
    opts = {block: make_optimizer(sae, lrs[block], cfg.adam_eps, cfg.adam_betas, capturable=graphed)
            for block, sae in saes.items()}
    step, tokens, skipped = 0, 0, {block: 0 for block in saes}
    metrics_path = out / METRICS_FILE if out else None

    ckpt = latest_checkpoint(out / CHECKPOINTS) if (out and resume) else None
    resumed: list[dict[str, Any]] = []
    if ckpt is not None:
        state = load_checkpoint(ckpt, saes, opts, device)
        changed = check_resume(ckpt, state, cfg, source)
        resumed = list(state.get("resumed", [])) + ([{"step": int(state["step"]), "changed": changed}] if changed else [])
        step, tokens, skipped = int(state["step"]), int(state["tokens"]), dict(state["skipped"])
        source.load_state_dict(state["source"])
        _set_rng_state(state["rng"])
        _truncate_metrics(metrics_path, step)
    else:
        if metrics_path is not None and metrics_path.exists():
            metrics_path.unlink()  # a fresh run starts a fresh log
        if cfg.init_b_pre:
            init_b_pre(saes, source, cfg.geometric_median_samples)

    if graphed:  # built after the checkpoint is loaded: a graph keeps the tensors it was captured with
        steps = {id(sae): GraphedStep(sae, opts[block], impl=impl, compute_dtype=cdt) for block, sae in saes.items()}
        step_fn = lambda sae, opt, x, **_: steps[id(sae)](x)  # noqa: E731
    last: dict[str, dict[str, float]] = {}
    acc = {block: torch.zeros(len(METRIC_NAMES), device=device) for block in saes}
    n_acc = {block: 0 for block in saes}
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, unit="step", desc="SAE")
    t_last, tokens_last = time.perf_counter(), tokens
    t_start, tokens_start = t_last, tokens
    batches = iter(source)
    side = torch.cuda.Stream(device=device) if (cfg.side_stream and device.type == "cuda") else None
    fetch = _Lookahead(batches, saes, device, side)
    pending = fetch() if step < cfg.steps else None
    try:
        while step < cfg.steps:
            if pending is None:
                bar.write(f"batch source ran out after {step} steps ({tokens} tokens per block)")
                break
            xs, finite = pending.xs, pending.finite()  # waits for this batch's check alone
            saving = out is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0
            source_state = _source_state(source) if saving else None  # before the next batch is drawn
            # the next batch and its check are queued before this step's kernels, so the wait
            # above never drains the GPU: it always has the previous step still to run
            pending = fetch() if step + 1 < cfg.steps else None
            for (block, sae), ok in zip(saes.items(), finite):
                if not ok:
                    if cfg.on_nonfinite == "stop":
                        raise ReproError(
                            f"batch {step} of block {block!r} holds NaN or inf values; fix the activations "
                            "or train with on_nonfinite='skip' to skip such batches"
                        )
                    skipped[block] += 1
                    continue
                with _on_stream(side):
                    res = step_fn(sae, opts[block], xs[block], impl=impl, compute_dtype=cdt)
                    acc[block] += torch.stack([getattr(res, name).detach().float() for name in METRIC_NAMES])  # no graph kept across steps
                n_acc[block] += 1
            step += 1
            tokens += batch_rows or next(iter(xs.values())).shape[0]
            bar.update(1)
            if side is not None and (step % cfg.log_every == 0 or step == cfg.steps
                                     or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                torch.cuda.current_stream(device).wait_stream(side)  # logs and checkpoints read the SAEs
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = (tokens - tokens_last) / max(now - t_last, 1e-9)
                t_last, tokens_last = now, tokens
                last = _log(saes, opts, acc, n_acc, skipped, step, tokens, rate, metrics_path)
                bar.set_postfix(_postfix(last, rate), refresh=False)
            if saving:
                _checkpoint(out, step, tokens, skipped, saes, opts, source_state, cfg, source, resumed)
    finally:
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # every stream, the SAE one included
        add_sae_training(tokens - tokens_start, len(saes), time.perf_counter() - t_start)

    if out is not None:
        if cfg.checkpoint_every and step % cfg.checkpoint_every != 0:
            _checkpoint(out, step, tokens, skipped, saes, opts, _source_state(source), cfg, source, resumed)
    if final_dir is not None:
        out = final_dir
        for block, sae in saes.items():
            if cfg.stats_batches:
                sae.feature_stats = feature_stats(sae, source, cfg.stats_batches, block=block)
            training = {"steps": step, "tokens": tokens, "skipped_nonfinite": skipped[block], "lr": lrs[block],
                        "config": cfg.to_dict(), **({"resumed": resumed} if resumed else {})}
            save_sae(sae, out / block, **(metadata or {}), training=training, data=_describe(source))
    return TrainResult(steps=step, tokens=tokens, skipped_nonfinite=skipped, last_metrics=last, out_dir=out)


@contextlib.contextmanager
def _on_stream(stream, batch: dict[str, torch.Tensor] | None = None):
    """Run the body on `stream` (None: as is). A `batch` made on the current stream is waited
    for, and its memory is marked as used by `stream` (the caching allocator must not hand it
    out again before the SAE stream is done with it)."""
    if stream is None:
        yield
        return
    if batch is not None:
        stream.wait_stream(torch.cuda.current_stream(stream.device))
        for t in batch.values():
            if t.is_cuda:
                t.record_stream(stream)
    with torch.cuda.stream(stream):
        yield


def _source_state(source) -> dict:
    """What a checkpoint keeps of the data side: the source's position and the global RNG."""
    return {"rng": _rng_state(), "source": copy.deepcopy(source.state_dict())}  # the source moves on


RESULT_FIELDS = ("lr", "adam_eps", "adam_betas", "impl", "compute_dtype")
"""TrainConfig fields that change the trained weights: a resume that changes one is refused."""

RECORDED_FIELDS = ("device", "on_nonfinite")
"""TrainConfig fields a resume may change (a run moved to another machine; skipping NaN batches
after a stop): allowed, and recorded in cfg.json's training record ("resumed"). Every other
field (steps: extending a run, log_every, checkpoint_every, progress, ...) changes no weight."""

DATA_IGNORED = ("store",)
"""Keys of a source's `describe()` a resume may change (the store folder may be moved)."""


def _describe(source) -> dict[str, Any]:
    return source.describe() if hasattr(source, "describe") else {"source": type(source).__name__}


def check_resume(ckpt: Path, state: dict[str, Any], cfg: TrainConfig, source) -> dict[str, list]:
    """Refuse (one ReproError naming the field, old and new value) a resume from checkpoint
    `ckpt` whose settings would change the result: a `RESULT_FIELDS` field or the data
    (the source's `describe()`: batch size, seed, step, half, store size...). Returns the
    `RECORDED_FIELDS` that changed, {field: [old, new]}."""
    from repro.schema import DICT, require

    require(state, {"config": DICT, "data": DICT}, f"checkpoint {ckpt / 'trainer.pt'}",
            f"it was written by an older version or damaged: delete {ckpt.parent} to start afresh, or use another --out")
    old, new = state["config"], cfg.to_dict()
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 - betas: tuple vs saved list
    for name in RESULT_FIELDS:
        if norm(old.get(name)) != norm(new[name]):
            raise ReproError(f"cannot resume {ckpt}: it was trained with {name}={old.get(name)!r}, this run asks for "
                             f"{name}={new[name]!r}, which changes the result; resume with {name}={old.get(name)!r}, "
                             "or train into another output folder")
    was, now = state["data"], _describe(source)
    for key in sorted(set(was) | set(now)):
        if key not in DATA_IGNORED and norm(was.get(key)) != norm(now.get(key)):
            raise ReproError(f"cannot resume {ckpt}: its data had {key}={was.get(key)!r}, this run's has "
                             f"{key}={now.get(key)!r}, which changes the result; resume with the same data settings, "
                             "or train into another output folder")
    return {name: [old.get(name), new[name]] for name in RECORDED_FIELDS if old.get(name) != new[name]}


def _checkpoint(out, step, tokens, skipped, saes, opts, source_state: dict, cfg, source, resumed) -> None:
    # the config and the data it trains on, for `check_resume`; `resumed`: settings changed on earlier resumes
    state = {"tokens": tokens, "skipped": skipped, **source_state, "config": cfg.to_dict(),
             "data": _describe(source), "resumed": resumed}
    save_checkpoint(out / CHECKPOINTS, step, saes, opts, state, keep=cfg.keep_checkpoints)


class _Pending:
    """A drawn batch on the training device and its non-finite check, queued, not yet read."""

    def __init__(self, xs: dict[str, torch.Tensor], flags: torch.Tensor, event):
        self.xs, self._flags, self._event = xs, flags, event

    def finite(self) -> list[bool]:
        """Per block, whether the batch is finite; waits only for the work queued before the check."""
        if self._event is not None:
            self._event.synchronize()
        return self._flags.tolist()


class _Lookahead:
    """`fetch()` -> the source's next batch as a `_Pending` (None when it runs out).

    On CUDA the per-block flags are copied into a pinned buffer and an event is recorded
    after the copy: reading them later waits for that batch's check, not for the training
    steps queued after it (the old loop's `.tolist()` right after the draw drained the GPU
    every step). One buffer is enough: a batch's flags are read before the next draw.
    """

    def __init__(self, batches, saes: dict[str, TopKSAE], device: torch.device, side):
        self.batches, self.saes, self.device, self.side = batches, saes, device, side
        self.host = torch.empty(len(saes), dtype=torch.bool, pin_memory=True) if device.type == "cuda" else None

    def __call__(self) -> _Pending | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        with _on_stream(self.side, batch):
            xs = {block: block_batch(batch, block, sae).to(self.device, non_blocking=True).float()
                  for block, sae in self.saes.items()}
            flags = torch.stack([torch.isfinite(x).all() for x in xs.values()])
            if self.host is None:
                return _Pending(xs, flags, None)
            self.host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))  # the stream the copy went on, on this device
        return _Pending(xs, self.host, event)


def _log(saes, opts, acc, n_acc, skipped, step, tokens, rate, path) -> dict[str, dict[str, float]]:
    """Average the interval's metrics per block, write them as JSON lines, reset the accumulators."""
    rows = {}
    for block, sae in saes.items():
        means = (acc[block] / max(n_acc[block], 1)).tolist() if n_acc[block] else [float("nan")] * len(METRIC_NAMES)
        row = {"block": block, "step": step, "tokens": tokens, **dict(zip(METRIC_NAMES, means))}
        row.update(
            dead_frac=sae.dead_mask().float().mean().item(),
            lr=opts[block].param_groups[0]["lr"],
            skipped_nonfinite=skipped[block],
            tokens_per_s=rate,
        )
        rows[block] = row
        acc[block].zero_()
        n_acc[block] = 0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.writelines(metrics_line(row) for row in rows.values())
    return rows


def metrics_line(row: dict[str, Any]) -> str:
    """One metrics.jsonl line: strict JSON. A non-finite metric (a NaN loss, an interval whose
    batches were all skipped) is information, not an error: it is written as null and its
    name listed under "nonfinite" (absent when all are finite)."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    clean = {k: (None if k in bad else v) for k, v in row.items()}
    if bad:
        clean["nonfinite"] = bad
    return json.dumps(clean, allow_nan=False) + "\n"


def _postfix(rows: dict[str, dict[str, float]], rate: float) -> dict[str, str]:
    """Progress-bar fields, averaged over blocks."""
    mean = lambda key: sum(r[key] for r in rows.values()) / len(rows)  # noqa: E731
    return {
        "tok/s": f"{rate:,.0f}",
        "loss": f"{mean('loss'):.4f}",
        "EV": f"{mean('ev'):.3f}",
        "L0": f"{mean('l0'):.1f}",
        "dead": f"{mean('dead_frac'):.3f}",
    }


__all__ = ["TrainResult", "block_batch", "check_resume", "init_b_pre", "metrics_line", "output_lock", "train_saes"]
