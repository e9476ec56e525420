"""Concept detection on the toy: trained SAE features against a random SAE and a linear-probe
ceiling, per block and concept family, under the coverage labelling of `repro.features.toy_concepts`.

    python benchmarks/investigations/toy_labels.py [--n-test 200] [--n-train 400] [--sae-steps 400] [--out FILE]

Captures the four blocks of shapes-turbo (1 step, CPU) for `--n-train` train-split scenes and
`--n-test` held-out (test-split) scenes, trains one small TopK SAE per block on the train
scenes' updates (`train_saes`, lr scaled to the dictionary), then scores on the held-out scenes
with `concept_detection_table` (dev = even image ids, test = odd). Writes JSON with provenance (argv, device, commit): the
median best-F1 (and AUROC) per block, detector and family, the whole table, and the purity
summary of `label_features` under the new labels and under the old majority labels.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

BLOCKS = ("down.2.1", "mid.0", "up.0.0", "up.0.1")


def capture(pipe, prompts: list[str], seed: int, batch: int = 16) -> dict[str, torch.Tensor]:
    """{block: [N, H, W, C] float32} updates of a 1-step generation of `prompts` (seed + i each)."""
    from repro.collect import capture_batch
    from repro.generate import Sampling

    parts: dict[str, list[torch.Tensor]] = {b: [] for b in BLOCKS}
    for lo in range(0, len(prompts), batch):
        hi = min(lo + batch, len(prompts))
        out, _ = capture_batch(pipe, prompts[lo:hi], list(range(seed + lo, seed + hi)), list(BLOCKS),
                               Sampling(steps=1, guidance=0.0), torch.float32)
        for b, t in out.items():  # [B, steps, halves, HW, C]
            side = int(t.shape[3] ** 0.5)
            parts[b].append(t[:, 0, 0].reshape(t.shape[0], side, side, t.shape[-1]).float())
    return {b: torch.cat(v) for b, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-turbo")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--sae-steps", type=int, default=400)
    p.add_argument("--features", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/toy_labels.json")
    args = p.parse_args()

    from repro.features.analysis import analyse_features
    from repro.features.controls import random_sae_like
    from repro.features.detection import concept_detection_table, family_medians
    from repro.features.toy_concepts import concept_names, label_features, scene_concepts, scene_coverage
    from repro.io import provenance, write_json_atomic
    from repro.models.loading import load_pipeline
    from repro.sae.config import SAEConfig, TrainConfig
    from repro.sae.model import TopKSAE
    from repro.sae.sources import TensorSource
    from repro.sae.train import train_saes
    from repro.shapes.captions import caption
    from repro.shapes.splits import split_scenes
    from repro.shapes.scoring import heldout_captions

    started = time.perf_counter()
    pipe = load_pipeline(args.model, device="cpu", dtype="float32")
    test_scenes, test_prompts = heldout_captions(args.n_test, seed=args.seed, one_stream=True)
    rng = np.random.default_rng([args.seed, 3])
    train_scenes = split_scenes("train", args.n_train, seed=args.seed)
    train_prompts = [caption(s, rng) for s in train_scenes]
    train_x = capture(pipe, train_prompts, seed=10_000 + args.seed)
    test_x = capture(pipe, test_prompts, seed=args.seed)
    t_capture = time.perf_counter() - started

    d = next(iter(train_x.values())).shape[-1]
    saes = {b: TopKSAE(SAEConfig(d_model=d, n_features=args.features, k=args.k, k_aux=args.features // 2,
                                 dead_tokens_threshold=200_000), seed=i)  # the toy profile's dead_tokens
            for i, b in enumerate(BLOCKS)}
    source = TensorSource({b: x.reshape(-1, d) for b, x in train_x.items()}, args.batch, seed=args.seed)
    train = train_saes(saes, source, TrainConfig(steps=args.sae_steps, lr=0.0, device="cpu", checkpoint_every=0,
                                                 progress=False, log_every=max(args.sae_steps // 4, 1)))
    t_train = time.perf_counter() - started - t_capture

    labels = scene_concepts(test_scenes, grid=test_x[BLOCKS[0]].shape[1])
    ids = torch.arange(len(test_scenes))

    def chunks(block):
        for lo in range(0, len(ids), 32):
            yield ids[lo:lo + 32], test_x[block][lo:lo + 32], labels[lo:lo + 32]

    table = concept_detection_table(saes, chunks)
    medians = {col: family_medians(table, col, min_pos=10) for col in ("f1", "auroc")}

    # 05's purity under the new labels against the old majority rule (all held-out images, in-sample)
    old = scene_coverage(test_scenes, grid=labels.shape[-1]) > 0.5
    purity = {}
    for b in BLOCKS:
        purity[b] = {}
        for name, sae in (("SAE", saes[b]), ("random SAE", random_sae_like(saes[b]))):
            for rule, lab in (("coverage", labels), ("majority (old)", old)):
                a = analyse_features(sae, [(ids, test_x[b], lab)], m=1, concept_names=concept_names())
                s = label_features(a.concepts).summary(0.8)
                purity[b][f"{name}, {rule}"] = {k: s[k] for k in ("live", "pure", "pure_share", "mean_f1")}

    result = {
        "provenance": provenance(), "model": args.model, "n_test": args.n_test, "n_train": args.n_train,
        "sae": {"features": args.features, "k": args.k, "steps": train.steps, "batch": args.batch,
                "dead_tokens_threshold": 200_000, "last_metrics": train.last_metrics},
        "split": "dev = even ids of the held-out scenes (feature choice, probe fit and threshold), test = odd ids",
        "median_f1_by_family": {f"{b} / {det}": row.dropna().round(4).to_dict()
                                for (b, det), row in medians["f1"].iterrows()},
        "median_auroc_by_family": {f"{b} / {det}": row.dropna().round(4).to_dict()
                                   for (b, det), row in medians["auroc"].iterrows()},
        "purity": purity,
        "table": json.loads(table.round(4).to_json(orient="records")),
        "seconds": {"capture": round(t_capture, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }
    write_json_atomic(args.out, result)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(medians["f1"].round(3))
        print(medians["auroc"].round(3))
    print(json.dumps(purity, indent=1))
    print(f"wrote {args.out} in {result['seconds']['total']} s")


if __name__ == "__main__":
    main()
