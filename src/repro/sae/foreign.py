"""Reading SAEs saved by SAELens or sparsify, and `hf:OWNER/NAME/BLOCK` from the local Hugging Face cache.

`load_foreign` is what `io.load_sae` asks first: it returns None for our own layout and the
original release's (read by `io`), unless the folder also holds the files `export.py` writes
beside a layout (then those restore what the layout dropped). The maths of each layout
against ours is in `export.py`; here each is mapped back onto our parameters:

    SAELens:  W_enc = W_enc'^T, b_lat = b_enc, W_dec = W_dec'^T, b_pre = b_dec
              apply_b_dec_to_input=False  -> b_lat = b_enc + W_enc b_dec  (same pre-activations)
              rescale_acts_by_decoder_norm -> the decoder norms folded into the encoder (SAELens'
                                              own fold_W_dec_norm: same codes times norm, same x_hat)
    sparsify: W_enc = encoder.weight, b_lat = encoder.bias, W_dec = W_dec'^T, b_pre = b_dec
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from repro.devices import pick_device
from repro.errors import ReproError, choices_hint
from repro.sae.config import SAEConfig
from repro.sae.export import BESIDE_CONFIG, BESIDE_STATE, FOREIGN_CONFIG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS
from repro.sae.io import ORIG_CONFIG, ORIG_WEIGHTS, _build, _damaged, _resolve_folder, load_feature_stats
from repro.sae.model import TopKSAE

HF_PREFIX = "hf:"


def detect_format(folder: Path) -> str | None:
    """'saelens', 'sparsify', 'original' or 'repro' by the files in `folder`; None if it holds no SAE."""
    has = lambda name: (folder / name).is_file()  # noqa: E731
    if has(SAELENS_WEIGHTS):
        return "saelens"
    if has(FOREIGN_CONFIG):
        raw = _json(folder / FOREIGN_CONFIG)
        if "d_in" in raw:  # ours says d_model; SAELens' cfg has d_sae, sparsify's num_latents
            return "saelens" if "d_sae" in raw else "sparsify"
        return "repro"
    if has(ORIG_CONFIG) or has(ORIG_WEIGHTS):
        return "original"
    if has(SPARSIFY_WEIGHTS):
        return "repro"
    return None


def load_foreign(spec: str | os.PathLike, device: str | torch.device = "cpu") -> TopKSAE | None:
    """The SAE at `spec` if it is `hf:...`, a SAELens or sparsify folder, or an exported original one; else None."""
    if isinstance(spec, str) and spec.startswith(HF_PREFIX):
        from repro.sae.io import load_sae

        return load_sae(hf_folder(spec), device=device)
    folder = Path(spec)
    if not folder.is_dir():
        return None  # io says what is wrong
    folder = _resolve_folder(folder)
    fmt = detect_format(folder)
    if fmt in (None, "repro") or (fmt == "original" and not (folder / BESIDE_CONFIG).is_file()):
        return None
    dev = pick_device(device)
    if fmt == "original":
        from repro.sae.io import _load_original

        sae = _load_original(folder, dev)
    else:
        sae = (_load_saelens if fmt == "saelens" else _load_sparsify)(folder, dev)
        sae.metadata = {"format": fmt, "converted_from": str(folder)}
    _restore_beside(sae, folder, dev)
    sae.folder = folder
    return sae


def _json(path: Path) -> dict:
    if not path.is_file():
        raise ReproError(f"{path} is missing: the SAE folder is incomplete; copy it again")
    raw = _damaged(path, lambda: json.loads(path.read_text()))
    if not isinstance(raw, dict):
        raise ReproError(f"{path} holds {type(raw).__name__}, not a config object: copy the SAE folder again")
    return raw


def _weights(path: Path, dev: torch.device) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ReproError(f"{path} is missing: the SAE folder is incomplete; copy it again")
    return _damaged(path, lambda: load_file(str(path), device=str(dev)))


def _need(raw: dict, path: Path, *keys: str):
    missing = [key for key in keys if key not in raw]
    if missing:
        raise ReproError(f"{path} lacks {', '.join(missing)}: it is not a complete config; copy the SAE folder again")
    return [raw[key] for key in keys]


def _config(d: int, n: int, k: int, path: Path) -> SAEConfig:
    # The training settings these layouts lack take our defaults (k_aux capped at n), unless
    # repro_cfg.json beside restores them.
    try:
        return SAEConfig(d_model=int(d), n_features=int(n), k=int(k), k_aux=min(SAEConfig.k_aux, int(n)))
    except (TypeError, ValueError) as exc:
        raise ReproError(f"{path} holds a value of the wrong type ({exc}); copy the SAE folder again") from None


def _load_saelens(folder: Path, dev: torch.device) -> TopKSAE:
    path = folder / FOREIGN_CONFIG
    raw = _json(path)
    arch = raw.get("architecture", "standard")
    if arch != "topk":
        raise ReproError(f"{path} is a SAELens {arch!r} SAE; repro reads SAELens 'topk' SAEs only")
    for key, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if raw.get(key, ok) != ok:
            raise ReproError(f"{path} sets {key}={raw[key]!r}, which repro's TopK SAE cannot express; "
                             f"fold it into the weights in SAELens first or save with {key}='none'")
    d, n, k = _need(raw, path, "d_in", "d_sae", "k")
    cfg = _config(d, n, k, path)
    t = _weights(folder / SAELENS_WEIGHTS, dev)
    _need(t, folder / SAELENS_WEIGHTS, "W_enc", "b_enc", "W_dec", "b_dec")
    W_enc, b_enc, W_dec, b_dec = (t[name].float() for name in ("W_enc", "b_enc", "W_dec", "b_dec"))  # [d,n] [n] [n,d] [d]
    _shape(W_enc, (cfg.d_model, cfg.n_features), "W_enc", folder)
    if raw.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=-1).clamp_min(1e-8)  # [n]; SAELens' fold_W_dec_norm
        W_dec, W_enc, b_enc = W_dec / norms[:, None], W_enc * norms, b_enc * norms
    if not raw.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc  # its encoder sees x, ours x - b_pre
    dtype = t["W_enc"].dtype
    tensors = {"W_enc": W_enc.T, "b_lat": b_enc, "W_dec": W_dec.T, "b_pre": b_dec}
    sae = _build(cfg, {key: v.to(dtype) for key, v in tensors.items()}, None, folder, dev)
    return sae


def _load_sparsify(folder: Path, dev: torch.device) -> TopKSAE:
    path = folder / FOREIGN_CONFIG
    raw = _json(path)
    for key, bad in (("activation", "groupmax"), ("skip_connection", True), ("transcode", True)):
        if raw.get(key) == bad:
            raise ReproError(f"{path} is a sparsify coder with {key}={bad!r}; repro reads plain TopK SAEs only")
    d, k = _need(raw, path, "d_in", "k")
    n = raw.get("num_latents") or int(d) * int(raw.get("expansion_factor", 32))
    cfg = _config(d, n, k, path)
    t = _weights(folder / SPARSIFY_WEIGHTS, dev)
    _need(t, folder / SPARSIFY_WEIGHTS, "encoder.weight", "encoder.bias", "W_dec", "b_dec")
    tensors = {"W_enc": t["encoder.weight"], "b_lat": t["encoder.bias"], "W_dec": t["W_dec"].T, "b_pre": t["b_dec"]}
    return _build(cfg, tensors, None, folder, dev)


def _shape(x: torch.Tensor, shape: tuple, name: str, folder: Path) -> None:
    if tuple(x.shape) != shape:
        raise ReproError(f"SAE tensor {name} in {folder} has shape {tuple(x.shape)} but its config says {shape}; "
                         "the folder's files do not belong together")


def _restore_beside(sae: TopKSAE, folder: Path, dev: torch.device) -> None:
    """Put back what `export.py` wrote beside the layout: our config, metadata, counters, statistics."""
    path = folder / BESIDE_CONFIG
    if path.is_file():
        raw = _json(path)
        cfg = SAEConfig.from_dict(raw.get("sae") or {})
        if (cfg.d_model, cfg.n_features, cfg.k) != (sae.cfg.d_model, sae.cfg.n_features, sae.cfg.k):
            raise ReproError(f"{path} describes another SAE (d, n, k = {cfg.d_model}, {cfg.n_features}, {cfg.k}) "
                             "than the weights beside it; delete it or export the SAE again")
        sae.cfg = cfg
        sae.metadata = {**(raw.get("metadata") or {}), "format": raw.get("format"), "converted_from": str(folder)}
        if raw.get("trained"):
            sae.metadata["provenance"] = raw["trained"]
    state = folder / BESIDE_STATE
    if state.is_file():
        since = _damaged(state, lambda: load_file(str(state), device=str(dev))).get("tokens_since_fired")
        if since is not None and tuple(since.shape) == (sae.cfg.n_features,):
            sae.tokens_since_fired = since.to(torch.int64).contiguous()
    stats = load_feature_stats(folder, dev)
    if stats is not None:
        sae.feature_stats = stats


# ---------------------------------------------------------------- hf:OWNER/NAME/BLOCK

def hf_folder(spec: str) -> Path:
    """`hf:OWNER/NAME/BLOCK` -> that block's folder in the local Hugging Face cache (never the network)."""
    parts = spec[len(HF_PREFIX):].strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise ReproError(f"{spec!r} is not hf:OWNER/NAME/BLOCK: name the repository and the block's folder, "
                         "e.g. hf:someone/sdxl-turbo-saes/down.2.1")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        root = Path(snapshot_download(repo, cache_dir=hf_cache_dir(), local_files_only=True))
    except LocalEntryNotFoundError:
        raise ReproError(f"{repo} is not in the local Hugging Face cache ({hf_cache_dir()}): on a machine with "
                         f"internet run `hf download {repo}`, or set HF_HUB_CACHE to the cache that holds it") from None
    folder = root / sub
    if not folder.is_dir():
        blocks = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise ReproError(f"{repo} has no folder {sub!r} in the cache: use {choices_hint(blocks)}")
    return folder


def hf_cache_dir() -> Path:
    """The hub cache as huggingface_hub finds it, read now (tests and users may set it after import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                     "huggingface")
    return Path(home) / "hub"


__all__ = ["detect_format", "hf_cache_dir", "hf_folder", "load_foreign"]
