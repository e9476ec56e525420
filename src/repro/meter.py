"""What a run costs: images generated, SAE tokens trained, time spent, peak memory.

Counters live for the whole process (one notebook kernel, one CLI command). `generate`
and `train_saes` add to them; `write_results` stores `snapshot()` beside every chapter's
numbers, so the cost of each chapter is recorded where its results are (and
`benchmarks/paper_profile.py` turns those into the per-chapter table).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Meter:
    started: float = field(default_factory=time.perf_counter)
    images: int = 0
    """Images generated (one per prompt, whatever the number of steps)."""
    image_seconds: float = 0.0
    """Wall time inside generation calls (text encoding, denoising, decoding if asked)."""
    unet_evaluations: int = 0
    """Images x steps x (2 with guidance): the work that scales with sampling settings."""
    sae_tokens: int = 0
    """Token rows trained on, per block (every SAE of a run sees the same rows)."""
    sae_blocks: int = 0
    """SAEs trained side by side in the last training run."""
    sae_seconds: float = 0.0
    analysed_tokens: int = 0
    """Token rows encoded by feature analysis (summed over blocks), store reading included."""
    analysis_seconds: float = 0.0

    def snapshot(self) -> dict:
        """Rates and peaks so far: JSON-ready."""
        wall = time.perf_counter() - self.started
        gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
        # ru_maxrss is KiB on Linux, bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return {
            "wall_s": round(wall, 2),
            "images": self.images,
            "image_seconds": round(self.image_seconds, 2),
            "images_per_s": round(self.images / self.image_seconds, 3) if self.image_seconds else None,
            "unet_evaluations": self.unet_evaluations,
            "sae_tokens_per_block": self.sae_tokens,
            "sae_blocks": self.sae_blocks,
            "sae_seconds": round(self.sae_seconds, 2),
            "sae_tokens_per_s_per_block": round(self.sae_tokens / self.sae_seconds) if self.sae_seconds else None,
            "analysed_tokens": self.analysed_tokens,
            "analysis_seconds": round(self.analysis_seconds, 2),
            "analysed_tokens_per_s": round(self.analysed_tokens / self.analysis_seconds) if self.analysis_seconds else None,
            "peak_gpu_memory_gib": round(max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**30, 2) if gpu else None,
            "peak_gpu_reserved_gib": round(max(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count())) / 2**30, 2) if gpu else None,
            "gpu": torch.cuda.get_device_name() if gpu else None,
            "peak_host_memory_gib": round(rss / 2**30, 2),
        }


METER = Meter()
"""The process-wide meter."""


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def metered_images(n: int, unet_evaluations: int, device="cpu"):
    """Count `n` images made inside the block (its wall time, the GPU work finished)."""
    start = time.perf_counter()
    yield
    _sync(device)
    METER.images += n
    METER.unet_evaluations += unet_evaluations
    METER.image_seconds += time.perf_counter() - start


def add_images(n: int, unet_evaluations: int, seconds: float) -> None:
    """Count `n` images made without a sync (the direct loop): `seconds` is the host's time,
    which on a GPU can end before the GPU's work does."""
    METER.images += int(n)
    METER.unet_evaluations += int(unet_evaluations)
    METER.image_seconds += float(seconds)


def add_sae_training(tokens: int, blocks: int, seconds: float) -> None:
    METER.sae_tokens += int(tokens)
    METER.sae_blocks = int(blocks)
    METER.sae_seconds += float(seconds)


def add_sae_analysis(tokens: int, seconds: float) -> None:
    METER.analysed_tokens += int(tokens)
    METER.analysis_seconds += float(seconds)
