"""Positive controls and power of the causality test on the toy (issue #27): planted mean-difference
directions, isotropic and data-shaped random directions, paired McNemar tests, per block and family.

    python benchmarks/toy_positive_controls.py --out results/positive_controls.json \\
        [--blocks up.0.1 mid.0] [--families colour shape texture size] [--n 24] [--n-dev 96] \\
        [--strengths 0.5 1 2 4]   # fixed strengths (multiples of each direction's norm) instead of calibrating

Writes JSON: argv, device, provenance, the table (one row per block, label, direction kind
and strength; `repro.features.positive_controls.positive_controls`), the calibration, and the
detection power of the planted directions per block and family (`detection_power`).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--model", default="shapes-turbo")
    ap.add_argument("--blocks", nargs="+", default=["up.1.0", "up.1.1", "mid.0", "up.0.1"])
    ap.add_argument("--families", nargs="+", default=["colour", "shape", "texture", "size"])
    ap.add_argument("--per-family", type=int, default=1, help="values per family (the first ones in the world's order)")
    ap.add_argument("--n", type=int, default=24, help="held-out scenes per (block, label)")
    ap.add_argument("--n-dev", type=int, default=96, help="dev (train-split) scenes for the directions")
    ap.add_argument("--n-calibration", type=int, default=24)
    ap.add_argument("--n-strengths", type=int, default=8)
    ap.add_argument("--strengths", type=float, nargs="*", default=None)
    ap.add_argument("--kinds", nargs="+", default=None, help="default: planted, isotropic random, data-shaped random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from repro.features.positive_controls import KINDS, default_labels, detection_power, positive_controls
    from repro.generate import Sampling
    from repro.io import provenance, writable_file, write_json_atomic
    from repro.models.loading import load_pipeline
    from repro.shapes.oracle import load_oracle

    writable_file(args.out)
    pipe = load_pipeline(args.model, device=args.device)
    oracle = load_oracle(device=pipe.device)
    labels = default_labels(args.families, args.per_family)
    t0 = time.perf_counter()
    table = positive_controls(pipe, oracle, args.blocks, labels, Sampling(steps=1, guidance=0.0), n=args.n,
                              n_dev=args.n_dev, n_calibration=args.n_calibration, strengths=args.strengths,
                              n_strengths=args.n_strengths, kinds=tuple(args.kinds or KINDS), seed=args.seed,
                              batch_size=args.batch_size, progress=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - t0
    power = {by: detection_power(table, by=cols).to_dict(orient="records")
             for by, cols in (("block_family", ("block", "family")), ("block", ("block",)), ("family", ("family",)))}
    power_bonferroni = detection_power(table, by=("block",), column="detected_bonferroni").to_dict(orient="records")
    shaped_false_positives = detection_power(table, kind="data-shaped random", by=("block",)).to_dict(orient="records")
    write_json_atomic(args.out, {
        "argv": sys.argv if argv is None else ["benchmarks/toy_positive_controls.py", *argv],
        "device": str(pipe.device), "seconds": seconds, "provenance": provenance(),
        "labels": labels, "calibration": table.attrs["calibration"], "directions": table.attrs["directions"],
        "detection_power": power, "detection_power_bonferroni": power_bonferroni,
        "data_shaped_detected": shaped_false_positives,
        "table": table.to_dict(orient="records"),
    })
    print(f"{len(table)} rows in {seconds:.0f} s -> {args.out}")
    for by, recs in power.items():
        print(by, recs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
