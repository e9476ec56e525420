"""The ShapesWorld oracle: read a (generated) image back into scene attributes.

A small CNN (~0.35 M parameters) trained on degraded renders (see `oracle_train.py`) reads
uint8 images [N, H, W, 3] (any size; resized to 128) into, per position slot, "empty" or
the object's shape and pose, colour, texture and size, plus the background colour and the
style, and whether the image is *damaged* (off the distribution of renders and of the toy
model's normal generations: the noise, blotches and colour fields of an edit pushed too far;
see `damage_train.py`). `compare(read, scene)` scores a reading against the scene a caption asked for
("prompt following").

    oracle = load_oracle()                 # models/oracle, or $REPRO_MODELS_DIR/oracle
    readings = oracle.read(images)         # list of dicts, one per image (with "damaged", "damaged_p")
    compare(readings[0], scene)            # {"shape": True, "colour": False, ..., "all": False}

Train or evaluate again with `python -m repro.shapes.oracle --train` / `--eval`; refit only
the damaged head of the saved oracle with `--train-damage`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro.errors import ReproError
from repro.paths import models_dir
from repro.shapes.render import IMAGE_SIZE
from repro.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    ORIENTED_SHAPES,
    POSITIONS,
    SHAPE_VARIANTS,
    SIZES,
    STYLES,
    TEXTURES,
    Scene,
)

WEIGHTS_FILE = "oracle.safetensors"
CONFIG_FILE = "config.json"
ARCH = "shapes-oracle-cnn-v2"
"""v2 = v1 + the `damaged` head; v1 files still load (their readings say damaged=None)."""
ARCHES = ("shapes-oracle-cnn-v1", ARCH)

# The label layout: one block of heads per slot, then two global heads.
OBJECT_CLASSES = ("empty",) + tuple(f"{s}:{o}" if o else s for s, o in SHAPE_VARIANTS)
SLOT_HEADS = {"object": len(OBJECT_CLASSES), "colour": len(COLOURS), "texture": len(TEXTURES), "size": len(SIZES)}
GLOBAL_HEADS = {"background": len(BACKGROUNDS), "style": len(STYLES)}
DAMAGE_TAP = 8
"""Index in `OracleNet.features` whose output (2 * width channels at 32x32) the damaged head reads."""
DAMAGE_THRESHOLD = 0.5
"""Default probability above which a reading says damaged (a saved config's `damage_threshold` wins)."""


def _block(c_in: int, c_out: int, stride: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DamageHead(nn.Module):
    """Damaged vs not: a mid-level feature map [B, C_tap, 32, 32] (where noise and blotches are
    still visible) and the final map [B, C, 8, 8] -> one logit [B]."""

    def __init__(self, c_tap: int, c_final: int, width: int = 16, hidden: int = 32):
        super().__init__()
        self.convs = nn.Sequential(*_block(c_tap, width, 1), *_block(width, width, 2))  # 16 -> 16 -> 8
        self.mlp = nn.Sequential(nn.Linear(2 * width + 2 * c_final, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 1))

    @staticmethod
    def inputs(tap: torch.Tensor, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the head reads: (tap pooled to [B, C_tap, 16, 16], final's mean and std [B, 2C])."""
        return F.avg_pool2d(tap, 2), torch.cat([final.mean((2, 3)), final.std((2, 3))], 1)

    def classify(self, tap16: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """`inputs(...)` -> logits [B] (training precomputes the inputs once: the trunk is frozen)."""
        h = self.convs(tap16)  # [B, width, 8, 8]
        return self.mlp(torch.cat([h.mean((2, 3)), h.amax((2, 3)), stats], 1)).squeeze(1)

    def forward(self, tap: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        return self.classify(*self.inputs(tap, final))


class OracleNet(nn.Module):
    """uint8-range float images [B, 3, 128, 128] -> dict of logits.

    Slot heads read the feature map average-pooled onto the 3x3 slot grid (one shared head
    for all slots, so an object looks the same wherever it sits; a learned slot embedding
    lets it know which cell it reads); global heads read the mean over the whole map. The
    damaged head (`damage_head=True`) adds "damaged" logits [B].
    """

    def __init__(self, width: int = 32, damage_head: bool = True):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),  # 128 -> 64
            *_block(w, w, 2),  # 32
            *_block(w, 2 * w, 1),
            *_block(2 * w, 2 * w, 2),  # 16
            *_block(2 * w, 3 * w, 1),
            *_block(3 * w, 3 * w, 2),  # 8
            *_block(3 * w, 4 * w, 1),
        )
        c = 4 * w
        self.slot_embed = nn.Parameter(torch.zeros(len(POSITIONS), c))
        self.slot_mlp = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, sum(SLOT_HEADS.values())))
        self.global_head = nn.Linear(c, sum(GLOBAL_HEADS.values()))
        self.damage_head = DamageHead(2 * w, c) if damage_head else None
        # Each slot's cell on the pooled 3x3 grid, as a flat index.
        from repro.shapes.render import SLOT_CELL

        self.register_buffer("slot_index", torch.tensor([SLOT_CELL[p][0] * 3 + SLOT_CELL[p][1] for p in POSITIONS]),
                             persistent=False)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, 128, 128] (0..255) -> (tap [B, 2w, 32, 32], final map [B, 4w, 8, 8])."""
        x = (x - 128.0) / 64.0
        tap = self.features[: DAMAGE_TAP + 1](x)
        return tap, self.features[DAMAGE_TAP + 1 :](tap)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tap, f = self.trunk(x)  # f: [B, C, 8, 8]
        out = self.heads(f)
        if self.damage_head is not None:
            out["damaged"] = self.damage_head(tap, f)  # [B]
        return out

    def heads(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """The attribute heads' logits from the final feature map f [B, C, 8, 8]."""
        cells = F.adaptive_avg_pool2d(f, 3).flatten(2).transpose(1, 2)  # [B, 9, C]
        slots = cells[:, self.slot_index] + self.slot_embed  # [B, 5, C]
        logits = self.slot_mlp(slots)  # [B, 5, sum(SLOT_HEADS)]
        out = dict(zip(SLOT_HEADS, logits.split(list(SLOT_HEADS.values()), dim=-1)))  # each [B, 5, K]
        g = self.global_head(f.mean((2, 3)))
        out.update(zip(GLOBAL_HEADS, g.split(list(GLOBAL_HEADS.values()), dim=-1)))  # each [B, K]
        return out


def scene_targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Integer targets per head: slot heads [N, 5] (-100 = ignore where the slot is empty), globals [N]."""
    n = len(scenes)
    t = {k: torch.full((n, len(POSITIONS)), -100, dtype=torch.long) for k in SLOT_HEADS}
    t["object"].fill_(0)
    colours, textures = list(COLOURS), list(TEXTURES)
    for i, s in enumerate(scenes):
        for o in s.objects:
            j = POSITIONS.index(o.position)
            t["object"][i, j] = 1 + SHAPE_VARIANTS.index((o.shape, o.orientation))
            t["colour"][i, j] = colours.index(o.colour)
            t["texture"][i, j] = textures.index(o.texture)
            t["size"][i, j] = SIZES.index(o.size)
    t["background"] = torch.tensor([list(BACKGROUNDS).index(s.background) for s in scenes])
    t["style"] = torch.tensor([STYLES.index(s.style) for s in scenes])
    return t


def decode(logits: dict[str, torch.Tensor], damage_threshold: float = DAMAGE_THRESHOLD) -> list[dict]:
    """Argmax logits into readings: {"background", "style", "slots": {position: None | object dict},
    "damaged": bool (None without a damaged head), "damaged_p": probability (nan without)}."""
    # plain lists: indexing a tensor element by element costs ~10x a list's (~65 ms per 1024 images)
    am = {k: v.argmax(-1).cpu().tolist() for k, v in logits.items() if k != "damaged"}
    p_damaged = torch.sigmoid(logits["damaged"].float()).cpu().tolist() if "damaged" in logits else None
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    out = []
    for i in range(len(am["background"])):
        slots = {}
        for j, p in enumerate(POSITIONS):
            k = am["object"][i][j]
            if k == 0:
                slots[p] = None
                continue
            shape, orientation = SHAPE_VARIANTS[k - 1]
            slots[p] = {
                "shape": shape,
                "orientation": orientation,
                "colour": colours[am["colour"][i][j]],
                "texture": TEXTURES[am["texture"][i][j]],
                "size": SIZES[am["size"][i][j]],
            }
        p = p_damaged[i] if p_damaged is not None else float("nan")
        out.append({"background": backgrounds[am["background"][i]], "style": STYLES[am["style"][i]],
                    "slots": slots, "damaged": None if p_damaged is None else bool(p > damage_threshold),
                    "damaged_p": p})
    return out


def compare(reading: dict, scene: Scene) -> dict[str, bool]:
    """Which attributes of `scene` the image (as read) got right.

    layout: exactly the scene's slots hold objects (none missing, none extra).
    shape / colour / texture / size: right for every object of the scene, read in its slot.
    pose: orientation right for every oriented object (key absent if the scene has none).
    background, style: the global attributes. all: every key above is True.
    """
    slots = reading["slots"]
    got = [slots.get(o.position) for o in scene.objects]
    res = {"layout": {p for p, o in slots.items() if o is not None} == {o.position for o in scene.objects}}
    for attr in ("shape", "colour", "texture", "size"):
        res[attr] = all(g is not None and g[attr] == getattr(o, attr) for g, o in zip(got, scene.objects))
    oriented = [(g, o) for g, o in zip(got, scene.objects) if o.shape in ORIENTED_SHAPES]
    if oriented:
        res["pose"] = all(g is not None and g["orientation"] == o.orientation for g, o in oriented)
    res["background"] = reading["background"] == scene.background
    res["style"] = reading["style"] == scene.style
    res["all"] = all(res.values())
    return res


def default_oracle_dir() -> Path:
    """$REPRO_MODELS_DIR/oracle if set, else <project root>/models/oracle."""
    return models_dir() / "oracle"


class Oracle:
    """A loaded OracleNet and its config; `read(images)` is all most callers need."""

    def __init__(self, net: OracleNet, config: dict, device: torch.device):
        self.net = net.eval().to(device)
        self.config = config
        self.device = device

    @torch.no_grad()
    def logits(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """uint8 [N, H, W, 3] or [H, W, 3] (numpy or torch) -> logits per head (CPU)."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ReproError(f"oracle.read wants uint8 images [N, H, W, 3] or [H, W, 3], got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ReproError(f"oracle.read wants uint8 images (0..255), got {x.dtype}; convert with "
                             "(img.clamp(0, 1) * 255).round().to(torch.uint8) or similar")
        parts: list[dict] = []
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):  # exact fp32 on GPUs too
            for a in range(0, x.shape[0], batch_size):
                parts.append(self._batch_logits(x[a : a + batch_size]))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _batch_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        xb = x.to(self.device).permute(0, 3, 1, 2).float()
        if xb.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            xb = F.interpolate(xb, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        xb = xb.contiguous(memory_format=torch.channels_last)
        return {k: v.float().cpu() for k, v in self.net(xb).items()}

    @property
    def damage_threshold(self) -> float:
        return float(self.config.get("damage_threshold", DAMAGE_THRESHOLD))

    def read(self, images, batch_size: int = 256) -> list[dict]:
        """Readings for uint8 images [N, H, W, 3] (or one [H, W, 3]): see `decode` for the dict."""
        return decode(self.logits(images, batch_size), self.damage_threshold)


def save_oracle(net: OracleNet, config: dict, folder: str | os.PathLike) -> Path:
    """Write oracle.safetensors (fp16: ~0.7 MB) + config.json atomically into `folder`."""
    from safetensors.torch import save_file

    from repro.io import atomic_path, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"arch": ARCH})
    write_json_atomic(folder / CONFIG_FILE, config)
    return folder


