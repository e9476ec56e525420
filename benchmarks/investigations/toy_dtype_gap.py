"""Does the compute dtype explain why the 1-step turbo scores ~2 points lower on a GPU (issue #27 item 8)?

    python benchmarks/investigations/toy_dtype_gap.py N OUT.json [DEVICE]   # DEVICE: cpu (default), cuda

On the CPU, the same N held-out captions and seeds through shapes-turbo (1 step) in float32,
float16 (the dtype `auto` picks on a GPU) and bfloat16; the oracle scores each image; per
image, "all attributes right" is compared between float32 and each other dtype by an exact
McNemar test on the discordant pairs. If float16 alone cost the GPU its ~2 points, float16 on
the CPU would lose them too; if it does not, the gap is in the GPU's kernels (reduced-precision
reductions, attention and convolution algorithms), not in the format. On CUDA a fourth setting,
float32 with TF32 off for convolutions and matmuls ("float32-strict"; PyTorch lets cuDNN use TF32
for float32 convolutions by default), tells a TF32 effect from a float32 one; every setting is
compared with float32-strict there. Each image's "all right" is kept (`right`), for paired
comparisons across runs on the same captions and seeds.
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
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    cuda = device.startswith("cuda")
    profile = get_profile("toy")
    scenes, captions = heldout_captions(n, seed=1)
    seeds = list(range(n))
    oracle = load_oracle()
    if cuda:
        torch.cuda.init()  # before provenance, which names the device
    result: dict = {"n": n, "model": profile.turbo_model, "sampling": "turbo (1 step)", "device": device,
                    "provenance": provenance()}
    right = {}
    settings = ["float32-strict"] * cuda + ["float32", "float16", "bfloat16"]
    for setting in settings:
        t0 = time.perf_counter()
        strict = setting == "float32-strict"
        if cuda:
            torch.backends.cudnn.allow_tf32 = not strict  # PyTorch's default: True
            torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default
        pipe = load_pipeline(profile.turbo_model, device=device, dtype=setting.removesuffix("-strict"))
        pf = prompt_following(pipeline_generator(pipe, profile.turbo), oracle, scenes, captions, seeds, batch_size=50)
        right[setting] = np.array([bool(h["all"]) for h in pf.hits])
        k = int(right[setting].sum())
        result[setting] = {"scores": pf.scores, "all_right": rate(k, n), "seconds": round(time.perf_counter() - t0, 1),
                           "right": right[setting].astype(int).tolist()}
        print(setting, f"{pf.scores['all']:.3f}", flush=True)
    reference = settings[0]
    for dtype in settings[1:]:
        a, b = right[reference], right[dtype]
        only_fp32, only_other = int((a & ~b).sum()), int((~a & b).sum())
        result[f"{reference}_vs_{dtype}"] = {f"only_{reference}_right": only_fp32, f"only_{dtype}_right": only_other,
                                         "difference": (only_other - only_fp32) / n,
                                         "mcnemar_p": mcnemar_exact(only_fp32, only_other)}
    write_json_atomic(out_path, result)
    print(json.dumps({k: v for k, v in result.items() if "_vs_" in k}, indent=1))


if __name__ == "__main__":
    main()
