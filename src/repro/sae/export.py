"""Our TopK SAEs written in the layouts other tools read: SAELens, EleutherAI's sparsify, the original release.

Ours:  z = ReLU(TopK_k(W_enc (x - b_pre) + b_lat)),  x_hat = W_dec z + b_pre
       W_enc [n, d], b_lat [n], W_dec [d, n], b_pre [d].

SAELens 'topk' (`cfg.json` + `sae_weights.safetensors`, sae-lens 6.x):
    W_enc [d, n] = W_enc^T, b_enc [n] = b_lat, W_dec [n, d] = W_dec^T, b_dec [d] = b_pre.
    `apply_b_dec_to_input` subtracts b_dec before encoding; its TopK takes the k largest
    pre-activations, then ReLU: our order. `rescale_acts_by_decoder_norm` off (our decoder
    columns are unit norm), `normalize_activations` none.
sparsify (`cfg.json` with d_in + `sae.safetensors`, one folder per hookpoint):
    encoder.weight [n, d] = W_enc, encoder.bias [n] = b_lat, W_dec [n, d] = W_dec^T, b_dec [d] = b_pre.
    It subtracts b_dec, applies ReLU, *then* takes the top k (unsorted): the nonzero codes are
    ours exactly; only where fewer than k pre-activations are positive does it return other
    indices, all with value 0.
original (`<unet block>_k.._hidden.._auxk.._bs.._lr../final/`: config.json + state_dict.pth
    + mean.pt/std.pt): the release's names; it counts dead-latent steps of `bs` tokens.

What a layout cannot hold (AuxK settings, exact dead-latent counters, per-feature statistics)
is written beside its weights in our own files (`repro_cfg.json`, `repro_state.safetensors`,
`feature_stats.safetensors`); `repro.sae.foreign` reads them back, so every layout round-trips
exactly through repro while the tool itself ignores them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from repro.devices import dtype_name
from repro.errors import ReproError, choices_hint
from repro.io import atomic_dir, provenance, write_json_atomic
from repro.sae.io import ORIG_CONFIG, ORIG_MEAN, ORIG_STD, ORIG_WEIGHTS, save_feature_stats
from repro.sae.model import TopKSAE

FORMATS = ("saelens", "sparsify", "original")
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SPARSITY = "sparsity.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
FOREIGN_CONFIG = "cfg.json"  # both SAELens and sparsify
BESIDE_CONFIG = "repro_cfg.json"
BESIDE_STATE = "repro_state.safetensors"
SAELENS_FORMAT_VERSION = "6.54.12"
"""The sae-lens version whose layout we write; >= 6 keeps SAELens from reading the file as a pre-6 config."""
DEFAULT_BATCH = 4096
"""Tokens per step the original layout counts in, when the SAE's training record has none (the paper's)."""

NOT_HELD = {
    "saelens": "AuxK settings (k_aux, auxk_coef), the dead-latent threshold and counters, per-feature mean/std/count",
    "sparsify": "AuxK settings (k_aux, auxk_coef; trainer settings there), the dead-latent threshold and "
                "counters, per-feature statistics",
    "original": "auxk_coef, fire_threshold, exact dead-latent counters (it counts steps), per-feature frequency/count",
}


def export_saes(saes: dict[str, TopKSAE], out: str | os.PathLike, fmt: str) -> tuple[list[Path], str]:
    """Write `{block: sae}` under `out`, one folder per block, in layout `fmt`.

    Returns (the folders written, one line naming what the layout cannot hold and where it went).
    """
    if fmt not in FORMATS:
        raise ReproError(f"unknown SAE format {fmt!r}: use {choices_hint(FORMATS)}")
    if not saes:
        raise ReproError("no SAEs to export: point at a folder of trained SAEs")
    out = Path(out)
    folders = [export_sae(sae, out, block, fmt) for block, sae in saes.items()]
    files = [BESIDE_CONFIG, BESIDE_STATE] + (["feature_stats.safetensors"] if any(
        s.feature_stats is not None for s in saes.values()) else [])
    return folders, f"the {fmt} layout has no place for {NOT_HELD[fmt]}: written beside the weights in {', '.join(files)}"


def export_sae(sae: TopKSAE, out: str | os.PathLike, block: str, fmt: str) -> Path:
    """Write one SAE into `out/<folder of block>` in layout `fmt` (the folder replaced atomically)."""
    writers = {"saelens": _write_saelens, "sparsify": _write_sparsify, "original": _write_original}
    if fmt not in writers:
        raise ReproError(f"unknown SAE format {fmt!r}: use {choices_hint(FORMATS)}")
    name = original_name(sae, block) if fmt == "original" else block
    target = Path(out) / name
    with atomic_dir(target) as tmp:
        inner = tmp / "final" if fmt == "original" else tmp
        inner.mkdir(parents=True, exist_ok=True)
        writers[fmt](sae, inner, block)
        _write_beside(sae, inner, block, fmt)
    return target / "final" if fmt == "original" else target


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.detach().cpu().contiguous()


def _write_saelens(sae: TopKSAE, folder: Path, block: str) -> None:
    c = sae.cfg
    save_file({"W_enc": _t(sae.W_enc.T), "b_enc": _t(sae.b_lat), "W_dec": _t(sae.W_dec.T), "b_dec": _t(sae.b_pre)},
              str(folder / SAELENS_WEIGHTS))
    cfg = {
        "architecture": "topk", "d_in": c.d_model, "d_sae": c.n_features, "k": c.k,
        "dtype": dtype_name(sae.dtype), "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                     "model_name": sae.metadata.get("model"), "hook_name": block,
                     "context_size": None, "dataset_path": _data_name(sae), "converted_by": "repro"},
    }
    write_json_atomic(folder / FOREIGN_CONFIG, cfg)
    stats = sae.feature_stats
    if stats is not None and stats.frequency is not None:
        # SAELens' own per-feature file: log10 of the firing frequency (its trainer adds 1e-10).
        save_file({"sparsity": torch.log10(_t(stats.frequency).float() + 1e-10)}, str(folder / SAELENS_SPARSITY))


def _write_sparsify(sae: TopKSAE, folder: Path, block: str) -> None:
    c = sae.cfg
    # sparsify's loader is strict: exactly these four tensors (safetensors' load_model).
    save_file({"encoder.weight": _t(sae.W_enc), "encoder.bias": _t(sae.b_lat), "W_dec": _t(sae.W_dec.T),
               "b_dec": _t(sae.b_pre)}, str(folder / SPARSIFY_WEIGHTS))
    write_json_atomic(folder / FOREIGN_CONFIG, {
        "activation": "topk", "expansion_factor": max(1, c.n_features // c.d_model), "normalize_decoder": True,
        "num_latents": c.n_features, "k": c.k, "multi_topk": False, "skip_connection": False,
        "transcode": False, "d_in": c.d_model,
    })


def _write_original(sae: TopKSAE, folder: Path, block: str) -> None:
    c = sae.cfg
    bs = batch_size(sae)
    write_json_atomic(folder / ORIG_CONFIG, {
        "n_dirs_local": c.n_features, "d_model": c.d_model, "k": c.k, "auxk": c.k_aux,
        "dead_steps_threshold": round(c.dead_tokens_threshold / bs),
    })
    state = {"encoder.weight": _t(sae.W_enc), "decoder.weight": _t(sae.W_dec), "pre_bias": _t(sae.b_pre),
             "latent_bias": _t(sae.b_lat), "stats_last_nonzero": _t(sae.tokens_since_fired) // bs}
    torch.save({"state_dict": state}, folder / ORIG_WEIGHTS)
    if sae.feature_stats is not None:
        torch.save(_t(sae.feature_stats.mean), folder / ORIG_MEAN)
        torch.save(_t(sae.feature_stats.std), folder / ORIG_STD)


def _write_beside(sae: TopKSAE, folder: Path, block: str, fmt: str) -> None:
    """Everything of ours the layout drops, in our own files; tools ignore files they do not know."""
    meta = {key: value for key, value in sae.metadata.items() if key != "provenance"}
    write_json_atomic(folder / BESIDE_CONFIG, {
        "format": fmt, "block": block, "not_held_by_format": NOT_HELD[fmt], "sae": sae.cfg.to_dict(),
        "metadata": meta, "trained": sae.metadata.get("provenance"), "provenance": provenance(),
    })
    save_file({"tokens_since_fired": _t(sae.tokens_since_fired)}, str(folder / BESIDE_STATE))
    if sae.feature_stats is not None:
        save_feature_stats(folder, sae.feature_stats)


def batch_size(sae: TopKSAE) -> int:
    """Tokens per training step from the SAE's training record (`data.batch_size`), else the paper's 4096."""
    data = sae.metadata.get("data") or {}
    return int(data.get("batch_size") or DEFAULT_BATCH) if isinstance(data, dict) else DEFAULT_BATCH


def original_name(sae: TopKSAE, block: str) -> str:
    """The release's folder name, e.g. `unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001`."""
    from repro.blocks import module_path
    from repro.sae.train import trained_lr

    c = sae.cfg
    return f"unet.{module_path(block)}_k{c.k}_hidden{c.n_features}_auxk{c.k_aux}_bs{batch_size(sae)}_lr{trained_lr(sae):g}"


def _data_name(sae: TopKSAE) -> Any:
    data = sae.metadata.get("data")
    return data.get("store") or data.get("source") if isinstance(data, dict) else None


__all__ = ["FORMATS", "export_sae", "export_saes", "original_name"]
