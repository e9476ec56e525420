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

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from repro.errors import ReproError, choices_hint
from repro.features.browser_data import FORMATS, _sig, encode_thumbnail
from repro.features.pages import BlockFeatures, Labeller, feature_record
from repro.features.profile import BINS_PER_OCTAVE, LOW_EXP
from repro.features.riebench_counts import PART as RIEBENCH, RIEBenchCounts, not_run

VERSION = 1
CALLBACK = "__reproFeatures"


def _file(path: str, obj: Any) -> bytes:
    return f"{CALLBACK}({json.dumps(path)},{json.dumps(obj, separators=(',', ':'))});\n".encode()


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
        bf = self._block(block)
        live = bf.live()
        out: dict[str, Any] = {"ids": live.tolist()}
        if bf.stats.frequency is not None:
            out["freq"] = _sig(np.asarray(bf.stats.frequency)[live], 3)
        if bf.profile is not None:
            out["dens"] = _sig(bf.profile.image_density.numpy()[live], 3)
        if bf.labels is not None:
            out["label"] = [str(bf.labels[f]) for f in live]
        elif self.labeller is not None:
            out["label"] = [self.page(block, f // self.page_size)["features"][str(f)]["label"] for f in live]
        if bf.purity is not None:
            out["purity"] = _sig([bf.purity[f] for f in live], 3)
        if bf.causal:
            out["causal"] = [bf.causal[f].get("effect") if f in bf.causal else None for f in live.tolist()]
        return out

    def page(self, block: str, k: int) -> dict:
        """Records of the live features with ids in [k * page_size, (k + 1) * page_size)."""
        key = f"{block}/p{k}"
        if key not in self._pages:
            bf = self._block(block)
            lo, hi = k * self.page_size, (k + 1) * self.page_size
            live = [int(f) for f in bf.live() if lo <= f < hi]
            self._pages[key] = {"features": {str(f): feature_record(
                block, f, bf, heat_size=self.heat_size, bands=self.bands, per_band=self.per_band,
                labeller=self.labeller, icon_src=lambda f, s, b=block: f"{b}/icon/{f}-{s:g}.{self.ext}",
                paint_src=lambda f, which, b=block: f"{b}/paint/{f}-{which}.{self.ext}") for f in live}}
        return self._pages[key]

    def riebench_part(self, block: str) -> dict:
        """`<block>/riebench`: the counts given, else the placeholder."""
        self._block(block)
        return self.riebench.part(block) if self.riebench is not None else not_run()

    def _block(self, block: str) -> BlockFeatures:
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
        import base64

        parts = path.rsplit(".", 1)[0].split("/")
        if parts[0] == "img" and len(parts) == 2:
            return base64.b64decode(encode_thumbnail(np.asarray(self.images(int(parts[1]))), self.thumb,
                                                     self.format, self.quality))
        block, kind, name = "/".join(parts[:-2]), parts[-2], parts[-1]
        bf = self._block(block)
        if kind == "icon":
            f, s = name.split("-")
            image = next(im for st, im in bf.icons[int(f)].items() if f"{float(st):g}" == s)
        elif kind == "paint":
            f, which = name.split("-")
            image = bf.painted[int(f)][which]
        else:
            raise ReproError(f"no image at {path!r} in the feature pages")
        return base64.b64decode(encode_thumbnail(np.asarray(image), self.icon_size, self.format, self.quality))

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
            data = _file(path, obj)
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


# --- synthetic input: tests and the paper-scale benchmark ------------------------------------

def synthetic_blocks(blocks=("down.2.1", "mid.0", "up.0.0", "up.0.1"), n_features: int = 40, m: int = 16,
                     grid: int = 16, n_images: int = 200, sample: int = 32, d_model: int = 64, dead: float = 0.1,
                     labels: bool = True, seed: int = 0) -> dict[str, BlockFeatures]:
    """BlockFeatures with the shapes the chapter produces, from random numbers (`synthetic_analyses`
    for stats and top images, a random profile, random unit decoders for the neighbours,
    two settings of per-step means; ShapesWorld-like labels if `labels`)."""
    import torch

    from repro.features.browser_data import synthetic_analyses
    from repro.features.neighbours import decoder_neighbours
    from repro.features.profile import HIST_EDGES, FeatureProfile

    rng = np.random.default_rng(seed)
    analyses = synthetic_analyses(blocks, n_features=n_features, m=m, grid=grid, n_images=n_images, dead=dead, seed=seed)
    decoders = {b: type("D", (), {"W_dec": torch.from_numpy(rng.standard_normal((d_model, n_features)).astype(np.float32))})()
                for b in blocks}
    nbrs = decoder_neighbours(decoders, k=5)
    n_bins = len(HIST_EDGES) - 1
    out = {}
    for b, a in analyses.items():
        live = a.stats.count.numpy() > 0
        peak = rng.integers(n_bins // 3, 2 * n_bins // 3, n_features)
        bins = np.arange(n_bins)
        hist = np.rint(1e4 * np.exp(-0.5 * ((bins[None] - peak[:, None]) / 4.0) ** 2)).astype(np.int64) * live[:, None]
        ids = rng.integers(0, n_images, (n_features, sample))
        ids[~live] = -1
        values = rng.uniform(0.1, 5.0, (n_features, sample)).astype(np.float32) * live[:, None]
        maps = np.clip(rng.standard_normal((n_features, sample, grid, grid)), 0, None) * values[:, :, None, None]
        profile = FeatureProfile(image_count=torch.from_numpy(np.rint(a.stats.frequency.numpy() * 40 * n_images).astype(np.int64)),
                                 n_images=n_images, hist=torch.from_numpy(hist), sample_ids=torch.from_numpy(ids),
                                 sample_values=torch.from_numpy(values), sample_maps=torch.from_numpy(maps).half())
        names = ["colour=red", "shape=circle", "texture=striped", "style=watercolour", "size=large"]
        purity = rng.uniform(0.2, 1.0, n_features)
        causal = {int(f): {"label": names[f % 5], "s": 10.0, "on": float(p), "off": 0.5, "control_on": 0.1,
                           "effect": round(float(p) - 0.1, 4)} for f, p in zip(np.flatnonzero(live)[:8], purity)}
        out[b] = BlockFeatures(
            stats=a.stats, top=a.top, profile=profile,
            labels=[names[f % 5] if live[f] else "" for f in range(n_features)] if labels else None,
            purity=purity.tolist() if labels else None, f1=(purity * 0.8).tolist() if labels else None,
            causal=causal if labels else None,
            steps={"turbo, 4 steps": {"all": torch.from_numpy(rng.uniform(0, 1, (4, n_features)).astype(np.float32))},
                   "base": {h: torch.from_numpy(rng.uniform(0, 1, (20, n_features)).astype(np.float32))
                            for h in ("cond", "uncond")}},
            neighbours=nbrs[b])
    return out


def synthetic_riebench(blocks: Mapping[str, BlockFeatures], edits: int = 12, seed: int = 0) -> RIEBenchCounts:
    """Random selection counts of two categories for `blocks` (tests and the benchmark)."""
    import torch

    rng = np.random.default_rng(seed)
    cats = ("change colour", "change style")
    counts = {b: {c: torch.from_numpy(np.minimum(rng.poisson(0.3, bf.n_features), edits)) for c in cats}
              for b, bf in blocks.items()}
    return RIEBenchCounts(counts=counts, edits={c: edits for c in cats}, k=32, sae="saes (synthetic)")


__all__ = ["CALLBACK", "FeatureSite", "read_part", "synthetic_blocks", "synthetic_riebench"]