def load_oracle(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Oracle:
    """Load the oracle from `folder` (default: `default_oracle_dir()`) onto `device`."""
    from safetensors.torch import load_file

    from repro.devices import pick_device

    folder = Path(folder) if folder else default_oracle_dir()
    weights, cfg_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not cfg_path.is_file():
        raise ReproError(f"no oracle in {folder} (need {WEIGHTS_FILE} and {CONFIG_FILE}); train one with "
                         "`python -m repro.shapes.oracle --train` or set REPRO_MODELS_DIR")
    config = json.loads(cfg_path.read_text())
    if config.get("arch") not in ARCHES:
        raise ReproError(f"{cfg_path} is a {config.get('arch')!r} model, not one of {ARCHES}; retrain the oracle")
    device = pick_device(device)
    net = OracleNet(width=int(config.get("width", 32)), damage_head=config["arch"] != ARCHES[0])
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    net.load_state_dict(state)
    net = net.to(memory_format=torch.channels_last)
    return Oracle(net, config, device)


def main(argv: list[str] | None = None) -> int:
    """`python -m repro.shapes.oracle --train [--steps N] [--out DIR]`, `--train-damage` or `--eval [--n N]`."""
    import argparse

    from repro.shapes.damage_train import refit_damage_head
    from repro.shapes.oracle_train import OracleTrainConfig, evaluate_oracle, train_oracle

    ap = argparse.ArgumentParser(prog="python -m repro.shapes.oracle", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train and save a new oracle")
    mode.add_argument("--train-damage", action="store_true",
                      help="refit only the damaged head of the saved oracle (attribute heads unchanged)")
    mode.add_argument("--eval", action="store_true", help="score the saved oracle on held-out renders")
    ap.add_argument("--steps", type=int, default=OracleTrainConfig.steps)
    ap.add_argument("--seed", type=int, default=OracleTrainConfig.seed)
    ap.add_argument("--batch-size", type=int, default=OracleTrainConfig.batch_size)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    ap.add_argument("--out", default=None, help="folder to write to / read from (default: models/oracle)")
    ap.add_argument("--n", type=int, default=2000, help="--eval: held-out scenes to score")
    args = ap.parse_args(argv)
    try:
        if args.train:
            cfg = OracleTrainConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                                    device=args.device, out_dir=args.out)
            metrics = train_oracle(cfg)
        elif args.train_damage:
            metrics = refit_damage_head(args.out)["damage"]
        else:
            from repro.shapes.damage_train import damage_rates

            oracle = load_oracle(args.out, device=args.device)
            metrics = evaluate_oracle(oracle, n=args.n)
            if oracle.net.damage_head is not None:
                metrics["damaged_read"] = damage_rates(oracle, n=min(args.n, 1000))
    except ReproError as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
