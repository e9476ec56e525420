"""Numbers range-checked before work starts, and a full disk or a refused file in one line
(issue 30, items 5 and 6). The command-line cases as a new user meets them are in
benchmarks/bad_inputs.py (groups `ranges` and `no space`)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from repro.cli import main
from repro.errors import ReproError
from repro.ranges import SEED_MAX, check_float, check_int, check_resolution, check_seed

from cli_checks import TINY, fails


@pytest.fixture
def never_load(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the bad number was refused")

    monkeypatch.setattr("repro.models.loading.load_pipeline", load)


# --- the checks ------------------------------------------------------------------------------

def test_check_int_bounds_and_message():
    assert check_int("n", 1, 1, 10) == 1 and check_int("n", 10, 1, 10) == 10
    with pytest.raises(ReproError, match=r"^n must be in 1\.\.10, got 11: why$"):
        check_int("n", 11, 1, 10, why="why")
    with pytest.raises(ReproError, match=r"^n must be at least 0, got -1$"):
        check_int("n", -1, 0, None)
    for bad in (1.5, True, "3", None):
        with pytest.raises(ReproError, match="must be a whole number"):
            check_int("n", bad, 0, 10)


def test_check_float_refuses_nan_inf_and_open_ends():
    assert check_float("x", 0.0, 0.0, 1.0, high_open=True) == 0.0
    with pytest.raises(ReproError, match=r"x must be in \[0.0, 1.0\), got 1.0"):
        check_float("x", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(ReproError, match=r"x must be > 0.0, got 0.0"):
        check_float("x", 0.0, 0.0, low_open=True)
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(ReproError, match="finite number"):
            check_float("x", bad)


def test_seeds_fit_torch_including_every_derived_seed():
    import torch

    torch.Generator().manual_seed(check_seed("seed", SEED_MAX))  # the largest accepted seed works in torch
    torch.tensor([SEED_MAX], dtype=torch.int64)  # ...and in a store's seeds tensor
    with pytest.raises((RuntimeError, ValueError), match="Overflow"):  # the first refused one would not
        torch.tensor([SEED_MAX + 1], dtype=torch.int64)
    with pytest.raises(ReproError, match=r"seed must be in 0\.\.9223372036854775807, got 9223372036854775808"):
        check_seed("seed", SEED_MAX + 1)
    with pytest.raises(ReproError, match="got -1"):
        check_seed("seed", -1)
    assert check_seed("seed", SEED_MAX - 9, count=10) == SEED_MAX - 9
    with pytest.raises(ReproError, match=r"0\.\.9223372036854775798, got 9223372036854775799.*seed \+ 9"):
        check_seed("seed", SEED_MAX - 8, count=10)


def test_resolution_multiple_of_8_in_32_to_4096():
    assert check_resolution("r", None) is None and check_resolution("r", 32) == 32 and check_resolution("r", 4096) == 4096
    for bad in (0, 8, 24, 100, 4104, 10**9, 64.0):
        with pytest.raises(ReproError, match=r"r must be a multiple of 8 pixels in 32\.\.4096"):
            check_resolution("r", bad)


def test_smallest_resolution_generates_and_the_one_below_crashed(tiny_pipe, one_thread):
    """32 px (the floor) works on the tiny 4x-VAE model; 8 px, which the old multiple-of-8 rule let through,
    crashes inside the VAE: the floor is where it is for a reason."""
    from repro.generate import Sampling, generate

    assert generate(tiny_pipe, ["a cat"], [0], Sampling(resolution=32)).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        tiny_pipe(prompt=["a cat"], num_inference_steps=1, guidance_scale=0.0, height=8, width=8, output_type="np")


# --- the config dataclasses ------------------------------------------------------------------

def _collect(**kw):
    from repro.collect import CollectConfig

    return CollectConfig(out="x", **kw)


def _sae(**kw):
    from repro.sae.config import SAEConfig

    return SAEConfig(**kw)


def _train(**kw):
    from repro.sae.config import TrainConfig

    return TrainConfig(**kw)


def _riebench(**kw):
    from repro.riebench.runner import RIEBenchConfig

    return RIEBenchConfig(**kw)


def _toy(**kw):
    from repro.toymodels.config import ToyTrainConfig

    return ToyTrainConfig.tiny(**kw)


def _sampling(**kw):
    from repro.generate import Sampling

    return Sampling(**kw)


def _store_training(**kw):
    from repro.cli.train import StoreTraining

    return StoreTraining(store="s", out="o", **kw)


@pytest.mark.parametrize("make, kw, needle", [
    (_collect, {"n_prompts": 10**12}, "n_prompts must be in 1..100000000, got 1000000000000"),
    (_collect, {"n_prompts": -5}, "n_prompts must be in 1..100000000, got -5"),
    (_collect, {"batch_size": 10**9}, "batch_size must be in 1..4096"),
    (_collect, {"shard_size": 10**9}, "shard_size must be in 1..65536"),
    (_collect, {"n_prompts": 10**8, "shard_size": 1}, "more than 1000000 shards: raise shard_size to at least 100"),
    (_collect, {"seed": SEED_MAX, "n_prompts": 2}, "seed must be in 0..9223372036854775806"),
    (_collect, {"seed": -1}, "seed must be in 0.."),
    (_collect, {"writers": 10**6}, "writers must be in 1..1024"),
    (_collect, {"resolution": 16}, "resolution must be a multiple of 8 pixels in 32..4096, got 16"),
    (_collect, {"steps": 10**20}, "steps must be in 1..1000"),
    (_collect, {"guidance": float("nan")}, "guidance must be a finite number"),
    (_sae, {"d_model": 1280, "n_features": 2**22}, "d_model x n_features = 1280 x 4194304 must be at most 2147483648"),
    (_sae, {"dead_tokens_threshold": -1}, "dead_tokens_threshold must be at least 0"),
    (_sae, {"auxk_coef": float("nan")}, "auxk_coef must be a finite number"),
    (_train, {"steps": 10**13}, "steps must be in 1..1000000000"),
    (_train, {"adam_betas": (0.9, 1.5)}, "adam_betas[1] must be in [0.0, 1.0), got 1.5"),
    (_train, {"geometric_median_samples": 10**12}, "geometric_median_samples must be in 1..4194304"),
    (_train, {"checkpoint_every": -1}, "checkpoint_every must be in 0..1000000000, got -1"),
    (_riebench, {"batch_size": 10**9}, "batch_size must be in 1..4096"),
    (_riebench, {"mask_threshold": float("nan")}, "mask_threshold must be a finite number"),
    (_riebench, {"mask_dilate_px": 10**9}, "mask_dilate_px must be in 0..4096"),
    (_riebench, {"resolution": 100_000}, "resolution must be a multiple of 8 pixels in 32..4096, got 100000"),
    (_toy, {"seed": 2**64}, "seed must be in 0..9223372036854775807"),
    (_toy, {"log_every": 0}, "log_every must be in 1..1000000000, got 0"),
    (_toy, {"threads": 0}, "threads must be in 1..1024, got 0"),
    (_sampling, {"steps": 1001}, "steps must be in 1..1000, got 1001"),
    (_store_training, {"expansion": 10**8}, "expansion must be in 1..256, got 100000000"),
    (_store_training, {"batch_size": 10**10}, "batch_size must be in 1..4194304"),
    (_store_training, {"seed": -1}, "seed must be in 0.."),
    (_store_training, {"step": -1}, "step must be in 0.."),
])
def test_configs_refuse_numbers_out_of_range(make, kw, needle):
    with pytest.raises(ReproError) as info:
        make(**kw)
    assert needle in str(info.value)


def test_configs_accept_their_boundaries():
    _collect(n_prompts=2, seed=SEED_MAX - 1, batch_size=4096, shard_size=65_536, resolution=32)
    _collect(n_prompts=10**8, shard_size=100)  # exactly 10**6 shards
    _sae(d_model=1280, n_features=2**31 // 1280)
    _train(steps=10**9, checkpoint_every=0, adam_betas=(0.0, 0.999))
    _riebench(batch_size=4096, mask_threshold=0.0, mask_dilate_px=0)
    _store_training(expansion=256, batch_size=2**22, seed=SEED_MAX, step=0)


def test_profile_overrides_are_range_checked():
    from repro.profiles import PROFILES, get_profile

    for name in PROFILES:  # every shipped profile is within range
        get_profile(name)
    with pytest.raises(ReproError, match=r"override of profile 'toy': collect_prompts must be in 1\.\.100000000, got -1"):
        get_profile("toy", {"collect_prompts": -1})
    with pytest.raises(ReproError, match=r"sae_batch must be in 1\.\.4194304, got 1000000000000"):
        get_profile("paper", {"sae_batch": 10**12})
    with pytest.raises(ReproError, match=r"override base: steps must be in 1\.\.1000, got 1000000"):
        get_profile("toy", {"base": {"steps": 10**6}})
    with pytest.raises(ReproError, match="sae_lr must be a finite number"):
        get_profile("toy", {"sae_lr": float("nan")})
    assert get_profile("toy", {"control_steps": 0, "riebench_per_category": 0}).control_steps == 0  # 0 documented


# --- chapter parameters ------------------------------------------------------------------------

def test_every_chapters_defaults_are_in_range():
    from repro.notebooks import check_parameters, default_parameters, list_notebooks

    for name in list_notebooks():
        defaults = default_parameters(name)
        assert check_parameters(name, defaults) == defaults


@pytest.mark.parametrize("chapter, key, value, needle", [
    ("01_shapesworld", "n_captions", "-5", "n_captions of 01_shapesworld must be in 1..1000000 (default 500), got -5"),
    ("01_shapesworld", "n_captions", str(10**12), "must be in 1..1000000"),
    ("00_overview", "seed", "-1", "seed of 00_overview must be in 0..9223372036854775807"),
    ("00_overview", "seed", str(2**64), "got 18446744073709551616"),
    ("03_train", "batch_size", str(10**9), "sae_batch must be in 1..4194304, got 1000000000"),  # the profile field's range
    ("04_evaluate", "batch_size", "0", "image_batch must be in 1..4096, got 0"),  # the profile field's range
    ("05_features", "purity_threshold", "1.5", "must be in 0.0..1.0 (default 0.8), got 1.5"),
    ("05_features", "causal_strengths", "[1, NaN]", "must hold finite numbers"),
    ("05_features", "causal_strengths", '[1, "a"]', "must be a list of numbers"),
    ("05_features", "timing_strength", "Infinity", "must hold finite numbers"),
    ("06_riebench", "per_category", "-2", "riebench_per_category must be in 0..1000000, got -2"),
    ("03_train", "checkpoint_every", "-1", "checkpoint_every of 03_train must be in 0..1000000000"),
])
def test_chapter_parameters_out_of_range(chapter, key, value, needle):
    from repro.notebooks import check_parameters

    with pytest.raises(ReproError) as info:
        check_parameters(chapter, {key: value})
    assert needle in str(info.value)


def test_chapter_ranges_keep_documented_sentinels():
    from repro.notebooks import check_parameters, parameter_range

    # None: the profile's value (03_train, 06_riebench); 0 "n_captions" (n_base) and "every edit" (per_category)
    assert check_parameters("03_train", {"batch_size": "none", "k": None}) == {"batch_size": None, "k": None}
    assert check_parameters("01_shapesworld", {"n_base": "0"}) == {"n_base": 0}
    assert check_parameters("06_riebench", {"per_category": "0"}) == {"per_category": 0}
    assert parameter_range("04_evaluate", "batch_size", 16) == (1, 4096)
    assert parameter_range("x", "some_count", 3) == (0, None)  # any non-negative default stays non-negative
    assert parameter_range("x", "offset", -2) == (None, None)


# --- the command line: refused before the model loads -------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["generate", *TINY, "a cat", "--seed", str(2**64)], "--seed must be in 0..9223372036854775807"),
    (["generate", *TINY, "a", "b", "--seed", str(SEED_MAX)], "seed + 1 .. seed + 1"),
    (["generate", *TINY, "a cat", "--resolution", "100000"], "multiple of 8 pixels in 32..4096, got 100000"),
    (["generate", *TINY, "a cat", "--steps", str(10**20)], "steps must be in 1..1000"),
    (["blocks", *TINY, "--resolution", "100000"], "--resolution must be a multiple of 8 pixels"),
    (["collect", *TINY, "--n-prompts", str(10**12), "--out", "x"], "n_prompts must be in 1..100000000"),
    (["riebench", *TINY, "--batch-size", str(10**9), "--out", "r.jsonl"], "batch_size must be in 1..4096"),
    (["riebench", *TINY, "--k-transfer", "0", "--out", "r.jsonl"], "k_transfer must be in 1.."),
    (["toy", "eval", "--n", str(10**9)], "--n must be in 1..1000000"),
    (["build-model", "bm", "--seed", str(2**64)], "--seed must be in 0.."),
])
def test_cli_refuses_huge_numbers_before_loading(tmp_path, monkeypatch, capsys, never_load, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert needle in fails(capsys, *argv)
    assert not any(tmp_path.iterdir())  # nothing was made


# --- out of space, no permission, out of memory ---------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("store") / "s"
    assert main(["collect", *TINY, "--n-prompts", "4", "--shard-size", "2", "--batch-size", "2", "--store-dtype", "fp32",
                 "--blocks", "mid.0", "--out", str(out), "--no-progress"]) == 0
    return out


def half_written(folder: Path) -> list[str]:
    """Temporaries an atomic writer would leave (hidden names, .tmp folders), besides the run's lock."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name != ".lock" and (p.name.startswith(".") or ".tmp" in str(p.relative_to(folder))))


