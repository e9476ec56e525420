"""SAE files: our folder layout, and the original project's released layout (read-only).

Our layout (one folder per SAE / block):
    sae.safetensors            W_enc [n, d], b_lat [n], W_dec [d, n], b_pre [d] (saved dtype),
                               tokens_since_fired [n] int64
    cfg.json                   SAEConfig fields + "architecture": "topk" + block, model,
                               training data, ... + "provenance" (version, commit, time)
    feature_stats.safetensors  optional: mean, std, frequency, count, n_tokens

The original release (`unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001/final`):
    config.json     {"n_dirs_local", "d_model", "k", "auxk", "dead_steps_threshold"}
    state_dict.pth  {"state_dict": {"encoder.weight" [n, d], "decoder.weight" [d, n],
                     "pre_bias" [d], "latent_bias" [n], "stats_last_nonzero" [n] int64}}
    mean.pt, std.pt [n] each (optional here)
It is read with `torch.load(weights_only=True)` only: no pickled code is ever run.
`load_sae` tells the layouts apart by their files and accepts a parent folder that holds
a single `final` subfolder.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from repro.devices import dtype_name, pick_device
from repro.errors import ReproError, choices_hint
from repro.io import atomic_path, provenance, read_checked, write_json_atomic
from repro.sae.config import ARCHITECTURE, SAEConfig
from repro.schema import COUNT, NONNEG_NUMBER, NUMBER, POSITIVE, TEXT, optional, require
from repro.sae.model import TopKSAE
from repro.sae.stats import FeatureStats

SAE_WEIGHTS = "sae.safetensors"
SAE_CONFIG = "cfg.json"
FEATURE_STATS = "feature_stats.safetensors"
ORIG_CONFIG = "config.json"
ORIG_WEIGHTS = "state_dict.pth"
ORIG_MEAN = "mean.pt"
ORIG_STD = "std.pt"
ARCHITECTURES = {ARCHITECTURE: TopKSAE}
PARAM_NAMES = ("W_enc", "b_lat", "W_dec", "b_pre")


def save_sae(sae: TopKSAE, folder: str | os.PathLike, *, dtype: torch.dtype | None = None, **metadata: Any) -> Path:
    """Write `sae` (weights in `dtype`, default their own) and its config + metadata into `folder`.

    `metadata` (block=, model=, data=, ...) goes into cfg.json beside `sae.metadata`.
    Each file is written atomically; cfg.json last, so a folder with cfg.json is complete.
    Per-feature statistics are written when `sae.feature_stats` is set.
    """
    folder = Path(folder)
    tensors = {name: getattr(sae, name).detach().to(dtype or sae.dtype).contiguous().cpu() for name in PARAM_NAMES}
    if bad := nonfinite_report(tensors):
        raise ReproError(f"the SAE to be saved in {folder} has non-finite weights ({bad}): nothing was written; "
                         "the training diverged (lower the lr) or its data holds NaN (train with on_nonfinite='stop')")
    folder.mkdir(parents=True, exist_ok=True)
    tensors["tokens_since_fired"] = sae.tokens_since_fired.detach().cpu().contiguous()
    with atomic_path(folder / SAE_WEIGHTS) as tmp:
        # One metadata key: safetensors writes several in hash order, so identical SAEs would
        # get different bytes (and checksums) in different processes. cfg.json names the architecture.
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    if sae.feature_stats is not None:
        save_feature_stats(folder, sae.feature_stats)
    meta = {key: value for key, value in sae.metadata.items() if key != "provenance"}
    meta.update(metadata)
    cfg = {
        **meta,
        **sae.cfg.to_dict(),
        "architecture": ARCHITECTURE,
        "dtype": dtype_name(tensors["W_enc"].dtype),
        "provenance": provenance(),
    }
    write_json_atomic(folder / SAE_CONFIG, cfg)
    return folder


def nonfinite_report(tensors: dict[str, torch.Tensor]) -> str:
    """"W_enc: 3 of 4096 values" for each floating tensor holding NaN or inf ("" if none)."""
    parts = []
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n:
                parts.append(f"{name}: {n} of {t.numel()} values")
    return ", ".join(parts)


CFG_FIELDS = {
    "d_model": POSITIVE, "n_features": POSITIVE, "k": POSITIVE, "k_aux": COUNT, "auxk_coef": NONNEG_NUMBER,
    "dead_tokens_threshold": COUNT, "fire_threshold": NUMBER, "architecture": TEXT,
}
"""What cfg.json must hold (save_sae writes all of it): no field has a default on load."""

ORIG_FIELDS = {"d_model": POSITIVE, "n_dirs_local": POSITIVE, "k": POSITIVE}
ORIG_OPTIONAL = {"auxk": optional(COUNT), "dead_steps_threshold": COUNT}
"""What the original release's config.json must hold, and may hold (its code's defaults apply)."""


def save_feature_stats(folder: str | os.PathLike, stats: FeatureStats) -> Path:
    """Write `stats` beside an SAE (atomically); the SAE's weights and cfg.json are not touched."""
    path = Path(folder) / FEATURE_STATS
    with atomic_path(path) as tmp:
        save_file(stats.to_tensors(), str(tmp))
    return path


