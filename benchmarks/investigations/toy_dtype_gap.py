"""Does the compute dtype explain why the 1-step turbo scores ~2 points lower on a GPU (issue #27 item 8)?

    python benchmarks/investigations/toy_dtype_gap.py N OUT.json

On the CPU, the same N held-out captions and seeds through shapes-turbo (1 step) in float32,
float16 (the dtype `auto` picks on a GPU) and bfloat16; the oracle scores each image; per
image, "all attributes right" is compared between float32 and each other dtype by an exact
McNemar test on the discordant pairs. If float16 alone cost the GPU its ~2 points, float16 on
the CPU would lose them too; if it does not, the gap is in the GPU's kernels (reduced-precision
reductions, attention and convolution algorithms), not in the format.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import torch

    from repro.intervals import mcnemar_exact, rate
    from repro.io import provenance, write_json_atomic
    from repro.models.loading import load_pipeline
    from repro.profiles import get_profile
    from repro.shapes.scoring import heldout_captions, pipeline_generator, prompt_following
    from repro.shapes.oracle import load_oracle

    n, out_path = int(sys.argv[1]), Path(sys.argv[2])
    profile = get_profile("toy")
    scenes, captions = heldout_captions(n, seed=1)
    seeds = list(range(n))
    oracle = load_oracle()
    result: dict = {"n": n, "model": profile.turbo_model, "sampling": "turbo (1 step)", "provenance": provenance()}
    right = {}
    for dtype in ("float32", "float16", "bfloat16"):
        t0 = time.perf_counter()
        pipe = load_pipeline(profile.turbo_model, device="cpu", dtype=dtype)
        pf = prompt_following(pipeline_generator(pipe, profile.turbo), oracle, scenes, captions, seeds, batch_size=50)
        right[dtype] = np.array([bool(h["all"]) for h in pf.hits])
        k = int(right[dtype].sum())
        result[dtype] = {"scores": pf.scores, "all_right": rate(k, n), "seconds": round(time.perf_counter() - t0, 1)}
        print(dtype, f"{pf.scores['all']:.3f}", flush=True)
    for dtype in ("float16", "bfloat16"):
        a, b = right["float32"], right[dtype]
        only_fp32, only_other = int((a & ~b).sum()), int((~a & b).sum())
        result[f"float32_vs_{dtype}"] = {"only_float32_right": only_fp32, f"only_{dtype}_right": only_other,
                                         "difference": (only_other - only_fp32) / n,
                                         "mcnemar_p": mcnemar_exact(only_fp32, only_other)}
    write_json_atomic(out_path, result)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("float32_vs")}, indent=1))


if __name__ == "__main__":
    main()
