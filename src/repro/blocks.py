"""The one registry of block names: the paper's short names <-> diffusers module paths.

A "block" is one `Transformer2DModel` of the UNet. Short names follow the paper:
`down.<i>.<j>` = `down_blocks[i].attentions[j]`, `mid.<j>` = `mid_block.attentions[j]`,
`up.<i>.<j>` = `up_blocks[i].attentions[j]`. SDXL has 11 of them; the paper studies four.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from repro.errors import ReproError, choices_hint

PAPER_BLOCKS: tuple[str, ...] = ("down.2.1", "mid.0", "up.0.0", "up.0.1")
"""The four blocks the paper trains SAEs on (composition, -, local detail, style)."""

_SHORT = re.compile(r"^(down|up)\.(\d+)\.(\d+)$|^mid\.(\d+)$")
_PATH = re.compile(r"^(?:unet\.)?(?:(down|up)_blocks\.(\d+)\.attentions\.(\d+)|mid_block\.attentions\.(\d+))$")


def module_path(name: str) -> str:
    """`down.2.1` -> `down_blocks.2.attentions.1` (a module path is returned unchanged)."""
    name = short_name(name)
    m = _SHORT.match(name)
    if m.group(4) is not None:
        return f"mid_block.attentions.{m.group(4)}"
    return f"{m.group(1)}_blocks.{m.group(2)}.attentions.{m.group(3)}"


def short_name(name: str) -> str:
    """Normalise any accepted spelling (`down.2.1`, `down_blocks.2.attentions.1`,
    `unet.down_blocks.2.attentions.1`) to the short name; malformed names raise ReproError."""
    if _SHORT.match(name):
        return name
    m = _PATH.match(name)
    if m is None:
        raise ReproError(
            f"{name!r} is not a block name: write it like down.2.1, mid.0 or up.0.1 "
            "(or as a module path like down_blocks.2.attentions.1)"
        )
    if m.group(4) is not None:
        return f"mid.{m.group(4)}"
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"


def by_short_name(mapping: dict) -> dict:
    """`{block: value}` keyed by short names, whatever spelling the keys used
    (`unet.down_blocks.2.attentions.1` as in the original release -> `down.2.1`)."""
    out: dict = {}
    for key, value in mapping.items():
        name = short_name(key)
        if name in out:
            raise ReproError(f"block {name} is given twice (once as {key!r}): give each block once")
        out[name] = value
    return out


def block_names(unet: nn.Module) -> list[str]:
    """Short names of every transformer block of `unet`, in forward order."""
    names: list[str] = []
    for i, block in enumerate(unet.down_blocks):
        names += [f"down.{i}.{j}" for j in range(len(getattr(block, "attentions", None) or []))]
    names += [f"mid.{j}" for j in range(len(getattr(unet.mid_block, "attentions", None) or []))]
    for i, block in enumerate(unet.up_blocks):
        names += [f"up.{i}.{j}" for j in range(len(getattr(block, "attentions", None) or []))]
    return names


def get_block(unet: nn.Module, name: str) -> nn.Module:
    """The `Transformer2DModel` called `name`; unknown names list the valid ones."""
    valid = block_names(unet)
    try:
        short = short_name(name)
    except ReproError:
        short = None
    if short not in valid:
        raise ReproError(f"this UNet has no block {name!r}: use {choices_hint(valid)}")
    return unet.get_submodule(module_path(short))


ALIASES = ("paper", "all")
"""Names that stand for several blocks: the paper's four, every block of the UNet."""


def expand_aliases(names, every: list[str]) -> list[str]:
    """A block list (None, "a,b", or a sequence) with "paper" and "all" spelled out;
    `every` is what "all" means (the UNet's blocks, or a store's)."""
    if names is None:
        names = ["paper"]
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[str] = []
    for name in names:
        out += list(PAPER_BLOCKS) if name == "paper" else list(every) if name == "all" else [name]
    return out


def resolve_blocks(unet: nn.Module, names) -> list[str]:
    """Validate a block list (None or "paper" -> the paper's four, "all" -> every block)."""
    names = expand_aliases(names, block_names(unet))
    if not names:
        raise ReproError(f"the block list is empty: name blocks, e.g. down.2.1,up.0.1, or use {' or '.join(ALIASES)}")
    out = []
    for name in names:
        get_block(unet, name)
        out.append(short_name(name))
    if len(set(out)) != len(out):
        raise ReproError(f"block list {list(names)} names a block twice: give each block once")
    return out


@dataclass(frozen=True)
class BlockInfo:
    """One transformer block: where it lives and the shape of its update at a resolution."""

    name: str
    module_path: str
    channels: int
    height: int
    width: int
    n_layers: int
    in_paper: bool

    @property
    def positions(self) -> int:
        """Spatial positions per image: the number of SAE training vectors one image gives."""
        return self.height * self.width


def describe_blocks(unet: nn.Module, resolution: int, vae_factor: int = 8) -> list[BlockInfo]:
    """Every block of `unet` with its channel count and feature-map size at `resolution` px.

    Sizes follow the UNet's resampling: a downsampler (3x3 conv, stride 2, padding 1)
    takes a side n to ceil(n / 2), and an up level runs at the size of the down level whose
    skips it takes (diffusers passes that size to the upsampler when the latent side is not
    a multiple of 2^levels), so odd sides round up on the way down and come back exactly.
    """
    size = resolution // vae_factor
    sizes: dict[str, int] = {}
    level_sizes = []  # side at which each down level runs
    for i, block in enumerate(unet.down_blocks):
        level_sizes.append(size)
        for j in range(len(getattr(block, "attentions", None) or [])):
            sizes[f"down.{i}.{j}"] = size
        if getattr(block, "downsamplers", None):
            size = (size + 1) // 2
    for j in range(len(getattr(unet.mid_block, "attentions", None) or [])):
        sizes[f"mid.{j}"] = size
    for i, block in enumerate(unet.up_blocks):
        for j in range(len(getattr(block, "attentions", None) or [])):
            sizes[f"up.{i}.{j}"] = level_sizes[len(level_sizes) - 1 - i]
    infos = []
    for name in block_names(unet):
        module = get_block(unet, name)
        infos.append(
            BlockInfo(
                name=name,
                module_path=module_path(name),
                channels=module.config.in_channels,
                height=sizes[name],
                width=sizes[name],
                n_layers=len(module.transformer_blocks),
                in_paper=name in PAPER_BLOCKS,
            )
        )
    return infos
