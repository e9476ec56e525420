"""Draw a Scene into a 128x128 RGB image together with its exact ground-truth masks.

Rendering is a pure function of the scene (no anti-aliasing, no hidden randomness: the
grain of the "grainy" style is seeded by the scene's own digest), so the same scene always
gives the same pixels and every object pixel lies inside that object's mask.

Geometry: the canvas is cut into a 3x3 grid of 42.7 px cells; slot `top` is the
top-middle cell, `left` the middle-left one, and so on. A large object spans 40 px, a
small one 24 px, centred in its cell, so objects in different slots never touch.
Textures are laid out around the object's centre with a 12 px period (stripes and
checks 6 px on / 6 px off, dots every 10 px): legible at 128 px and still 2.5-3 latent
pixels per period after a 4x downsampling.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from repro.errors import ReproError, choices_hint
from repro.shapes.world import BACKGROUNDS, COLOURS, POSITIONS, Scene, ShapeObject

IMAGE_SIZE = 128
GRID = 3  # slots live on a 3x3 grid of cells
SLOT_CELL = {"top": (0, 1), "left": (1, 0), "centre": (1, 1), "right": (1, 2), "bottom": (2, 1)}  # (row, col)
OBJECT_PX = {"small": 24, "large": 40}
STRIPE_HALF = 6  # stripes and checks: 6 px on, 6 px off
DOT_PERIOD, DOT_RADIUS = 10, 2.6
OUTLINE_PX = 3
GRAIN_SIGMA, GRAIN_BLOCK = 30.0, 2  # luminance grain in 2x2 blocks survives mild blur


def slot_centre(position: str) -> tuple[float, float]:
    """(x, y) pixel centre of a slot's cell."""
    row, col = SLOT_CELL[position]
    cell = IMAGE_SIZE / GRID
    return (col + 0.5) * cell, (row + 0.5) * cell


@functools.lru_cache(maxsize=None)
def _shape_mask(shape: str, orientation: str | None, size: str, position: str) -> np.ndarray:
    """bool [H, W]: the object's silhouette on the canvas (cached: only 120 exist)."""
    cx, cy = slot_centre(position)
    s = OBJECT_PX[size]
    h = s / 2
    x0, y0, x1, y1 = cx - h, cy - h, cx + h - 1, cy + h - 1
    img = Image.new("1", (IMAGE_SIZE, IMAGE_SIZE), 0)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=1)
    elif shape == "square":
        m = 0.07 * s  # a square a bit smaller than its box, so its area is close to the circle's
        d.rectangle([x0 + m, y0 + m, x1 - m, y1 - m], fill=1)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=1)
    elif shape == "cross":
        a = s / 6  # arm half-width: arms one third of the box wide
        d.rectangle([cx - a, y0, cx + a - 1, y1], fill=1)
        d.rectangle([x0, cy - a, x1, cy + a - 1], fill=1)
    elif shape == "triangle":
        apex_base = {
            "up": [(cx, y0), (x0, y1), (x1, y1)],
            "down": [(cx, y1), (x0, y0), (x1, y0)],
            "left": [(x0, cy), (x1, y0), (x1, y1)],
            "right": [(x1, cy), (x0, y0), (x0, y1)],
        }
        d.polygon(apex_base[orientation], fill=1)
    elif shape == "semicircle":
        # A half disc of diameter s whose flat side faces away from `orientation`,
        # centred in its box (it is s wide and s/2 deep).
        r = h
        q = s / 4
        fx, fy, start = {
            "up": (cx, cy + q, 180),
            "down": (cx, cy - q, 0),
            "left": (cx + q, cy, 90),
            "right": (cx - q, cy, 270),
        }[orientation]
        d.pieslice([fx - r, fy - r, fx + r - 1, fy + r - 1], start, start + 180, fill=1)
    else:  # pragma: no cover - ShapeObject validates shapes
        raise ReproError(f"unknown shape {shape!r}")
    mask = np.array(img, dtype=bool)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=None)