TRAIN = ["--expansion", "2", "--k", "2", "--batch-size", "16", "--steps", "4", "--device", "cpu", "--no-progress"]


def test_full_disk_in_safetensors_during_train_is_one_line(tmp_path, capsys, monkeypatch, store):
    """safetensors reports a full disk as its own error with '(os error 28)': still one line, no temporaries."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("repro.sae.io.save_file", full)
    out = tmp_path / "t"
    line = fails(capsys, "train", "--store", str(store), "--out", str(out), *TRAIN, "--checkpoint-every", "2")
    assert "no space left on the device while writing" in line and "sae.safetensors" in line, line
    assert half_written(out) == []
    assert not list(out.rglob("sae.safetensors")) and not list((out / "checkpoints").glob("step_*"))


def test_full_disk_on_fsync_during_train_checkpoint_is_one_line(tmp_path, capsys, monkeypatch, store):
    """A full disk seen only when the data is flushed (fsync: NFS, quotas) in torch.save's trainer.pt."""
    import os

    real = os.fsync
    seen = []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        seen.append(name)
        if "trainer" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "t"
    line = fails(capsys, "train", "--store", str(store), "--out", str(out), *TRAIN, "--checkpoint-every", "2")
    assert "no space left on the device while writing" in line and "trainer.pt" in line, line
    assert half_written(out) == [] and not list((out / "checkpoints").glob("step_*"))


