"""A Hub-ready release of a set of block SAEs: one folder per block and a model card.

    OUT/README.md        model card: YAML metadata (library, base model, blocks, and per block
                         d, n, k, AuxK, training tokens and data, held-out EV with its 95%
                         interval, the commit and command that trained it), then prose
    OUT/<block>/         the SAE in our layout (sae.safetensors + cfg.json) with its per-feature
                         files (feature_stats.safetensors, top_examples.safetensors, labels.json, ...)

Uploaded as a model repository OWNER/NAME, each block opens with
`load_sae("hf:OWNER/NAME/<block>")` from the local Hugging Face cache (`repro.sae.foreign`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.io import atomic_dir, atomic_path, write_bytes_atomic
from repro.sae.io import SAE_CONFIG, SAE_WEIGHTS, save_sae
from repro.sae.model import TopKSAE

CARD = "README.md"
EVALUATE_RESULTS = "04_evaluate.json"


def release_saes(saes_dir: str | os.PathLike, out: str | os.PathLike, *, results: str | os.PathLike | None = None,
                 command: str | None = None, allow_missing_ev: bool = False) -> Path:
    """Write the release of the block SAEs in `saes_dir` into `out`; returns the card's path.

    `results`: 04_evaluate's results file with each block's held-out EV (default
    `results/04_evaluate.json`); a block without one is refused unless `allow_missing_ev`.
    `command`: how the SAEs were trained, when their cfg.json does not record it.
    Each block folder is replaced atomically; other files in `out` are left alone.
    """
    from repro.paths import results_dir
    from repro.sae.sets import load_block_saes

    saes = load_block_saes(saes_dir)
    path = Path(results) if results else results_dir() / EVALUATE_RESULTS
    evs = held_out_ev(path, allow_missing=allow_missing_ev)
    missing = [block for block in saes if block not in evs]
    if missing and not allow_missing_ev:
        raise ReproError(f"{path} has no held-out EV for block(s) {', '.join(missing)}: run 04_evaluate on these "
                         "SAEs (make chapter NB=04_evaluate), pass --results FILE, or --allow-missing-ev")
    out = Path(out)
    for block, sae in saes.items():
        with atomic_dir(out / block) as tmp:
            _write_block(sae, tmp)
    card = model_card(saes, evs, command=command, results=path if evs else None)
    write_bytes_atomic(out / CARD, card.encode())
    return out / CARD


def _write_block(sae: TopKSAE, folder: Path) -> None:
    """Our layout: the trained files copied byte for byte (checksums kept) when the SAE is in it, else saved."""
    src = Path(sae.folder) if sae.folder is not None else None
    if src is not None and (src / SAE_WEIGHTS).is_file() and (src / SAE_CONFIG).is_file() \
            and "format" not in sae.metadata:
        for f in sorted(src.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                with atomic_path(folder / f.name) as tmp:
                    shutil.copyfile(f, tmp)
    else:  # the original release's layout, SAELens, sparsify: re-saved in ours
        save_sae(sae, folder)


def held_out_ev(path: Path, *, allow_missing: bool = False) -> dict[str, dict[str, Any]]:
    """{block: {"ev", "interval"}} from 04_evaluate's results file ({} if absent and `allow_missing`)."""
    if not path.is_file():
        if allow_missing:
            return {}
        raise ReproError(f"no evaluation results at {path}: run 04_evaluate (make chapter NB=04_evaluate), "
                         "pass --results FILE, or --allow-missing-ev to release without EV")
    try:
        recon = json.loads(path.read_text())["numbers"]["reconstruction"]
        return {block: {"ev": r["ev"], "interval": list(r["ev_interval"])} for block, r in recon.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ReproError(f"{path} is not 04_evaluate's results file (no numbers.reconstruction.<block>.ev: {exc}); "
                         "pass the results/04_evaluate.json that chapter wrote") from None


def card_metadata(saes: dict[str, TopKSAE], evs: dict[str, dict], command: str | None = None) -> dict[str, Any]:
    """The model card's YAML metadata (Hugging Face keys first, then one entry per block)."""
    models = sorted({str(s.metadata.get("model")) for s in saes.values() if s.metadata.get("model")})
    per_block = {}
    for block, sae in saes.items():
        c, meta = sae.cfg, sae.metadata
        training = meta.get("training") or {}
        prov = meta.get("provenance") or {}
        ev = evs.get(block) or {}
        per_block[block] = {
            "d": c.d_model, "n": c.n_features, "k": c.k, "k_aux": c.k_aux, "auxk_coef": c.auxk_coef,
            "dead_tokens_threshold": c.dead_tokens_threshold,
            "training_tokens": training.get("tokens"), "training_steps": training.get("steps"),
            "lr": training.get("lr"), "data": meta.get("data"), "store": meta.get("store"),
            "held_out_ev": ev.get("ev"), "held_out_ev_95_interval": ev.get("interval"),
            "commit": prov.get("git_commit"), "repro_version": prov.get("repro_version"),
            "command": meta.get("command") or command or "not recorded",
        }
    return {
        "library_name": "repro",
        "base_model": models[0] if len(models) == 1 else models,
        "tags": ["sparse-autoencoder", "topk-sae", "interpretability", "sdxl-turbo", "diffusers"],
        "blocks": list(saes),
        "saes": per_block,
    }


def model_card(saes: dict[str, TopKSAE], evs: dict[str, dict], *, command: str | None = None,
               results: Path | None = None) -> str:
    """README.md text: `---` YAML `---` then a short description and a table per block."""
    import yaml

    meta = card_metadata(saes, evs, command)
    rows = []
    for block, b in meta["saes"].items():
        ev = "not measured" if b["held_out_ev"] is None else (
            f"{b['held_out_ev']:.3f} [{b['held_out_ev_95_interval'][0]:.3f}, {b['held_out_ev_95_interval'][1]:.3f}]")
        rows.append(f"| `{block}` | {b['d']} | {b['n']} | {b['k']} | {b['training_tokens'] or '?'} | {ev} |")
    base = meta["base_model"]
    repo_hint = "OWNER/NAME"
    text = f"""---
{yaml.safe_dump(json.loads(json.dumps(meta, default=str)), sort_keys=False).rstrip()}
---

# TopK sparse autoencoders on {base}'s transformer blocks

Sparse autoencoders (SAEs) trained with `repro`, a reproduction of Surkov et al., [*Unpacking SDXL
Turbo*](https://arxiv.org/abs/2410.22366), on the updates that transformer blocks of `{base}`'s UNet
write into the residual stream: `z = ReLU(TopK_k(W_enc (x - b_pre) + b_lat))`, `x_hat = W_dec z + b_pre`.

| block | d | n | k | training tokens | held-out EV [95% interval] |
|---|---|---|---|---|---|
{chr(10).join(rows)}

EV: explained variance on held-out prompts{f' ({results.name})' if results else ''}, with a bootstrap interval over images.
Each block's folder holds `sae.safetensors` + `cfg.json` (config, training record, provenance) and its
per-feature files (`feature_stats.safetensors`: mean/std/frequency when the feature fires, and the
feature browser's files where present).

```python
from repro.sae import load_sae
sae = load_sae("hf:{repo_hint}/{next(iter(saes))}")   # from the local Hugging Face cache
```

`repro export SAES --to saelens|sparsify|original OUT` writes the same SAEs for SAELens or sparsify.
"""
    return text


__all__ = ["card_metadata", "held_out_ev", "model_card", "release_saes"]
