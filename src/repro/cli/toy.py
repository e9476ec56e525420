"""`repro toy train` and `repro toy eval`: train and score the embedded ShapesWorld models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing

from repro.errors import ReproError


def register(sub) -> None:
    toy = sub.add_parser("toy", help="train or evaluate the ShapesWorld models (shapes-base, shapes-turbo)")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="ACTION", required=True)

    p = toy_sub.add_parser("train", help="render the data, train VAE -> base -> turbo, save both pipelines")
    p.add_argument("--stage", default="all", help="vae, base, turbo, a comma list of them, or all (default)")
    p.add_argument("--steps", default=None,
                   help="steps of every selected stage (N), or per stage: vae=2000,base=6000,turbo=3000")
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="stop this run after about N seconds of training, save the checkpoint; rerun to resume")
    p.add_argument("--chunk-steps", type=int, default=None,
                   help="stop this run after N optimiser steps (all stages together), save the checkpoint")
    p.add_argument("--checkpoint", default=None,
                   help="training-state folder (default: WORK/checkpoint); a run resumes from it when it exists")
    p.add_argument("--fresh", action="store_true", help="delete an existing checkpoint and start over")
    p.add_argument("--batch-size", default=None, help="batch size of every selected stage (N), or per stage: base=256,turbo=512")
    p.add_argument("--lr", default=None, help="peak learning rate of every selected stage, or per stage: turbo=5e-4")
    p.add_argument("--init-base", default=None,
                   help="start the base stage from this pipeline's UNet and text encoders (warm restart)")
    p.add_argument("--init-turbo", default=None,
                   help="start the turbo student from this pipeline's UNet (continue a distillation) instead of the base's")
    p.add_argument("--set", action="append", default=[], metavar="[STAGE.]FIELD=VALUE",
                   help="any field of repro.toymodels.config.ToyTrainConfig, typed like its default: a stage's "
                        "(STAGE: data, vae, base, turbo), e.g. --set turbo.teacher_fraction=0.5, or the run's, e.g. "
                        "--set log_every=10 (repeatable; applied after the other flags; 'none' for optional fields)")
    p.add_argument("--no-autocast", action="store_true", help="train in fp32 (TF32 on a GPU) instead of bf16 autocast")
    p.add_argument("--teacher-samples", type=int, default=None, help="turbo: (noise, teacher sample) pairs (default 8192)")
    p.add_argument("--scenes", type=int, default=None, help="train-split scenes to render (default 100000)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", default=None, help="folder for shapes-base/ and shapes-turbo/ (default: models/)")
    p.add_argument("--work", default=None, help="folder for the VAE between single-stage runs (default: .cache/toymodels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accel", default="auto", choices=("auto", "eager", "graph", "compile"),
                   help="step execution: auto (one CUDA graph per step on a GPU, eager on a CPU), eager, graph, compile")
    p.add_argument("--tiny", action="store_true", help="tiny networks, few steps, CPU: a smoke test in seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_train)

    p = toy_sub.add_parser("export", help="write shapes-base/ and shapes-turbo/ from a training checkpoint")
    p.add_argument("checkpoint", help="checkpoint folder written by repro toy train (state-*-of-*.safetensors)")
    p.add_argument("--out", default=None, help="folder for shapes-base/ and shapes-turbo/ (default: models/)")
    p.add_argument("--unfinished", action="store_true", help="also the stage in progress, as it stands")
    p.set_defaults(run=run_export)

    p = toy_sub.add_parser("eval", help="prompt following of a model on held-out captions, read by the oracle")
    p.add_argument("--model", default="shapes-turbo", help="shapes-turbo (default), shapes-base or a pipeline folder")
    p.add_argument("--steps", type=int, default=1, help="denoising steps (default 1)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance scale (default 0)")
    p.add_argument("--n", type=int, default=500, help="held-out test-split captions (default 500)")
    p.add_argument("--device", default="auto")
    p.add_argument("--oracle", default=None, help="oracle folder (default: models/oracle)")
    p.set_defaults(run=run_eval)


def parse_steps(text: str | None, stages: tuple[str, ...], what: str = "--steps", kind=int) -> dict:
    """"500" -> that many steps for each stage in `stages`; "vae=10,base=20" -> per stage."""
    if not text:
        return {}
    try:
        if "=" not in text:
            return {s: kind(text) for s in stages}
        pairs = dict(part.split("=", 1) for part in text.split(","))
        steps = {k.strip(): kind(v) for k, v in pairs.items()}
    except ValueError as exc:
        raise ReproError(f"cannot read {what} {text!r}: give N or stage=N pairs, e.g. vae=2000,base=6000") from exc
    bad = sorted(set(steps) - {"vae", "base", "turbo"})
    if bad:
        raise ReproError(f"{what} names unknown stage {bad[0]!r}: use vae, base, turbo")
    return steps


def parse_setting(item: str, changes: dict, cfg) -> tuple[str | None, str, object]:
    """"turbo.teacher_fraction=0.5" -> ("turbo", "teacher_fraction", 0.5), typed like the field's default;
    a field of the run itself: "log_every=10" -> (None, "log_every", 10)."""
    key, sep, text = item.partition("=")
    stage, dot, name = key.strip().partition(".")
    if not dot:  # the run's own scalar fields (not its sections, sizes or stages)
        stage, name, section = None, stage, cfg
        fields = {f.name: f for f in dataclasses.fields(cfg)
                  if f.name != "stages" and not dataclasses.is_dataclass(getattr(cfg, f.name))}
    else:
        section = changes.get(stage, getattr(cfg, stage, None)) if stage in ("data", "vae", "base", "turbo") else None
        fields = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
    if not sep or name not in fields:
        known = (", ".join(f"{stage + '.' if stage else ''}{f}" for f in fields) if fields
                 else "data.*, vae.*, base.*, turbo.*")
        raise ReproError(f"cannot read --set {item!r}: give STAGE.FIELD=VALUE or FIELD=VALUE with a field of {known}")
    current = getattr(section, name)
    if current is None:  # typed by the annotation: `int | None` reads an int (or none)
        kinds = [a for a in typing.get_args(typing.get_type_hints(type(section))[name]) if a is not type(None)]
        current = kinds[0]() if kinds and kinds[0] in (int, float, bool, str) else ""
    text = text.strip()
    try:
        if text.lower() in ("none", "null") and "None" in str(fields[name].type):
            value = None
        elif isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            value = text.lower() in ("true", "1")
        elif isinstance(current, int):
            if not float(text).is_integer():
                raise ValueError(text)
            value = int(float(text))
        elif isinstance(current, float):
            value = float(text)
        else:
            value = text
    except ValueError:
        raise ReproError(f"--set {item}: {text!r} is not a valid {type(current).__name__} for "
                         f"{stage + '.' if stage else ''}{name}") from None
    return stage, name, value


def build_config(args: argparse.Namespace):
    from repro.toymodels.config import ToyTrainConfig, parse_stages

    stages = parse_stages(args.stage)
    cfg = ToyTrainConfig.tiny() if args.tiny else ToyTrainConfig(device=args.device)
    changes: dict = {"stages": stages, "seed": args.seed, "accel": args.accel,
                     "chunk_seconds": args.chunk_seconds, "chunk_steps": args.chunk_steps}
    if args.checkpoint:
        changes["checkpoint"] = args.checkpoint
    if args.out:
        changes["out"] = args.out
    if args.work:
        changes["work"] = args.work
    if args.init_base:
        changes["base"] = dataclasses.replace(changes.get("base", cfg.base), init_from=args.init_base)
    if getattr(args, "init_turbo", None):
        changes["turbo"] = dataclasses.replace(changes.get("turbo", cfg.turbo), init_from=args.init_turbo)
    if getattr(args, "no_autocast", False):
        changes["autocast"] = False
    if args.teacher_samples:
        changes["turbo"] = dataclasses.replace(changes.get("turbo", cfg.turbo), teacher_samples=args.teacher_samples)
    if args.scenes:
        changes["data"] = dataclasses.replace(cfg.data, scenes=args.scenes)
    for stage, n in parse_steps(args.steps, stages).items():
        if n < 1:
            raise ReproError(f"--steps for {stage} must be at least 1, got {n}")
        changes[stage] = dataclasses.replace(changes.get(stage, getattr(cfg, stage)), steps=n)
    for stage, n in parse_steps(getattr(args, "batch_size", None), stages, "--batch-size").items():
        changes[stage] = dataclasses.replace(changes.get(stage, getattr(cfg, stage)), batch_size=n)
    for stage, lr in parse_steps(getattr(args, "lr", None), stages, "--lr", float).items():
        changes[stage] = dataclasses.replace(changes.get(stage, getattr(cfg, stage)), lr=lr)
    for item in getattr(args, "set", None) or []:
        stage, name, value = parse_setting(item, changes, cfg)
        if stage is None:
            changes[name] = value
        else:
            changes[stage] = dataclasses.replace(changes.get(stage, getattr(cfg, stage)), **{name: value})
    if (args.chunk_seconds is not None and args.chunk_seconds <= 0) or (args.chunk_steps is not None and args.chunk_steps < 1):
        raise ReproError("--chunk-seconds and --chunk-steps must be positive")
    return cfg.replace(**changes)


def run_train(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from repro.paths import cache_dir
    from repro.toymodels.train import train_toy_models

    cfg = build_config(args)
    if args.fresh:
        work = Path(cfg.work) if cfg.work else cache_dir() / "toymodels"
        shutil.rmtree(Path(cfg.checkpoint) if cfg.checkpoint else work / "checkpoint", ignore_errors=True)
    from repro.dist import env

    try:
        result = train_toy_models(cfg, progress=not args.no_progress)
    finally:
        lead = env.rank() == 0
        env.shutdown()
    if not lead:  # under torchrun, rank 0 reports
        return 0
    print(json.dumps(result, indent=2, sort_keys=True))
    if not result["finished"]:
        print(f"stopped at {result['stage']} step {result['step']}; checkpoint {result['checkpoint']}: "
              "run the same command again to resume", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from repro.toymodels.train import export_pipelines

    from repro.paths import models_dir

    print(json.dumps(export_pipelines(args.checkpoint, args.out or models_dir(), unfinished=args.unfinished), indent=2, sort_keys=True))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from repro.models.loading import load_pipeline
    from repro.shapes.oracle import load_oracle

    from repro.generate import Sampling
    from repro.ranges import check_int

    Sampling(steps=args.steps, guidance=args.guidance)  # checked before the model loads
    check_int("--n", args.n, 1, 1_000_000, why="held-out captions, rendered and held in memory")
    pipe = load_pipeline(args.model, device=args.device)
    oracle = load_oracle(args.oracle, device=pipe.device)
    result = toy_prompt_following(pipe, oracle, n=args.n, steps=args.steps, guidance=args.guidance)
    result["model"] = args.model
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def toy_prompt_following(pipe, oracle, n: int, steps: int, guidance: float, batch_size: int = 250) -> dict:
    """`repro toy eval`'s record (also benchmarks/toy_eval.py's): `repro.shapes.scoring.prompt_following`
    of `pipe` on n held-out captions (seed i for caption i), {attribute: share right, n, steps, guidance, seconds}."""
    from repro.generate import Sampling
    from repro.shapes.scoring import heldout_captions, pipeline_generator, prompt_following, rounded

    scenes, captions = heldout_captions(n, one_stream=True)
    t0 = time.time()
    pf = prompt_following(pipeline_generator(pipe, Sampling(steps=steps, guidance=guidance)), oracle, scenes,
                          captions, range(n), batch_size)
    return {**rounded(pf.scores), "n": n, "steps": steps, "guidance": guidance, "seconds": round(time.time() - t0, 1)}
