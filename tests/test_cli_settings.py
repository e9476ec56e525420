"""One source of settings per stage (issue 29): the flags of `repro train`, `repro collect` and
`repro riebench` are generated from their config dataclasses, so every flag is a field with
the field's default, and a value given on the command line reaches the config the run uses."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repro.cli import build_parser, main
from repro.cli.collect import COLLECT_FLAGS
from repro.cli.dataclass_args import field_docs, from_args
from repro.cli.riebench import RIEBenchRun
from repro.cli.train import SAE_FLAGS, StoreTraining
from repro.collect import CollectConfig
from repro.riebench.runner import RIEBenchConfig
from repro.sae.config import SAEConfig, TrainConfig

# subcommand: (its dataclasses, the required arguments, {field: why it has no flag}, {flag dest: why it is no field})
STAGES = {
    "train": ((StoreTraining, SAEConfig, TrainConfig), ["--store", "s", "--out", "o"],
              # d_model comes from the store, n_features from --expansion; the rest are the recipe's
              # (build_block_saes takes k, k_aux and dead tokens only)
              {f.name: "not chosen per run" for f in dataclasses.fields(SAEConfig) if f.name not in SAE_FLAGS},
              {}),
    "collect": ((CollectConfig,), ["--out", "o"], {},
                {"progress": "how the run is shown, not what it stores: an argument of collect(), not a setting"}),
    "riebench": ((RIEBenchRun, RIEBenchConfig), ["--out", "r.jsonl"],
                 {"keep_images": "the command writes rows only: nowhere to keep images"}, {}),
}


def subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].populated()


def default_of(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


@pytest.mark.parametrize("command", sorted(STAGES))
def test_every_flag_is_a_field_with_the_same_default(command):
    classes, required, no_flag, not_fields = STAGES[command]
    parser = subparser(command)
    args = parser.parse_args(required)
    fields = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.name not in fields, f"{f.name} is a field of two of {command}'s dataclasses"
            fields[f.name] = f
    dests = {a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    assert dests - set(fields) == set(not_fields), "flags that are no field of the stage's dataclasses"
    assert set(fields) - dests == set(no_flag), "fields of the stage's dataclasses without a flag"
    given = {parser._option_string_actions[required[i]].dest: required[i + 1] for i in range(0, len(required), 2)}
    for name in dests & set(fields):
        expected = Path(given[name]) if name in given else default_of(fields[name])
        got = getattr(args, name)
        assert (Path(got) if name in given else got) == expected, f"--{name}: {got!r} != the field's {expected!r}"
    # ... and so the config built from no flags is the dataclass's default instance.
    for cls in classes:
        if cls is SAEConfig:
            continue  # built per block by build_block_saes
        built = from_args(cls, args)
        assert built == cls(**{k: Path(v) for k, v in given.items() if k in {f.name for f in dataclasses.fields(cls)}})


def test_collect_defaults_to_the_default_profiles_model():
    from repro.cli.common import DEFAULT_MODEL
    from repro.profiles import get_profile

    assert CollectConfig(out="x").model == DEFAULT_MODEL == get_profile("toy").turbo_model == RIEBenchRun(out="x").model


def test_every_setting_has_a_one_line_help_from_its_docstring():
    for classes, *_ in STAGES.values():
        for cls in classes:
            docs = field_docs(cls)
            assert set(docs) == {f.name for f in dataclasses.fields(cls)}, cls.__name__
            assert all(doc and "\n" not in doc for doc in docs.values()), cls.__name__
    text = subparser("train").format_help()
    assert "Loss implementation: the sparse" in text and "(default: 100000)" in text


def test_flag_values_reach_the_configs():
    args = subparser("train").parse_args(
        ["--store", "s", "--out", "o", "--impl", "fused", "--compute-dtype", "bfloat16", "--adam-betas", "0.8", "0.99",
         "--no-init-b-pre", "--half", "cond", "--step", "none", "--blocks", "down.2.1,mid.0", "up.0.1",
         "--dead-tokens", "500", "--lr", "0", "--no-verify", "--no-progress"])
    cfg, run = from_args(TrainConfig, args), from_args(StoreTraining, args)
    assert (cfg.impl, cfg.compute_dtype, cfg.adam_betas, cfg.init_b_pre, cfg.lr, cfg.progress) == \
        ("fused", "bfloat16", (0.8, 0.99), False, 0.0, False)
    assert (run.half, run.step, run.blocks, run.verify) == ("cond", None, ("down.2.1", "mid.0", "up.0.1"), False)
    assert args.dead_tokens_threshold == 500

    args = subparser("collect").parse_args(["--out", "o", "--dtype", "float16", "--store-dtype", "fp32",
                                             "--resolution", "none", "--store-images", "--blocks", "all"])
    cfg = from_args(CollectConfig, args)
    assert (cfg.model_dtype, cfg.dtype, cfg.resolution, cfg.store_images, cfg.blocks) == \
        ("float16", "fp32", None, True, ("all",))
    assert COLLECT_FLAGS["model_dtype"][0] == "--dtype"  # --dtype: the model's compute dtype, in every command
    old = subparser("collect").parse_args(["--out", "o", "--model-dtype", "bfloat16"])
    assert from_args(CollectConfig, old).model_dtype == "bfloat16"

    args = subparser("riebench").parse_args(["--out", "r.jsonl", "--saes", "a", "b,c", "--toy-grid", "--k-transfer",
                                              "8,32", "--m-steer", "0.5", "--strict-sign", "--steps", "2"])
    run, config = from_args(RIEBenchRun, args), from_args(RIEBenchConfig, args)
    assert run.saes == (Path("a"), Path("b,c"))  # paths are never split at commas
    grid = run.grid()
    assert (grid.k_transfer, grid.m_steer, grid.k_neurons) == ((8, 32), (0.5,), (100, 200, 400, 800, 1600))
    assert (config.strict_sign, config.steps) == (True, 2)


def test_collect_runs_with_the_parsed_config(tmp_path, monkeypatch, capsys):
    seen = {}

    class Store:
        def summary(self):
            return "a store"

    def collect(cfg, progress=True):
        seen.update(cfg=cfg, progress=progress)
        return Store()

    monkeypatch.setattr("repro.collect.collect", collect)
    assert main(["collect", "--out", str(tmp_path / "s"), "--n-prompts", "3", "--dtype", "float32",
                 "--store-dtype", "fp16", "--engine", "pipeline", "--no-progress"]) == 0
    assert seen["cfg"] == CollectConfig(out=tmp_path / "s", n_prompts=3, model_dtype="float32", dtype="fp16",
                                        engine="pipeline")
    assert seen["progress"] is False and capsys.readouterr().out.strip() == "a store"


def test_train_flags_reach_the_saved_saes(tmp_path, tiny_pipe, one_thread):
    from repro.collect import collect

    store = tmp_path / "store"
    collect(CollectConfig(out=store, n_prompts=2, shard_size=2, batch_size=2, dtype="fp32", blocks=("mid.0",),
                          device="cpu"), tiny_pipe, progress=False)
    assert main(["train", "--store", str(store), "--out", str(tmp_path / "saes"), "--steps", "3", "--batch-size", "8",
                 "--expansion", "2", "--k", "3", "--k-aux", "5", "--dead-tokens", "64", "--impl", "reference",
                 "--compute-dtype", "float32", "--adam-betas", "0.8", "0.99", "--lr", "0.001", "--log-every", "1",
                 "--checkpoint-every", "0", "--device", "cpu", "--no-progress"]) == 0
    saved = json.loads((tmp_path / "saes" / "mid.0" / "cfg.json").read_text())
    c = saved["training"]["config"]
    assert (c["steps"], c["impl"], c["compute_dtype"], c["adam_betas"], c["lr"], c["log_every"]) == \
        (3, "reference", "float32", [0.8, 0.99], 0.001, 1)
    assert c["checkpoint_every"] == 0 and saved["training"]["steps"] == 3
    d = tiny_pipe.unet.mid_block.attentions[0].proj_out.out_features  # the block's channels
    sae = {k: saved.get(k, saved.get("sae", {}).get(k)) for k in ("n_features", "k", "k_aux", "dead_tokens_threshold")}
    assert sae == {"n_features": 2 * d, "k": 3, "k_aux": 5, "dead_tokens_threshold": 64}


@pytest.mark.parametrize("argv, needle", [
    (["train", "--store", "s", "--out", "o", "--impl", "turbo"], "argument --impl: invalid choice: 'turbo'"),
    (["train", "--store", "s", "--out", "o", "--keep-checkpoints", "0"], "keep_checkpoints must be in 1..1000, got 0"),
    (["collect", "--out", "o", "--dtype", "fp32"], "argument --dtype/--model-dtype: invalid choice: 'fp32'"),
    (["collect", "--out", "o", "--writers", "0"], "writers must be in 1..1024, got 0"),
    (["riebench", "--out", "r.jsonl", "--methods", "transport,nope"], "unknown RIEBench method 'nope'"),
    (["riebench", "--out", "r.jsonl", "--mask-dilate-px", "-1"], "mask_dilate_px must be in 0..4096"),
])
def test_a_bad_value_is_one_line_and_exit_2(capsys, monkeypatch, argv, needle):
    def load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the bad setting was refused")

    monkeypatch.setattr("repro.models.loading.load_pipeline", load)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("repro: error: "), err
    assert needle in lines[0], lines[0]


def test_bad_value_from_the_shell_and_help_without_torch():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = subprocess.run([sys.executable, "-m", "repro.cli", "train", "--store", "s", "--out", "o", "--on-nonfinite",
                          "ignore"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and bad.stdout == "", bad
    assert bad.stderr.count("\n") == 1 and "argument --on-nonfinite: invalid choice: 'ignore'" in bad.stderr
    # Flags are generated when their subcommand is used: the top-level parser does not import torch.
    code = "import sys; from repro.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    lazy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert lazy.stdout.strip() == "False", lazy


def test_toy_set_reads_any_field_of_toy_train_config_typed_by_its_annotation():
    from repro.cli.toy import build_config
    from repro.errors import ReproError

    args = build_parser().parse_args(["toy", "train", "--tiny", "--set", "log_every=7", "--set", "threads=2",
                                      "--set", "data.workers=3", "--set", "chunk_steps=none"])
    cfg = build_config(args)
    assert (cfg.log_every, cfg.threads, cfg.data.workers, cfg.chunk_steps) == (7, 2, 3, None)
    assert isinstance(cfg.threads, int) and isinstance(cfg.data.workers, int)  # int | None fields read ints
    with pytest.raises(ReproError, match="FIELD=VALUE with a field of out, work, device"):
        build_config(build_parser().parse_args(["toy", "train", "--tiny", "--set", "sizes=1"]))
    assert "ToyTrainConfig" in subparser("toy")._subparsers._group_actions[0].choices["train"].format_help()
