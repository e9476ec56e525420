"""GPU check of the fused SAE loss (issue #17): its numbers against the reference, then its speed.

(a) at one size, fused (each main-decode mode) vs reference loss and the four gradients in the
compute dtype (bf16 on CUDA): relative error of each; (b) tokens/s of reference and fused, eager
and CUDA-graphed, per size (`sae_speed.py` does the timing), and fused graphed again with each
main-decode mode forced ("dense", "gather"; `fused.main_decode_mode` picks one), with W_dec
transposed by a copy instead of a GEMM, with torch.topk instead of `fused.topk`'s rule, and with
its float32-output GEMMs switched off (the plain bf16 GEMM + cast), to see which is faster.

    python benchmarks/fused_check.py out.json                       # H200: 5120 20480 81920
    python benchmarks/fused_check.py out.json --cpu-dry-run         # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sae_speed  # noqa: E402

from repro.io import provenance, write_json_atomic  # noqa: E402
from repro.sae import fused  # noqa: E402
from repro.sae.config import SAEConfig  # noqa: E402
from repro.sae.fused import FusedOptions, f32_out_gemm_works, fused_loss  # noqa: E402
from repro.sae.losses import reference_loss  # noqa: E402
from repro.sae.model import TopKSAE  # noqa: E402
from repro.sae.step import resolve_compute_dtype  # noqa: E402

PARAMS = ("W_enc", "b_lat", "W_dec", "b_pre")


def check_numbers(n: int, d: int, batch: int, device: torch.device, cdt: torch.dtype, mode: str) -> dict:
    """Fused vs reference on one batch with 10% dead latents: loss and relative gradient errors."""
    torch.manual_seed(0)  # the same SAE and biases for each mode
    cfg = SAEConfig(d_model=d, n_features=n, k=10, k_aux=min(256, n))
    ref = TopKSAE(cfg, seed=0, device=device)
    with torch.no_grad():
        ref.b_pre.normal_(0, 0.1)
        ref.b_lat.normal_(0, 0.05)
    fus = copy.deepcopy(ref)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, d, generator=gen).to(device)
    dead = (torch.rand(n, generator=gen) < 0.1).to(device)
    r = reference_loss(ref, x, compute_dtype=cdt, force_dead=dead)
    f = fused_loss(fus, x, compute_dtype=cdt, force_dead=dead, options=FusedOptions(main_decode=mode))
    r.loss.backward()
    f.loss.backward()
    rel = {name: float((getattr(fus, name).grad - getattr(ref, name).grad).norm() / getattr(ref, name).grad.norm())
           for name in PARAMS}
    row = {
        "n_features": n, "main_decode": mode, "loss_ref": r.loss.item(), "loss_fused": f.loss.item(), "auxk_ref": float(r.auxk),
        "auxk_fused": float(f.auxk), "idx_equal_frac": float((f.idx == r.idx).float().mean()), "grad_rel_err": rel,
    }
    tol = 2e-2 if cdt != torch.float32 else 1e-4
    row["ok"] = bool(abs(row["loss_fused"] - row["loss_ref"]) <= tol * abs(row["loss_ref"]) and max(rel.values()) <= tol)
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="JSON written here")
    p.add_argument("--n-features", type=int, nargs="+", default=[5120, 20480, 81920])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU, to see that it runs")
    args = p.parse_args(argv)
    if args.cpu_dry_run:
        device, sizes, d, batch, steps, k_aux = torch.device("cpu"), [256], 64, 128, 2, 32
    else:
        device, sizes, d, batch, steps, k_aux = torch.device("cuda"), args.n_features, 1280, 4096, args.steps, 256
    cdt = resolve_compute_dtype("auto", device)
    report = {"numbers": [check_numbers(sizes[0], d, batch, device, cdt, m) for m in ("dense", "gather")],
              "speed": []}
    print(json.dumps(report["numbers"]), flush=True)
    common = ["--device", str(device), "--d-model", str(d), "--batch-size", str(batch), "--steps", str(steps),
              "--warmup", "5", "--k-aux", str(k_aux), "--n-features", *map(str, sizes)]
    # fused graphed with one setting changed from its default at a time (None: the module's own choice)
    runs = [("reference", False, {}), ("reference", True, {}), ("fused", False, {}), ("fused", True, {}),
            ("fused", True, {"main_decode": "dense"}), ("fused", True, {"main_decode": "gather"}),
            ("fused", True, {"main_decode": "gather", "transpose_by_gemm": False}),
            ("fused", True, {"topk": "torch"}), ("fused", True, {"f32_out_gemm": False})]
    for impl, graph, change in runs:
        opts = FusedOptions(**change)
        res = sae_speed.main(common + ["--impl", impl] + (["--graph"] if graph else []),
                             loss_kw={"options": opts} if impl == "fused" else None)
        for row in res["results"]:
            n = row["n_features"]
            used = {"main_decode": fused.main_decode_mode(n, batch, d, 10, opts.main_decode),
                    "topk_chunk_k": fused.topk_chunk(n, 10, opts.topk),
                    "topk_chunk_kaux": fused.topk_chunk(n, min(k_aux, n), opts.topk),
                    "f32_out_gemm_used": opts.f32_out_gemm and device.type == "cuda" and f32_out_gemm_works(device)
                    } if impl == "fused" else {}
            report["speed"].append({"impl": impl, "graph": graph, "changed": change, **used, **row})
    report["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    write_json_atomic(args.out, {**report, "provenance": provenance()})
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