def _texture_pattern(texture: str, position: str) -> np.ndarray:
    """bool [H, W]: where the texture's second tone goes, laid out around the slot centre."""
    cx, cy = slot_centre(position)
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    u = xs + 0.5 - cx
    v = ys + 0.5 - cy
    if texture == "solid":
        pat = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    elif texture == "striped":
        pat = np.floor(v / STRIPE_HALF + 0.5).astype(int) % 2 == 1
    elif texture == "checkered":
        pat = (np.floor(u / STRIPE_HALF).astype(int) + np.floor(v / STRIPE_HALF).astype(int)) % 2 == 1
    elif texture == "dotted":
        du = (u + DOT_PERIOD / 2) % DOT_PERIOD - DOT_PERIOD / 2
        dv = (v + DOT_PERIOD / 2) % DOT_PERIOD - DOT_PERIOD / 2
        pat = du**2 + dv**2 <= DOT_RADIUS**2
    else:  # pragma: no cover
        raise ReproError(f"unknown texture {texture!r}")
    pat.setflags(write=False)
    return pat


@functools.lru_cache(maxsize=None)
def _outline(shape: str, orientation: str | None, size: str, position: str) -> np.ndarray:
    """bool [H, W]: the inner rim of the silhouette, OUTLINE_PX wide (mask minus its erosion)."""
    mask = _shape_mask(shape, orientation, size, position)
    inner = mask.copy()
    for _ in range(OUTLINE_PX):  # erosion by a 3x3 cross, repeated
        e = inner.copy()
        e[1:, :] &= inner[:-1, :]
        e[:-1, :] &= inner[1:, :]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        inner = e
    rim = mask & ~inner
    rim.setflags(write=False)
    return rim


def object_mask(obj: ShapeObject) -> np.ndarray:
    """bool [128, 128]: the pixels `obj` covers (read-only, cached)."""
    return _shape_mask(obj.shape, obj.orientation, obj.size, obj.position)


def _second_tone(rgb: np.ndarray, background: str) -> np.ndarray:
    # Darker shade of the object colour, or lighter on a black background, so that the
    # texture never blends into the background at the object's edge.
    if background == "black":
        return rgb + 0.55 * (255 - rgb)
    return 0.4 * rgb


@dataclass
class Rendered:
    """One rendered scene and its ground truth."""

    image: np.ndarray
    """uint8 [H, W, 3]."""
    masks: np.ndarray
    """bool [n_objects, H, W], in `scene.objects` order."""
    background: np.ndarray
    """bool [H, W]: pixels no object covers."""
    scene: Scene