def load_feature_stats(folder: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureStats | None:
    """The statistics saved beside an SAE by `save_feature_stats`, or None."""
    path = Path(folder) / FEATURE_STATS
    if not path.is_file():
        return None
    return FeatureStats.from_tensors(_damaged(path, lambda: load_file(str(path), device=str(device))))


def load_sae(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> TopKSAE:
    """Load an SAE folder in our layout or the original release's; the dtype comes from the weights.

    The result has `.metadata` (cfg.json's other keys) and `.feature_stats` (or None).
    `folder` may also be a SAELens or sparsify folder, or `hf:OWNER/NAME/BLOCK` (local HF cache).
    """
    if (sae := _load_other_layout(folder, device)) is not None:
        return sae
    folder = _resolve_folder(Path(folder))
    dev = pick_device(device)
    has = lambda name: (folder / name).is_file()  # noqa: E731
    if has(SAE_WEIGHTS) or has(SAE_CONFIG):
        missing = [name for name in (SAE_WEIGHTS, SAE_CONFIG) if not has(name)]
        if missing:
            raise ReproError(f"SAE folder {folder} lacks {missing[0]}: it is half of our layout; re-save or re-train it")
        sae = _load_ours(folder, dev)
        sae.folder = folder
        return sae
    if has(ORIG_CONFIG) or has(ORIG_WEIGHTS):
        missing = [name for name in (ORIG_CONFIG, ORIG_WEIGHTS) if not has(name)]
        if missing:
            raise ReproError(
                f"SAE folder {folder} lacks {missing[0]} of the original release's layout; download the folder again"
            )
        sae = _load_original(folder, dev)
        sae.folder = folder
        return sae
    raise ReproError(
        f"no SAE in {folder}: it holds neither {SAE_WEIGHTS} + {SAE_CONFIG} (this project) nor "
        f"{ORIG_CONFIG} + {ORIG_WEIGHTS} (original release); point at the SAE's own folder"
    )


def _load_other_layout(folder: str | os.PathLike, device: str | torch.device) -> TopKSAE | None:
    """SAELens / sparsify folders, `hf:` names and exported original folders (`repro.sae.foreign`); else None."""
    from repro.sae.foreign import load_foreign

    return load_foreign(folder, device)


def _resolve_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise ReproError(f"SAE folder {folder} does not exist; check the path")
    known = (SAE_WEIGHTS, SAE_CONFIG, ORIG_CONFIG, ORIG_WEIGHTS)
    if not any((folder / name).is_file() for name in known) and (folder / "final").is_dir():
        return folder / "final"  # the original release nests each SAE in <name>/final
    return folder


def _damaged(path: Path, read):
    return read_checked(path, read, "re-save or re-train the SAE, or copy the file again")


def _config(folder: Path, name: str, build):
    """Read the JSON config `name` of `folder` and `build(raw)` it; bad values become one ReproError."""
    raw = _damaged(folder / name, lambda: json.loads((folder / name).read_text()))
    if not isinstance(raw, dict):
        raise ReproError(f"{folder / name} holds {type(raw).__name__}, not a config object: copy the SAE folder again")
    ours = name == SAE_CONFIG
    require(raw, CFG_FIELDS if ours else ORIG_FIELDS, str(folder / name), "re-save the SAE, or copy its folder again",
            maybe=None if ours else ORIG_OPTIONAL)
    try:
        return raw, build(raw)
    except KeyError as exc:
        raise ReproError(f"{folder / name} lacks the key {exc.args[0]!r}; copy the SAE folder again") from None
    except (TypeError, ValueError) as exc:
        raise ReproError(f"{folder / name} holds a value of the wrong type ({exc}); copy the SAE folder again") from None


def _load_ours(folder: Path, dev: torch.device) -> TopKSAE:
    raw, cfg = _config(folder, SAE_CONFIG, SAEConfig.from_dict)
    arch = raw["architecture"]
    if arch not in ARCHITECTURES:
        raise ReproError(f"{folder / SAE_CONFIG} names the architecture {arch!r}; this version reads {choices_hint(ARCHITECTURES)}")
    tensors = _damaged(folder / SAE_WEIGHTS, lambda: load_file(str(folder / SAE_WEIGHTS), device=str(dev)))
    missing = [name for name in PARAM_NAMES if name not in tensors]
    if missing:
        raise ReproError(f"{folder / SAE_WEIGHTS} lacks tensor(s) {', '.join(missing)}; re-save the SAE")
    sae = _build(cfg, tensors, tensors.get("tokens_since_fired"), folder, dev)
    known = set(cfg.to_dict()) | {"architecture", "dtype"}
    sae.metadata = {key: value for key, value in raw.items() if key not in known}
    sae.feature_stats = load_feature_stats(folder, dev)
    return sae


def _load_original(folder: Path, dev: torch.device) -> TopKSAE:
    name = folder.parent.name if folder.name == "final" else folder.name
    match = re.search(r"_bs(\d+)", name)
    batch_size = int(match.group(1)) if match else 4096  # step counters -> tokens
    raw, cfg = _config(folder, ORIG_CONFIG, lambda raw: SAEConfig(
        d_model=int(raw["d_model"]),
        n_features=int(raw["n_dirs_local"]),
        k=int(raw["k"]),
        k_aux=int(raw.get("auxk") or 0),
        dead_tokens_threshold=int(raw.get("dead_steps_threshold", 2441)) * batch_size,
    ))
    try:
        obj = _damaged(folder / ORIG_WEIGHTS, lambda: torch.load(folder / ORIG_WEIGHTS, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as exc:
        raise ReproError(
            f"{folder / ORIG_WEIGHTS} holds more than tensors and is refused (only weights-only loading is safe); "
            "use the file from the original release"
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    keys = {"W_enc": "encoder.weight", "b_lat": "latent_bias", "W_dec": "decoder.weight", "b_pre": "pre_bias"}
    if state is None or any(not torch.is_tensor(state.get(key)) for key in keys.values()):
        raise ReproError(
            f"{folder / ORIG_WEIGHTS} does not hold the original SAE's tensors ({', '.join(keys.values())})"
        )
    tensors = {ours: state[theirs].to(dev) for ours, theirs in keys.items()}
    steps = state.get("stats_last_nonzero")
    sae = _build(cfg, tensors, None if steps is None else steps.to(dev) * batch_size, folder, dev)
    sae.metadata = {"block": _block_of(name), "format": "original", "converted_from": str(folder),
                    "batch_size": batch_size}
    if (folder / ORIG_MEAN).is_file() and (folder / ORIG_STD).is_file():
        mean, std = (_per_feature(folder / f, cfg.n_features, dev) for f in (ORIG_MEAN, ORIG_STD))
        sae.feature_stats = FeatureStats(mean=mean, std=std)
    return sae


def _block_of(name: str) -> str | None:
    """The block of a released SAE's folder name (`unet.down_blocks.2.attentions.1_k10_...`), as a short name."""
    from repro.blocks import short_name

    try:
        return short_name(name.split("_k")[0]) if "_k" in name else None
    except ReproError:
        return name.split("_k")[0]  # not a UNet block name: kept as written


def _per_feature(path: Path, n_features: int, dev: torch.device) -> torch.Tensor:
    """A released mean.pt / std.pt: one float per feature, else one ReproError."""
    try:
        value = _damaged(path, lambda: torch.load(path, map_location=dev, weights_only=True))
    except pickle.UnpicklingError:
        raise ReproError(f"{path} holds more than a tensor and is refused; use the file from the original release") from None
    if not (torch.is_tensor(value) and value.is_floating_point() and tuple(value.shape) == (n_features,)):
        got = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
        raise ReproError(f"{path} holds {got}, not {n_features} floats (one per feature of this SAE): "
                         "use the file from the same release folder, or delete it")
    return value


def _build(cfg: SAEConfig, tensors: dict, since: torch.Tensor | None, folder: Path, dev: torch.device) -> TopKSAE:
    expected = {
        "W_enc": (cfg.n_features, cfg.d_model),
        "b_lat": (cfg.n_features,),
        "W_dec": (cfg.d_model, cfg.n_features),
        "b_pre": (cfg.d_model,),
    }
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ReproError(
                f"SAE tensor {name} in {folder} has shape {tuple(tensors[name].shape)} but its config says {shape}; "
                "the folder's files do not belong together"
            )
    if bad := nonfinite_report({name: tensors[name] for name in PARAM_NAMES}):
        raise ReproError(f"the SAE in {folder} has non-finite weights ({bad}) and is refused: "
                         "re-train it, or load an earlier checkpoint of its run")
    dtype = tensors["W_enc"].dtype
    sae = TopKSAE(cfg, dtype=dtype)
    with torch.no_grad():
        for name in PARAM_NAMES:
            getattr(sae, name).data = tensors[name].to(dtype).contiguous()
        if since is not None:
            sae.tokens_since_fired = since.to(torch.int64).contiguous()
    return sae.to(dev)
