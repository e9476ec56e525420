"""The feature browser's payload: what the static book needs to browse features, as JSON.

`build_browser_data` turns per-block feature analyses (`analyse_features`) into one
compact, JSON-able dict that the `FeatureBrowser` widget shows with no kernel:

    {"version": 1, "mime": "image/webp", "thumb": 64,
     "pool": [b64 thumbnail, ...],           # every top image once (deduplicated)
     "pool_ids": [image id, ...],             # the dataset id of each pool entry
     "blocks": {block: {
         "n_features": n, "n_live": live, "shape": [h, w],     # heatmap grid
         "ids": [f, ...],                     # live features (fired at least once), by frequency
         "freq": [...], "mean": [...], "std": [...],          # 4 significant digits
         "label": [...], "purity": [...],     # optional
         "top": [[pool index, ...], ...],     # best first; the images a feature fired in
         "val": [[max activation, ...], ...],
         "hmax": [...],                       # the activation that heatmap value 255 stands for
         "heat": [b64(zlib(uint8 [m_f, h, w])), ...],
         "icon": {"f": b64 icon, ...}}}}      # optional

Heatmaps are quantised per feature: q = round(255 * map / hmax) with hmax the largest
value over the feature's shown maps, so a value comes back within hmax / 510.

Size at paper scale (4 blocks x 5120 features x 16 top images drawn from 10,000 images,
synthetic, `tests/test_feature_browser.py::test_paper_scale_payload_size`): 60.5 MB with
the defaults (pool 22 MB, 16x16 heatmaps 35 MB); 27.8 MB with `thumb_size=48,
heat_size=8` (pool 12 MB, heatmaps ~12 MB); the pool is bounded by the number of distinct
images, and `max_images` / `max_features_per_block` / `top_m` cut further.
"""

from __future__ import annotations

import base64
import io
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from repro.errors import ReproError, choices_hint

FORMATS = {"webp": "image/webp", "png": "image/png", "jpeg": "image/jpeg"}
VERSION = 1