def render(scene: Scene) -> Rendered:
    """Draw `scene`: uint8 [128, 128, 3] image, bool [n, 128, 128] object masks, background mask."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    masks = []
    for obj in scene.objects:
        mask = object_mask(obj)
        rgb = np.asarray(COLOURS[obj.colour], np.float32)
        pat = _texture_pattern(obj.texture, obj.position)
        img[mask & ~pat] = rgb
        img[mask & pat] = _second_tone(rgb, scene.background)
        if scene.style == "outline":
            img[_outline(obj.shape, obj.orientation, obj.size, obj.position)] = (
                (235, 235, 235) if scene.background == "black" else (20, 20, 20)
            )
        masks.append(mask)
    if scene.style == "grainy":
        rng = np.random.default_rng(scene.digest())
        n = IMAGE_SIZE // GRAIN_BLOCK
        grain = rng.normal(0.0, GRAIN_SIGMA, (n, n, 1)).astype(np.float32)
        img += np.repeat(np.repeat(grain, GRAIN_BLOCK, 0), GRAIN_BLOCK, 1)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    masks_arr = np.stack(masks)
    return Rendered(image=image, masks=masks_arr, background=~masks_arr.any(0), scene=scene)


@dataclass
class RenderBatch:
    """Many rendered scenes: images and a label map that holds every mask in one byte per pixel."""

    images: np.ndarray
    """uint8 [N, H, W, 3]."""
    labels: np.ndarray | None
    """uint8 [N, H, W]: 0 = background, i + 1 = pixels of `scenes[n].objects[i]`; None if not asked for."""

    def masks(self, n: int) -> np.ndarray:
        """bool [n_objects, H, W] for scene n (object i is label i + 1)."""
        lab = self.labels[n]
        k = int(lab.max())
        return np.stack([lab == i + 1 for i in range(k)])


# Worker processes write straight into shared buffers (pickling 48 KB per image back
# through a pipe costs more than rendering it).
_SHARED: dict = {}


def _init_worker(images, labels, dicts, with_masks) -> None:
    _SHARED.update(images=images, labels=labels, dicts=dicts, with_masks=with_masks)


def _views(images_buf, labels_buf, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    images = np.frombuffer(images_buf, np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE, 3)
    labels = None
    if labels_buf is not None:
        labels = np.frombuffer(labels_buf, np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)
    return images, labels


def _render_into(images: np.ndarray, labels: np.ndarray | None, dicts: list[dict], lo: int, hi: int) -> None:
    for i in range(lo, hi):
        r = render(Scene.from_dict(dicts[i]))
        images[i] = r.image
        if labels is not None:
            lab = labels[i]
            lab[:] = 0
            for j, m in enumerate(r.masks):
                lab[m] = j + 1


def _render_range(bounds: tuple[int, int]) -> None:
    dicts = _SHARED["dicts"]
    images, labels = _views(_SHARED["images"], _SHARED["labels"], len(dicts))
    _render_into(images, labels, dicts, *bounds)


def render_batch(scenes: list[Scene], workers: int | None = None, with_masks: bool = True) -> RenderBatch:
    """Render many scenes: images uint8 [N, 128, 128, 3] and labels uint8 [N, 128, 128].

    workers: processes to use (default: all cores once N >= 2000; one process below that,
    where starting a pool costs more than it saves). Output is identical for any `workers`.
    Several workers need the "fork" start method (Linux); elsewhere it renders in-process.
    """
    scenes = list(scenes)
    n = len(scenes)
    if workers is None:
        workers = (os.cpu_count() or 1) if n >= 2000 else 1
    if workers < 1:
        raise ReproError(f"workers must be >= 1, not {workers}")
    dicts = [s.to_dict() for s in scenes]
    if workers == 1 or n < 2 * workers or "fork" not in mp.get_all_start_methods():
        images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        labels = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8) if with_masks else None
        _render_into(images, labels, dicts, 0, n)
        return RenderBatch(images, labels)
    ctx = mp.get_context("fork")
    images_buf = ctx.RawArray("B", n * IMAGE_SIZE * IMAGE_SIZE * 3)
    labels_buf = ctx.RawArray("B", n * IMAGE_SIZE * IMAGE_SIZE) if with_masks else None
    cuts = np.linspace(0, n, workers * 4 + 1).astype(int)
    ranges = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    with ctx.Pool(workers, initializer=_init_worker, initargs=(images_buf, labels_buf, dicts, with_masks)) as pool:
        pool.map(_render_range, ranges)
    images, labels = _views(images_buf, labels_buf, n)
    return RenderBatch(images, labels)


def downsample_mask(mask: np.ndarray, grid: int = 8, mode: str = "fraction") -> np.ndarray:
    """Pool bool masks [..., H, W] onto a grid x grid feature map (SAE features: 8x8 at 128 px).

    mode "fraction": float32 [..., grid, grid], the share of each cell's pixels in the mask.
    mode "majority": bool [..., grid, grid], True where more than half the cell is in the mask.
    """
    modes = ("fraction", "majority")
    if mode not in modes:
        raise ReproError(f"unknown mode {mode!r}: use {choices_hint(modes)}")
    h, w = mask.shape[-2:]
    if h % grid or w % grid:
        raise ReproError(f"a {h}x{w} mask does not split into a {grid}x{grid} grid; use a grid dividing {h}")
    m = np.asarray(mask, np.float32).reshape(*mask.shape[:-2], grid, h // grid, grid, w // grid)
    frac = m.mean(axis=(-3, -1))
    return frac > 0.5 if mode == "majority" else frac
