"""A set of SAEs, one per block: built for a store, or loaded from folders.

`sae_sets(profile)` lists the sets a profile trains (03_train) and the chapters read: the
main SAEs (`saes`, k = sae_k), a second seed of them for seed stability (`saes-seed1`, ...),
and RIEBench's (`saes-k160` on the paper profile, k = riebench_sae_k).
`build_block_saes` is the one place that decides each block's SAE shape and seed (block
i of the store gets `seed + i`, so no two blocks start from the same decoder), used by
`03_train` and `repro train`. `load_block_saes` reads a folder of block SAEs in either
layout `load_sae` supports (ours, or the original release's `<name>/final`), used by
chapters 04-06 and the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from repro.errors import ReproError
from repro.sae.config import SAEConfig
from repro.sae.io import ORIG_CONFIG, SAE_CONFIG, load_sae
from repro.sae.model import TopKSAE


SEED_STRIDE = 1000
"""Seed offset between the sets of a seed-stability run (block i of set j: seed + j * 1000 + i)."""


@dataclass(frozen=True)
class SAESet:
    """One set of block SAEs a profile trains: where it lives and how it is trained."""

    name: str
    """Folder under artifacts/<profile>/."""
    k: int
    seed: int
    """Init seed of its first block (block i: seed + i) and the data order's seed."""
    steps: int
    role: str
    """What the chapters use it for."""


def sae_sets(profile, *, seed: int = 0) -> list[SAESet]:
    """The SAE sets of `profile`: main, extra seeds, RIEBench's."""
    k, steps = profile.sae_k, profile.sae_steps
    sets = [SAESet("saes", k, seed, steps, "main: every chapter's SAEs")]
    sets += [SAESet(f"saes-seed{j}", k, seed + j * SEED_STRIDE, steps, "seed stability")
             for j in range(1, profile.sae_seeds)]
    if profile.riebench_sae_k != k:
        sets.append(SAESet(f"saes-k{profile.riebench_sae_k}", profile.riebench_sae_k, seed,
                           profile.riebench_sae_steps or steps, "RIEBench"))
    return sets


def riebench_set(profile, sets: list[SAESet]) -> SAESet:
    """The set RIEBench transports: the one with k = riebench_sae_k."""
    return next(s for s in sets if s.k == profile.riebench_sae_k)


def seed_set(sets: list[SAESet]) -> SAESet | None:
    """The first extra-seed set (seed stability), or None when the profile trains one seed."""
    return next((s for s in sets if s.role == "seed stability"), None)


def profile_saes(profile, saes: str | os.PathLike = "", seed_saes: str | os.PathLike = "",
                 device: str = "cpu") -> tuple[dict[str, TopKSAE], dict[str, TopKSAE]]:
    """The profile's main SAEs and its second seed's ({} when it trains one seed), from
    artifacts/<profile>/ unless folders are given: what 04 and 05 read."""
    from repro.paths import artifacts_dir

    root, second = artifacts_dir(profile.name), seed_set(sae_sets(profile))
    seed_root = seed_saes or (root / second.name if second else "")
    return load_block_saes(saes or root / "saes", device), load_block_saes(seed_root, device) if seed_root else {}


def block_sae(d_model: int, *, k: int, expansion: int, dead_tokens: int, seed: int, k_aux: int = 256) -> TopKSAE:
    """A fresh TopKSAE of expansion x d_model features for one block; k_aux (AuxK's dead latents, the paper's
    256) is capped at n_features: small toy blocks have fewer. The init seed is saved in cfg.json."""
    n = expansion * d_model
    cfg = SAEConfig(d_model=d_model, n_features=n, k=k, k_aux=min(k_aux, n), dead_tokens_threshold=dead_tokens)
    sae = TopKSAE(cfg, seed=seed)
    sae.metadata["init_seed"] = seed
    return sae


def build_block_saes(store, *, k: int, expansion: int, dead_tokens: int, seed: int = 0,
                     blocks: Sequence[str] | None = None, k_aux: int = 256) -> dict[str, TopKSAE]:
    """{block: fresh `block_sae`} for `blocks` of `store` (default: all), n_features = expansion x C.

    Block i of the store (in its own order, whichever subset is asked for) is seeded with
    `seed + i`.
    """
    chosen = list(store.blocks) if blocks is None else [store.block_name(b) for b in blocks]
    return {block: block_sae(store.block_shape(block)[2], k=k, expansion=expansion, dead_tokens=dead_tokens,
                             seed=seed + store.blocks.index(block), k_aux=k_aux) for block in chosen}


def _is_sae(folder: Path) -> bool:
    return any((folder / f).is_file() for f in (SAE_CONFIG, ORIG_CONFIG)) or (folder / "final").is_dir()


def _block_of(folder: Path, sae: TopKSAE) -> str:
    from repro.blocks import short_name

    for name in (folder.name, folder.parent.name if folder.name == "final" else None, sae.metadata.get("block")):
        if name:
            try:
                return short_name(str(name).split("_k")[0])
            except ReproError:
                pass
    raise ReproError(f"cannot tell which block the SAE in {folder} belongs to: name its folder after the "
                     "block (e.g. down.2.1) or save it with block=...")


def load_block_saes(folders: str | os.PathLike | Sequence[str | os.PathLike], device: str = "cpu") -> dict[str, TopKSAE]:
    """{block: TopKSAE} from one folder or several: SAE folders, or parents holding one per block.

    A block is named by its folder (`down.2.1`, `down_blocks.2.attentions.1`, or the
    original release's `unet.down_blocks.2.attentions.1_k10_...`) or by the `block` the
    SAE's config records. Blocks come in the order of their folder names."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    saes: dict[str, TopKSAE] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ReproError(f"SAE folder {folder} does not exist; give the folder the SAE training wrote")
        subs = [folder] if _is_sae(folder) else sorted(p for p in folder.iterdir() if p.is_dir() and _is_sae(p))
        if not subs:
            raise ReproError(f"no SAE in {folder} or its subfolders: point at the folder of trained SAEs")
        for sub in subs:
            sae = load_sae(sub, device=device)
            block = _block_of(sub, sae)
            if block in saes:
                raise ReproError(f"two SAEs for block {block} (the second in {sub}); give one SAE per block")
            saes[block] = sae
    return saes


__all__ = ["SAESet", "build_block_saes", "load_block_saes", "profile_saes", "riebench_set", "sae_sets", "seed_set"]