def _sig(values, digits: int = 4) -> list[float]:
    """Floats rounded to `digits` significant digits (JSON stays short)."""
    return [float(f"{float(v):.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def encode_thumbnail(image: np.ndarray, size: int, format: str = "webp", quality: int = 80) -> str:
    """uint8 [H, W, 3] -> base64 file of the image shrunk to `size` px on its long side.

    WebP/JPEG are lossy (`quality`), PNG lossless: thumbnails only need to be recognisable.
    """
    from PIL import Image

    if format not in FORMATS:
        raise ReproError(f"unknown thumbnail format {format!r}: use {choices_hint(FORMATS)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ReproError(f"images must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    im = Image.fromarray(np.ascontiguousarray(image))
    h, w = image.shape[:2]
    if max(h, w) > size:
        scale = size / max(h, w)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    if format == "png":
        im.save(buf, format="PNG", optimize=True)
    elif format == "webp":
        im.save(buf, format="WEBP", quality=quality, method=4)
    else:
        im.save(buf, format="JPEG", quality=quality, optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def quantise_maps(maps: np.ndarray) -> tuple[np.ndarray, float]:
    """float [m, h, w] >= 0 -> (uint8 [m, h, w], hmax) with maps ~= q * hmax / 255."""
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0, None)
    hmax = float(maps.max()) if maps.size else 0.0
    if hmax <= 0 or not math.isfinite(hmax):
        return np.zeros(maps.shape, np.uint8), 0.0
    return np.clip(np.rint(maps / hmax * 255.0), 0, 255).astype(np.uint8), hmax


def encode_heat(q: np.ndarray) -> str:
    """uint8 [m, h, w] -> base64 of its zlib stream (the browser inflates it)."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(q, dtype=np.uint8).tobytes(), 9)).decode("ascii")


def decode_heatmaps(payload: dict, block: str, feature: int) -> np.ndarray:
    """The heatmaps of `feature` of `block` back from a payload: float32 [m_f, h, w]."""
    b = payload["blocks"][block]
    try:
        i = b["ids"].index(int(feature))
    except ValueError:
        raise ReproError(f"feature {feature} of {block} is not in the payload (dead, or cut by max_features_per_block)") from None
    h, w = b["shape"]
    q = np.frombuffer(zlib.decompress(base64.b64decode(b["heat"][i])), np.uint8)
    return q.reshape(-1, h, w).astype(np.float32) * (b["hmax"][i] / 255.0)


def payload_size(payload: dict) -> int:
    """Bytes of the payload as compact JSON (what a page or notebook stores)."""
    return len(json.dumps(payload, separators=(",", ":")))


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _live_mask(stats) -> np.ndarray:
    """[n] bool: features that fired at least once."""
    for name in ("count", "frequency", "mean"):
        value = getattr(stats, name, None)
        if value is not None:
            return _np(value) > 0
    raise ReproError("feature stats have neither count, frequency nor mean: cannot tell live features")


def _resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """[n, m, H, W] -> at most `size` on each side (area average)."""
    h, w = maps.shape[-2:]
    if h <= size and w <= size:
        return maps
    t = torch.from_numpy(maps.reshape(-1, 1, h, w).astype(np.float32))
    out = torch.nn.functional.adaptive_avg_pool2d(t, (min(h, size), min(w, size)))
    return out.reshape(*maps.shape[:2], *out.shape[-2:]).numpy()


def _concept_labels(concepts) -> tuple[list[str], list[float]]:
    """Best concept by F1 per feature, and its precision (purity), from ConceptCounts."""
    f1, precision = _np(concepts.f1()), _np(concepts.precision())
    best = f1.argmax(1)
    labels = [concepts.names[c] if f1[f, c] > 0 else "" for f, c in enumerate(best)]
    return labels, [float(precision[f, c]) for f, c in enumerate(best)]


def build_browser_data(
    blocks: Mapping[str, Any],
    images: np.ndarray | Callable[[int], np.ndarray],
    labels: Mapping[str, Sequence[str]] | None = None,
    icons: Mapping[str, Mapping[int, np.ndarray]] | None = None,
    max_features_per_block: int | None = None,
    thumb_size: int = 64,
    *,
    purity: Mapping[str, Sequence[float]] | None = None,
    top_m: int | None = None,
    heat_size: int = 16,
    max_images: int | None = None,
    format: str = "webp",
    quality: int = 80,
    icon_size: int = 128,
) -> dict:
    """A JSON-able payload for `FeatureBrowser` (layout in the module docstring).

    blocks: block name -> FeatureAnalysis-like (`.stats` with mean/std/frequency/count
        [n], `.top` with image_ids [n, m], values [n, m], maps [n, m, H, W], optional
        `.concepts`: without `labels`, the best concept by F1 labels each feature and its
        precision is the purity).
    images: uint8 [N, H, W, 3] indexed by image id, or a function id -> uint8 [H, W, 3].
    labels / purity: block -> one per feature (all n). icons: block -> {feature: image}.
    max_features_per_block: keep only the most frequent live features.
    top_m: images per feature (default: all of `.top`). heat_size: heatmap grid side cap.
    max_images: cap on the image pool; slots are filled rank by rank (every feature's best
        image first), so a capped pool drops low-ranked examples first.
    """
    if format not in FORMATS:
        raise ReproError(f"unknown thumbnail format {format!r}: use {choices_hint(FORMATS)}")
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ReproError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        array = images
        get_image = lambda i: array[i]  # noqa: E731
        n_images = len(array)
    elif callable(images):
        get_image, n_images = images, None
    else:
        raise ReproError(f"images must be a uint8 array [N, H, W, 3] or a function id -> image, got {type(images).__name__}")

    # 1. per block: live features, their top ids (rank order) and maps
    chosen: dict[str, dict] = {}
    for block, analysis in blocks.items():
        stats, top = analysis.stats, analysis.top
        live = _live_mask(stats)
        n = live.shape[0]
        freq = _np(stats.frequency) if getattr(stats, "frequency", None) is not None else live.astype(np.float64)
        ids = np.flatnonzero(live)
        ids = ids[np.argsort(-freq[ids], kind="stable")]
        if max_features_per_block is not None:
            ids = ids[:max_features_per_block]
        top_ids = _np(top.image_ids).astype(np.int64)[ids]
        m = top_ids.shape[1] if top_m is None else min(top_m, top_ids.shape[1])
        top_ids = top_ids[:, :m]
        if n_images is not None and top_ids.max(initial=-1) >= n_images:
            raise ReproError(f"{block}: top image id {int(top_ids.max())} but only {n_images} images were given")
        chosen[block] = {"n": n, "ids": ids, "freq": freq, "top_ids": top_ids, "m": m}

    # 2. the image pool: rank by rank, until max_images
    pool_index: dict[int, int] = {}
    max_m = max((c["m"] for c in chosen.values()), default=0)
    for rank in range(max_m):
        for c in chosen.values():
            if rank >= c["m"]:
                continue
            for image_id in c["top_ids"][:, rank]:
                image_id = int(image_id)
                if image_id < 0 or image_id in pool_index:
                    continue
                if max_images is not None and len(pool_index) >= max_images:
                    break
                pool_index[image_id] = len(pool_index)

    # 3. per block: stats, labels, top lists, heatmaps, icons
    out_blocks = {}
    for block, c in chosen.items():
        analysis, ids = blocks[block], c["ids"]
        stats, top = analysis.stats, analysis.top
        values = _np(top.values)[ids][:, :c["m"]]
        maps = _resize_maps(_np(top.maps)[ids][:, :c["m"]], heat_size)  # [F, m, h, w]
        entry: dict[str, Any] = {
            "n_features": int(c["n"]), "n_live": int(_live_mask(stats).sum()), "shape": list(maps.shape[-2:]),
            "ids": [int(f) for f in ids], "freq": _sig(c["freq"][ids]),
            "mean": _sig(_np(stats.mean)[ids]), "std": _sig(_np(stats.std)[ids]),
        }
        block_labels, block_purity = None, None
        if labels is not None and block in labels:
            block_labels = list(labels[block])
        elif getattr(analysis, "concepts", None) is not None:
            block_labels, block_purity = _concept_labels(analysis.concepts)
        if purity is not None and block in purity:
            block_purity = list(purity[block])
        for name, given in (("label", block_labels), ("purity", block_purity)):
            if given is None:
                continue
            if len(given) != c["n"]:
                raise ReproError(f"{block}: got {len(given)} {name}s for {c['n']} features: give one per feature")
            entry[name] = [str(given[f]) for f in ids] if name == "label" else _sig([given[f] for f in ids], 3)
        tops, vals, heats, hmaxes = [], [], [], []
        for j in range(len(ids)):
            keep = [r for r, i in enumerate(c["top_ids"][j]) if int(i) in pool_index]
            q, hmax = quantise_maps(maps[j, keep])
            tops.append([pool_index[int(c["top_ids"][j, r])] for r in keep])
            vals.append(_sig(values[j, keep], 3))
            heats.append(encode_heat(q))
            hmaxes.append(float(f"{hmax:.6g}"))
        entry.update(top=tops, val=vals, hmax=hmaxes, heat=heats)
        if icons is not None and block in icons:
            kept = set(entry["ids"])
            entry["icon"] = {str(int(f)): encode_thumbnail(np.asarray(im), icon_size, format, quality)
                             for f, im in icons[block].items() if int(f) in kept}
        out_blocks[block] = entry

    pool_ids = sorted(pool_index, key=pool_index.get)
    pool = [encode_thumbnail(np.asarray(get_image(i)), thumb_size, format, quality) for i in pool_ids]
    return {"version": VERSION, "mime": FORMATS[format], "thumb": thumb_size,
            "pool": pool, "pool_ids": pool_ids, "blocks": out_blocks}


# --- synthetic input: demos, tests and size checks ---------------------------------------

def synthetic_image(image_id: int, size: int = 64) -> np.ndarray:
    """A deterministic photo-like uint8 [size, size, 3] image (colour waves, a disc, grain).

    Its WebP thumbnails are about as large as those of real photographs.
    """
    r = np.random.default_rng(int(image_id))
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3))
    for c in range(3):
        a, b, d = r.uniform(-9, 9, 3)
        img[..., c] = 0.5 + 0.4 * np.sin(a * xx + b * yy + d)
    cy, cx, rad = r.uniform(0.2, 0.8), r.uniform(0.2, 0.8), r.uniform(0.1, 0.35)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2] = r.uniform(0, 1, 3)
    img += r.normal(0, 0.07, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def synthetic_analyses(
    blocks: Sequence[str] = ("down.2.1", "up.0.1"),
    n_features: int = 40,
    m: int = 16,
    grid: int = 16,
    n_images: int = 200,
    dead: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """FeatureAnalysis-like objects with random stats, top images and blob-shaped maps.

    A share `dead` of the features never fired (count 0, no top images); top image ids are
    drawn from `n_images` with a skew, so popular images recur across features.
    """
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:grid, 0:grid]
    popularity = 1.0 / np.arange(1, n_images + 1) ** 0.5
    popularity /= popularity.sum()
    out = {}
    for block in blocks:
        n = n_features
        live = rng.random(n) >= dead
        freq = np.where(live, rng.uniform(1e-4, 0.05, n), 0.0)
        mean = np.where(live, rng.uniform(0.5, 5.0, n), 0.0)
        ids = np.stack([rng.choice(n_images, m, replace=False, p=popularity) for _ in range(n)])
        values = np.sort(rng.uniform(0.5, 10.0, (n, m)), 1)[:, ::-1].copy()
        cy, cx = rng.uniform(0, grid, (2, n, m, 1, 1))
        s = rng.uniform(grid / 10, grid / 4, (n, m, 1, 1))
        maps = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        maps = maps * (1 + 0.1 * rng.standard_normal(maps.shape))
        maps = np.where(maps > 0.15, maps, 0.0) * values[:, :, None, None]
        ids[~live], values[~live], maps[~live] = -1, 0.0, 0.0
        stats = SimpleNamespace(
            mean=torch.tensor(mean, dtype=torch.float32), std=torch.tensor(mean / 3, dtype=torch.float32),
            frequency=torch.tensor(freq, dtype=torch.float32), count=torch.tensor(np.ceil(freq * 1e6), dtype=torch.int64),
        )
        top = SimpleNamespace(image_ids=torch.tensor(ids), values=torch.tensor(values, dtype=torch.float32),
                              maps=torch.tensor(maps, dtype=torch.float16))
        out[block] = SimpleNamespace(stats=stats, top=top, concepts=None)
    return out