def test_full_disk_writing_a_png_is_one_line(tmp_path, capsys, monkeypatch):
    """PIL raises OSError(ENOSPC) without a file name: the atomic writer names the file."""
    from PIL import Image

    def full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")  # what a full disk leaves: the start of the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "g"
    line = fails(capsys, "generate", *TINY, "a cat", "--out", str(out))
    assert line.startswith(f"repro: error: no space left on the device while writing {out / '000000.png'}"), line
    assert list(out.iterdir()) == []


def test_permission_refused_midway_without_a_file_name_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")  # no file name, as some writers raise it

    monkeypatch.setattr("repro.io.os.replace", refuse)
    out = tmp_path / "g"
    line = fails(capsys, "generate", *TINY, "a cat", "--out", str(out))
    assert f"cannot write or read {out / '000000.png'} (Permission denied)" in line, line
    assert list(out.iterdir()) == []


def test_out_of_memory_is_one_line_and_other_runtime_errors_keep_their_traceback(capsys, monkeypatch):
    def oom(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 3276800000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr("repro.cli.models.run_blocks", oom)
    line = fails(capsys, "blocks")
    assert "out of memory (tried to allocate 3051.8 GiB): lower --batch-size" in line, line

    def bug(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr("repro.cli.models.run_blocks", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["blocks"])


def test_os_error_names_the_file_and_reads_safetensors_words(tmp_path):
    from safetensors import SafetensorError

    from repro.io import os_error

    got = os_error(SafetensorError("I/O error: Disk quota exceeded (os error 122)"), tmp_path / "a")
    assert (got.errno, got.filename) == (errno.EDQUOT, str(tmp_path / "a"))
    got = os_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "b")
    assert (got.errno, got.filename) == (errno.ENOSPC, str(tmp_path / "b"))
    named = PermissionError(errno.EACCES, "Permission denied", "elsewhere")
    assert os_error(named, tmp_path / "c") is named
    assert os_error(ValueError("(os error 28)"), tmp_path) is None and os_error(KeyboardInterrupt(), tmp_path) is None
