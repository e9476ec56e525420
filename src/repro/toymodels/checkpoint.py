"""The training state of `repro toy train`, saved as at most 8 safetensors files of at most 16 MiB.

A stage can run as a series of chunks (one per GPU lease of ~10 minutes) where nothing but
this checkpoint carries over, so it holds everything the next chunk needs: the weights of
the finished stages (frozen, fp16: what ships), the trained modules' fp32 weights, the AdamW
moments and step counts, the batch generator's state, the stage and step, the metric
records. Resuming from it continues exactly (on the CPU bitwise, tests/test_toymodels.py).

Layout: `<folder>/state-<i>-of-<n>.safetensors`; tensors are packed greedily by name;
the JSON state (`{"stage", "step", "records", ...}`) is the first file's metadata.
A checkpoint is written beside its target and renamed into place, so a chunk killed while
saving leaves the previous one whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from repro.errors import ReproError
from repro.io import atomic_dir

MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
_HEADER_ALLOWANCE = 512 * 2**10  # safetensors header (names, offsets, the JSON state) per file
STATE_KEY = "repro_toy_state"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def plan_shards(tensors: dict[str, torch.Tensor], max_files: int = MAX_FILES,
                max_bytes: int = MAX_FILE_BYTES) -> list[list[str]]:
    """Names per file, packed greedily in name order; one clear error when they do not fit."""
    budget = max_bytes - _HEADER_ALLOWANCE
    shards: list[list[str]] = [[]]
    used = 0
    for name in sorted(tensors):
        size = _nbytes(tensors[name])
        if size > budget:
            raise ReproError(f"checkpoint tensor {name} has {size / 2**20:.1f} MiB, over the {budget / 2**20:.1f} MiB "
                             "a checkpoint file may hold: use smaller networks")
        if used + size > budget:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    if len(shards) > max_files:
        total = sum(map(_nbytes, tensors.values())) / 2**20
        raise ReproError(f"the training state ({total:.0f} MiB) needs {len(shards)} files of at most "
                         f"{max_bytes / 2**20:.0f} MiB, over the {max_files} allowed: use smaller networks")
    return shards


def save_checkpoint(folder: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write `tensors` (any device/dtype, stored as they are) and the JSON-able `state` atomically."""
    folder = Path(folder)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    shards = plan_shards(cpu)
    with atomic_dir(folder) as tmp:
        for i, names in enumerate(shards):
            meta = {STATE_KEY: json.dumps(state, sort_keys=True)} if i == 0 else {}
            save_file({k: cpu[k] for k in names}, str(tmp / f"state-{i}-of-{len(shards)}.safetensors"), metadata=meta)
    return folder


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    return sorted(Path(folder).glob("state-*-of-*.safetensors"), key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors on the CPU, state) of a checkpoint written by `save_checkpoint`."""
    files = checkpoint_files(folder)
    if not files:
        raise ReproError(f"no training checkpoint in {folder}: start a run without --resume, or point --checkpoint at one")
    expected = int(files[0].name.split("-of-")[1].split(".")[0])
    if len(files) != expected:
        raise ReproError(f"checkpoint {folder} has {len(files)} of its {expected} files: copy all of them")
    tensors: dict[str, torch.Tensor] = {}
    state = None
    for path in files:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                if STATE_KEY in meta:
                    state = json.loads(meta[STATE_KEY])
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
        except Exception as exc:  # truncated or foreign file
            raise ReproError(f"cannot read checkpoint file {path}: {exc}; it is damaged, start the stage again") from exc
    if state is None:
        raise ReproError(f"checkpoint {folder} has no training state: it was not written by repro toy train")
    return tensors, state


def module_tensors(prefix: str, module: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """`prefix.name` -> parameter or buffer (cast to `dtype` if given)."""
    return {f"{prefix}.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
            for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `prefix.*` tensors into `module` (keeping the module's dtype and device)."""
    own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    missing = set(module.state_dict()) - set(own)
    if missing:
        raise ReproError(f"checkpoint lacks {len(missing)} tensors of {prefix} (e.g. {sorted(missing)[0]}): "
                         "it was written for other network sizes")
    with torch.no_grad():
        for k, v in module.state_dict().items():
            v.copy_(own[k])


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as `opt.<index>.<field>` tensors (exp_avg, exp_avg_sq, step)."""
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for field, value in state.items():
            out[f"opt.{i:05d}.{field}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore `optimizer_tensors` into an optimiser built over the same parameters in the same order."""
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = value
    if state and max(state) >= len(sd["param_groups"][0]["params"]):
        raise ReproError("checkpoint's optimiser state has more parameters than the model: other network sizes")
    sd["state"] = state
    opt.load_state_dict(sd)
    params = [p for group in opt.param_groups for p in group["params"]]
    for p in params:  # moments take their parameter's memory layout (channels_last convs), as fused AdamW needs
        for field, value in opt.state.get(p, {}).items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                opt.state[p][field] = torch.empty_like(p).copy_(value)
