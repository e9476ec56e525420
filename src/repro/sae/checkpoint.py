"""Training checkpoints: written as a temporary folder and renamed, so none is ever half-visible.

    <out_dir>/checkpoints/step_000001000/
        <block>/sae.safetensors, <block>/cfg.json   weights + dead-latent counters (our SAE layout)
        trainer.pt                                 Adam states, step, tokens, skip counts,
                                                   RNG states, the source's state_dict()

`trainer.pt` is read back with `torch.load(weights_only=True)`. Temporary folders left
by a killed run (`.step_N.tmp-*`, `.step_N.old-*`: `repro.io.atomic_dir`) are ignored by `latest_checkpoint` and removed at the next save.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from repro.errors import ReproError
from repro.io import atomic_dir, atomic_path, read_checked
from repro.sae.io import PARAM_NAMES, load_sae, nonfinite_report, save_sae
from repro.schema import COUNT, DICT, LIST, require
from repro.sae.model import TopKSAE

PREFIX = "step_"
TRAINER_STATE = "trainer.pt"
TRAINER_FIELDS = {"step": COUNT, "tokens": COUNT, "skipped": DICT, "optimizers": DICT, "rng": DICT, "source": DICT}
"""What trainer.pt must hold (`train_saes` adds its config and data, checked on resume)."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:09d}"


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    saes: dict[str, TopKSAE],
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `root` atomically; keep only the `keep` newest. Returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob(".tmp-*"), *root.glob(f".{PREFIX}*.tmp-*"), *root.glob(f".{PREFIX}*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed writer
    final = root / checkpoint_name(step)
    with atomic_dir(final) as tmp:  # the same step written again (a resumed run) is swapped in, never a gap
        for block, sae in saes.items():
            save_sae(sae, tmp / block)
        payload = {**state, "step": step, "optimizers": {b: opt.state_dict() for b, opt in optimizers.items()}}
        moments = {f"{b} {key}": t for b, opt in optimizers.items() for st in opt.state.values() for key, t in st.items()}
        if bad := nonfinite_report(moments):  # saving it would resume into NaN
            raise ReproError(f"the Adam states hold non-finite values at step {step} ({bad}): checkpoint not written; "
                             "the training diverged: lower the lr, or train with on_nonfinite='stop'")
        with atomic_path(tmp / TRAINER_STATE) as path, open(path, "wb") as fh:
            torch.save(payload, fh)  # through a file object, a full disk is an OSError with its errno
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: str | os.PathLike,
    saes: dict[str, TopKSAE],
    optimizers: dict[str, torch.optim.Optimizer],
    device: torch.device,
) -> dict[str, Any]:
    """Restore weights, counters and Adam states in place from checkpoint `path`; return its trainer state."""
    path = Path(path)
    fix = f"delete the checkpoint folder {path} and run the same command again (it resumes from the one before)"
    try:
        state = read_checked(path / TRAINER_STATE,
                             lambda: torch.load(path / TRAINER_STATE, map_location=device, weights_only=True), fix)
    except pickle.UnpicklingError:
        raise ReproError(f"{path / TRAINER_STATE} holds more than tensors and is refused: {fix}") from None
    require(state, TRAINER_FIELDS, str(path / TRAINER_STATE), fix)
    for block, opt in state["optimizers"].items():
        require(opt, {"state": DICT, "param_groups": LIST}, f"the Adam state of {block!r} in {path / TRAINER_STATE}", fix)
        moments = {f"{key} of parameter {i}": t for i, st in opt["state"].items() if isinstance(st, dict)
                   for key, t in st.items()}
        if bad := nonfinite_report(moments):
            raise ReproError(f"checkpoint {path} holds non-finite Adam states for block {block!r} ({bad}): {fix}")
    for block, sae in saes.items():
        if not (path / block).is_dir() or block not in state["optimizers"]:
            raise ReproError(
                f"checkpoint {path} has no block {block!r} (it holds {sorted(state['optimizers'])}); "
                "resume with the same blocks or start a new output folder"
            )
        saved = load_sae(path / block, device=device)
        if saved.cfg != sae.cfg:
            diff = [f"{k}={v!r} (this run: {getattr(sae.cfg, k)!r})" for k, v in saved.cfg.to_dict().items()
                    if getattr(sae.cfg, k) != v]
            raise ReproError(f"cannot resume {path}: its SAE for block {block!r} has {', '.join(diff)}, which changes "
                             "the result; resume with the same SAE settings, or train into another output folder")
        with torch.no_grad():
            for name in PARAM_NAMES:
                getattr(sae, name).copy_(getattr(saved, name))
            sae.tokens_since_fired.copy_(saved.tokens_since_fired)
        optimizers[block].load_state_dict(state["optimizers"][block])
    return state

