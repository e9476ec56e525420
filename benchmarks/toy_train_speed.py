"""Steps/s of every ShapesWorld training stage: today's loop beside the eager and CUDA-graph steps.

    python benchmarks/toy_train_speed.py --out speed.json [--legacy-src .cache/legacy/src]

Each stage (vae batch 64, base batch 256, turbo batch 512 by default) is timed at the
default network sizes on random-initialised modules over `--scenes` rendered scenes:
- `legacy`: the training loop as it was before the fast step (the code at `--legacy-src`,
  e.g. `git archive 9ef5ed2 src | tar -x -C .cache/legacy`), run in a subprocess;
- `eager` and `graph`: `repro.toymodels.engine.TrainStep` in each mode.
Rates exclude warm-up (and graph capture). As a twin check, the graph step's losses over
the first steps are compared with the eager step's from the same weights and batches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

BATCH = {"vae": 64, "base": 256, "turbo": 512}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_rates(scenes: int, steps: int, modes: list[str], batches: dict) -> dict:
    from repro.toymodels.config import BaseStage, DataConfig, ToyTrainConfig, TurboStage, VaeStage
    from repro.toymodels.data import ToyData
    from repro.toymodels.engine import TrainStep, make_adamw, resolve_accel
    from repro.toymodels.train import Run, _setup_stage
    from repro.toymodels.vae import encode_images

    cfg = ToyTrainConfig(data=DataConfig(scenes=scenes), vae=VaeStage(batch_size=batches["vae"]),
                         base=BaseStage(batch_size=batches["base"]),
                         turbo=TurboStage(batch_size=batches["turbo"], teacher_samples=min(2048, scenes), teacher_steps=4))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    run = Run(cfg, device)
    data = ToyData.build(cfg.data, run.base.tokenizer, device)
    latents = encode_images(run.base.vae, data.images)
    out: dict = {}
    for stage in ("vae", "base", "turbo"):
        params, make_batch, loss_fn = _setup_stage(run, stage, data, latents, device)
        start_weights = [p.detach().clone() for p in params]
        losses = {}
        for mode in modes:
            mode = resolve_accel(mode, device)
            with torch.no_grad():
                for p, w in zip(params, start_weights):
                    p.copy_(w)
            opt = make_adamw(params, getattr(cfg, stage).lr, device, 0.0, graph=mode == "graph")
            step = TrainStep(loss_fn, params, opt, mode=mode)
            gen = torch.Generator(device).manual_seed(0)
            seen = [step(make_batch(gen), 1e-4) for _ in range(8)]  # warm-up (graph: capture at the 4th)
            losses[mode] = torch.stack(seen).float().cpu()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(make_batch(gen), 1e-4)
            _sync(device)
            rate = steps / (time.perf_counter() - t0)
            out[f"{stage}/{mode}"] = {"stage": stage, "mode": mode, "batch": getattr(cfg, stage).batch_size,
                                      "steps_per_s": round(rate, 2),
                                      "samples_per_s": round(rate * getattr(cfg, stage).batch_size)}
            print(f"{stage:6s} {mode:6s} batch {getattr(cfg, stage).batch_size:4d}: {rate:8.2f} steps/s", flush=True)
            del step, opt
        if "eager" in losses and "graph" in losses:
            diff = (losses["graph"] - losses["eager"]).abs().max() / losses["eager"].abs().max()
            out[f"{stage}/twin"] = {"max_rel_loss_diff_first_8_steps": float(diff)}
            print(f"{stage:6s} graph vs eager, first 8 losses: max rel diff {float(diff):.2e}", flush=True)
        for p in params:
            p.requires_grad_(False)
    return out


def legacy_rates(scenes: int, steps: int, batches: dict) -> dict:
    """Today's loop (pre-engine API), imported from the legacy source tree on PYTHONPATH."""
    from repro.models.build import build_pipeline
    from repro.toymodels.config import BaseStage, DataConfig, ToyTrainConfig, TurboStage, VaeStage
    from repro.toymodels.data import ToyData
    from repro.toymodels.diffusion import Denoiser, train_base, train_turbo
    from repro.toymodels.loop import MetricLog
    from repro.toymodels.vae import encode_images, train_vae

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    cfg = ToyTrainConfig()
    pipe = build_pipeline(cfg.sizes.pipeline_spec(), kind="base")
    for m in (pipe.vae, pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        m.to(device)
    pipe.unet.to(memory_format=torch.channels_last)
    data = ToyData.build(DataConfig(scenes=scenes), pipe.tokenizer, device)
    gen = torch.Generator(device).manual_seed(0)
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, cfg.sizes.resolution)
    out = {}
    for stage in ("vae", "base", "turbo"):
        rates = []
        for n in (8, steps):  # the first call warms up (cuDNN autotuning), the second is timed
            if stage == "vae":
                s = train_vae(pipe.vae, data, VaeStage(steps=n, batch_size=batches["vae"]), gen, MetricLog(), progress=False)
                latents = encode_images(pipe.vae, data.images)
            elif stage == "base":
                s = train_base(model, latents, data, BaseStage(steps=n, batch_size=batches["base"]), gen, MetricLog(),
                               progress=False)
            else:
                s = train_turbo(model, pipe.vae, latents, data, TurboStage(steps=n, batch_size=batches["turbo"]), gen,
                                MetricLog(), progress=False)
            rates.append(s["steps_per_s"])
        out[f"{stage}/legacy"] = {"stage": stage, "mode": "legacy", "batch": batches[stage], "steps_per_s": rates[-1],
                                  "samples_per_s": round(rates[-1] * batches[stage])}
        print(f"{stage:6s} legacy batch {batches[stage]:4d}: {rates[-1]:8.2f} steps/s", flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=8192)
    p.add_argument("--steps", type=int, default=60, help="timed steps per stage and mode")
    p.add_argument("--modes", nargs="+", default=["eager", "graph"])
    p.add_argument("--legacy-src", type=Path, default=None, help="source tree of the pre-engine code (src/)")
    p.add_argument("--legacy", action="store_true", help=argparse.SUPPRESS)  # the subprocess's role
    p.add_argument("--batch", default=None, help="override batch sizes, e.g. vae=4,base=4,turbo=4 (smoke tests)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    batches = {**BATCH, **{k: int(v) for k, v in (kv.split("=") for kv in args.batch.split(","))}} if args.batch else BATCH
    if args.legacy:
        print(json.dumps(legacy_rates(args.scenes, args.steps, batches)))
        return {}
    from repro.io import provenance, write_json_atomic

    result: dict = {"rates": {}}
    if args.legacy_src is not None:
        env = {**os.environ, "PYTHONPATH": f"{args.legacy_src.resolve()}:{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run([sys.executable, __file__, "--legacy", "--scenes", str(args.scenes), "--steps",
                               str(min(args.steps, 40))] + (["--batch", args.batch] if args.batch else []),
                              env=env, capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-2000:])
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("{")), flush=True)
        if lines:
            result["rates"].update(json.loads(lines[-1]))
    result["rates"].update(new_rates(args.scenes, args.steps, args.modes, batches))
    for stage in ("vae", "base", "turbo"):
        legacy, graph = result["rates"].get(f"{stage}/legacy"), result["rates"].get(f"{stage}/graph")
        if legacy and graph:
            result["rates"][f"{stage}/speedup"] = round(graph["steps_per_s"] / legacy["steps_per_s"], 1)
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result["provenance"] = provenance()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
