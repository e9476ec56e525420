"""Prompt following of a trained pair of ShapesWorld pipelines and their VAE's ceiling, in one process.

    python benchmarks/toy_eval.py MODELS_DIR [--n 500] [--out evals.json]

MODELS_DIR holds shapes-base/ and shapes-turbo/ (either may be missing). Scores (oracle,
n held-out test-split captions, one seed each): the VAE's reconstructions of the renders,
shapes-turbo at 1 and 4 steps, shapes-base at 25 Euler steps with guidance 5 - the targets
of issue #14 (97 / 95 / 95 / 90 % all right).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from repro.io import provenance, write_json_atomic
    from repro.models.loading import load_pipeline
    from repro.shapes.oracle import load_oracle
    from repro.cli.toy import toy_prompt_following
    from repro.shapes.scoring import vae_ceiling

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, choices=("shapes-turbo", "shapes-base"), help="score this model alone")
    args = ap.parse_args()
    models = Path(args.models)
    results: dict = {}
    oracle = None
    runs = {"shapes-turbo": [(1, 0.0), (4, 0.0)], "shapes-base": [(25, 5.0)]}
    for name, settings in runs.items():
        if not (models / name).exists() or (args.only and name != args.only):
            continue
        pipe = load_pipeline(str(models / name), device=args.device)
        oracle = oracle or load_oracle(device=pipe.device)
        if name == "shapes-base":
            results["vae"] = vae_ceiling(pipe.vae, oracle, n=args.n)
            print(json.dumps({"vae": results["vae"]}), flush=True)
        for steps, guidance in settings:
            key = f"{name}/{steps}-step" + (f"/guidance-{guidance:g}" if guidance else "")
            results[key] = toy_prompt_following(pipe, oracle, n=args.n, steps=steps, guidance=guidance)
            print(json.dumps({key: results[key]}), flush=True)
    if args.out:
        write_json_atomic(Path(args.out), {**results, "provenance": provenance()})


if __name__ == "__main__":
    main()
