"""Feature pages as static files, loaded lazily per block and page (no server, no network).

    <folder>/manifest.js            blocks, their sizes, the histogram bins, the strengths
    <folder>/<block>/index.js       live features: ids, label, freq, dens, purity, causal effect
    <folder>/<block>/p<k>.js        records of features k*page_size .. (k+1)*page_size - 1
    <folder>/<block>/riebench.js    times RIEBench selected each feature (repro.features.riebench_counts;
                                    a "has not run" placeholder until 06_riebench overwrites it)
    <folder>/img/<image id>.webp    thumbnails of every image a page shows (each once)
    <folder>/<block>/icon/<f>-<s>.webp, <block>/paint/<f>-{plain,edited}.webp

Each .js file is one call `__reproFeatures("<path>", <JSON>)`: a page opened from disk
(file://) may load scripts and images beside it but may not fetch() JSON, so the data come
as JSON wrapped in a call, read by a `<script>` tag. A feature's page file follows from its
id (`f // page_size`), so a link `#block/feature` loads one index and one page file.

In a live notebook the same files are served from memory through the widget's messages
(`FeatureSite.get`), images as base64.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from repro.errors import ReproError, choices_hint
from repro.features.distribution import BINS_PER_OCTAVE, LOW_EXP
from repro.features.records import BlockFeatures, Labeller, feature_record, rounded
from repro.features.riebench_counts import PART as RIEBENCH, RIEBenchCounts, not_run

VERSION = 1
CALLBACK = "__reproFeatures"
FORMATS = {"webp": "image/webp", "png": "image/png", "jpeg": "image/jpeg"}


def part_file(path: str, obj: Any) -> bytes:
    """The bytes of `<path>.js`: one call `__reproFeatures("<path>", <JSON>)`."""
    return f"{CALLBACK}({json.dumps(path)},{json.dumps(obj, separators=(',', ':'))});\n".encode()


def thumbnail(image: np.ndarray, size: int, format: str = "webp", quality: int = 80) -> bytes:
    """uint8 [H, W, 3] -> an image file of it shrunk to `size` px on its long side.

    WebP/JPEG are lossy (`quality`), PNG lossless: thumbnails only need to be recognisable.
    """
    from PIL import Image

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
    return buf.getvalue()


class FeatureSite:
    """Feature pages of several blocks; `write(folder)` puts them on disk, `get(path)` serves one.

    blocks: block -> BlockFeatures. images: image id -> uint8 [H, W, 3] (top and sampled
    images). page_size: features per page file. thumb: thumbnail side in px. strengths:
    the icon strengths (for the captions). riebench: selection counts, when RIEBench already
    ran on these SAEs (else each block gets the placeholder 06_riebench overwrites).
    """

    def __init__(self, blocks: Mapping[str, BlockFeatures], images: Callable[[int], np.ndarray], *,
                 page_size: int = 64, thumb: int = 64, heat_size: int = 16, format: str = "webp", quality: int = 80,
                 icon_size: int = 128, labeller: Labeller | None = None, bands: int = 3, per_band: int = 4,
                 title: str = "", riebench: RIEBenchCounts | None = None) -> None:
        if not blocks:
            raise ReproError("no blocks: give {block: BlockFeatures(...)} for at least one block")
        if format not in FORMATS:
            raise ReproError(f"unknown image format {format!r}: use {choices_hint(FORMATS)}")
        if page_size < 1:
            raise ReproError(f"page_size must be at least 1, got {page_size}")
        for b, bf in blocks.items():
            bf.check(b)
        self.blocks, self.images = dict(blocks), images
        self.page_size, self.thumb, self.heat_size, self.format = page_size, thumb, heat_size, format
        self.quality, self.icon_size, self.labeller = quality, icon_size, labeller
        self.bands, self.per_band, self.title = bands, per_band, title
        self.ext = format
        self.riebench = riebench
        self._pages: dict[str, dict] = {}

    # ------------------------------------------------------------------ the JSON parts
    def manifest(self) -> dict:
        blocks = {}
        for b, bf in self.blocks.items():
            blocks[b] = {"n_features": bf.n_features, "n_live": int(len(bf.live())), "page_size": self.page_size,
                         "pages": -(-bf.n_features // self.page_size)}
        return {"version": VERSION, "title": self.title, "mime": FORMATS[self.format], "ext": self.ext,
                "thumb": self.thumb, "blocks": blocks,
                "hist": {"low_exp": LOW_EXP, "per_octave": BINS_PER_OCTAVE}}

    def index(self, block: str) -> dict:
        """Live features of `block` and the fields the list searches and sorts by."""
        bf = self.block(block)
        live = bf.live()
        out: dict[str, Any] = {"ids": live.tolist()}
        if bf.stats.frequency is not None:
            out["freq"] = rounded(np.asarray(bf.stats.frequency)[live], 3)
        if bf.distribution is not None:
            out["dens"] = rounded(bf.distribution.image_density.numpy()[live], 3)
        if bf.labels is not None:
            out["label"] = [str(bf.labels[f]) for f in live]
        elif self.labeller is not None:
            out["label"] = [self.page(block, f // self.page_size)["features"][str(f)]["label"] for f in live]
        if bf.purity is not None:
            out["purity"] = rounded([bf.purity[f] for f in live], 3)
        if bf.causal:
            out["causal"] = [bf.causal[f].get("effect") if f in bf.causal else None for f in live.tolist()]
        return out

    def page(self, block: str, k: int) -> dict:
        """Records of the live features with ids in [k * page_size, (k + 1) * page_size)."""
        key = f"{block}/p{k}"
        if key not in self._pages:
            bf = self.block(block)
            lo, hi = k * self.page_size, (k + 1) * self.page_size
            live = [int(f) for f in bf.live() if lo <= f < hi]
            self._pages[key] = {"features": {str(f): feature_record(
                block, f, bf, heat_size=self.heat_size, bands=self.bands, per_band=self.per_band,
                labeller=self.labeller, icon_src=lambda f, s, b=block: f"{b}/icon/{f}-{s:g}.{self.ext}",
                paint_src=lambda f, which, b=block: f"{b}/paint/{f}-{which}.{self.ext}") for f in live}}
        return self._pages[key]

    def riebench_part(self, block: str) -> dict:
        """`<block>/riebench`: the counts given, else the placeholder."""
        self.block(block)
        return self.riebench.part(block) if self.riebench is not None else not_run()

    def block(self, block: str) -> BlockFeatures:
        """The BlockFeatures of `block`, or a ReproError naming the site's blocks."""
        if block not in self.blocks:
            raise ReproError(f"no block {block!r} in the feature pages: use {choices_hint(self.blocks)}")
        return self.blocks[block]

    def json_parts(self) -> Iterator[tuple[str, dict]]:
        yield "manifest", self.manifest()
        for b, bf in self.blocks.items():
            yield f"{b}/index", self.index(b)
            yield f"{b}/{RIEBENCH}", self.riebench_part(b)
            for k in range(-(-bf.n_features // self.page_size)):
                yield f"{b}/p{k}", self.page(b, k)

    # ------------------------------------------------------------------ the images
    def image_ids(self) -> list[int]:
        """Every image id a page shows (top and quantile samples), sorted."""
        ids = set()
        for b in self.blocks:
            for k in range(-(-self.blocks[b].n_features // self.page_size)):
                for rec in self.page(b, k)["features"].values():
                    ids.update(rec["top"]["img"])
                    for band in rec.get("bands", []):
                        ids.update(band["img"])
        return sorted(ids)

    def binary(self, path: str) -> bytes:
        """The image file at `path` (img/<id>.<ext>, <block>/icon/..., <block>/paint/...)."""
        parts = path.rsplit(".", 1)[0].split("/")
        if parts[0] == "img" and len(parts) == 2:
            return thumbnail(self.images(int(parts[1])), self.thumb, self.format, self.quality)
        block, kind, name = "/".join(parts[:-2]), parts[-2], parts[-1]
        bf = self.block(block)
        if kind == "icon":
            f, s = name.split("-")
            image = next(im for st, im in bf.icons[int(f)].items() if f"{float(st):g}" == s)
        elif kind == "paint":
            f, which = name.split("-")
            image = bf.painted[int(f)][which]
        else:
            raise ReproError(f"no image at {path!r} in the feature pages")
        return thumbnail(image, self.icon_size, self.format, self.quality)

    def binary_paths(self) -> Iterator[str]:
        for i in self.image_ids():
            yield f"img/{i}.{self.ext}"
        for b, bf in self.blocks.items():
            for f, by_s in bf.icons.items():
                for s in by_s:
                    yield f"{b}/icon/{f}-{float(s):g}.{self.ext}"
            for f in bf.painted:
                for which in ("plain", "edited"):
                    yield f"{b}/paint/{f}-{which}.{self.ext}"

    # ------------------------------------------------------------------ serving and writing
    def get(self, path: str) -> Any:
        """A JSON part ("manifest", "<block>/index", "<block>/p<k>", "<block>/riebench") or an image
        (bytes) by path."""
        if path == "manifest":
            return self.manifest()
        block, _, name = path.rpartition("/")
        if name == "index":
            return self.index(block)
        if name == RIEBENCH:
            return self.riebench_part(block)
        if name.startswith("p") and name[1:].isdigit():
            return self.page(block, int(name[1:]))
        return self.binary(path)

    def write(self, folder: str | os.PathLike) -> dict:
        """Write every file under `folder` (replacing its earlier contents); returns sizes and time."""
        import shutil

        started = time.perf_counter()
        folder = Path(folder)
        if folder.exists():
            shutil.rmtree(folder)
        sizes = {"json": 0, "images": 0, "files": 0}
        for path, obj in self.json_parts():
            data = part_file(path, obj)
            _write(folder / f"{path}.js", data)
            sizes["json"] += len(data)
            sizes["files"] += 1
        for path in self.binary_paths():
            data = self.binary(path)
            _write(folder / path, data)
            sizes["images"] += len(data)
            sizes["files"] += 1
        sizes["seconds"] = round(time.perf_counter() - started, 2)
        return sizes


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def read_part(folder: str | os.PathLike, path: str) -> Any:
    """The JSON of a written part (`manifest`, `<block>/index`, `<block>/p<k>`, `<block>/riebench`),
    for tests and tools."""
    text = (Path(folder) / f"{path}.js").read_text()
    prefix = f"{CALLBACK}({json.dumps(path)},"
    if not text.startswith(prefix):
        raise ReproError(f"{path}.js under {folder} is not a feature-pages file")
    return json.loads(text[len(prefix):].rstrip().removesuffix(");"))


__all__ = ["CALLBACK", "FORMATS", "FeatureSite", "part_file", "read_part"]
