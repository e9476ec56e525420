"""RIEBench: representation-based image editing with SAE features (feature transport) and baselines."""

from repro.riebench.data import CATEGORIES, RIEEdit, attach_masks, grid_mask, load_edits
from repro.riebench.methods import METHODS, Grid
from repro.riebench.report import choose_cells, paired_comparisons
from repro.riebench.runner import (
    RIEBenchConfig, RIEBenchResults, category_block_table, load_block_saes, run_benchmark, success_vs_preservation,
)
from repro.riebench.score import ClipScorer, ShapesScorer
from repro.riebench.segment import ClipSegSegmenter
from repro.riebench.shapes import generate_shapes_riebench, shapes_riebench
from repro.riebench.split import choose_edits, split_edits

__all__ = [
    "CATEGORIES", "METHODS", "ClipScorer", "ClipSegSegmenter", "Grid", "RIEBenchConfig", "RIEBenchResults",
    "RIEEdit", "ShapesScorer", "attach_masks", "category_block_table", "choose_cells", "choose_edits",
    "generate_shapes_riebench", "grid_mask", "load_block_saes", "load_edits", "paired_comparisons", "run_benchmark",
    "shapes_riebench", "split_edits", "success_vs_preservation",
]
