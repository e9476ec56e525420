"""Bad input, tried as a new user would (issue 16): each gets one line on stderr and exit
status 2 before any expensive work, and nothing is lost or half-written. The full list of
inputs tried, with their exit codes, is benchmarks/bad_inputs.md."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from repro.cli import build_parser, main

from cli_checks import TINY, fails


@pytest.fixture(scope="module")
def two_size_store(tmp_path_factory, one_thread):
    """A store of two blocks with different map sizes (tiny model at 64 px: 8x8 and 4x4)."""
    out = tmp_path_factory.mktemp("store") / "s"
    assert main(["collect", *TINY, "--n-prompts", "4", "--shard-size", "2", "--batch-size", "2", "--store-dtype", "fp32",
                 "--blocks", "down.1.1,down.2.1", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def never_load(monkeypatch):
    """Fail the test if a pipeline is loaded: bad input must be refused before that."""

    def load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the bad input was refused")

    monkeypatch.setattr("repro.models.loading.load_pipeline", load)


# --- 1. several chapters: every parameter checked before anything runs ----------------------

@pytest.mark.parametrize("names, param, needle", [
    (["00_overview", "01_shapesworld"], ["nope", "1"], "none of 00_overview, 01_shapesworld has a parameter 'nope'"),
    ([], ["nope", "1"], "07_claims has a parameter 'nope'"),
    (["00_overview", "01_shapesworld"], ["n_captions", "3x"], "n_captions of 01_shapesworld must be an integer"),
])
def test_notebook_run_refuses_before_running_any_chapter(monkeypatch, capsys, names, param, needle):
    ran = []
    monkeypatch.setattr("repro.notebooks.run_notebook", lambda name, given=None, **kw: ran.append(name))
    assert needle in fails(capsys, "notebook", "run", *names, "-p", *param)
    assert ran == []


def test_each_chapter_gets_the_parameters_it_has(monkeypatch, capsys):
    ran = {}
    monkeypatch.setattr("repro.notebooks.run_notebook", lambda name, given=None, **kw: ran.setdefault(name, given))
    assert main(["notebook", "run", "00_overview", "01_shapesworld", "-p", "n_captions", "3", "--profile", "toy"]) == 0
    assert ran == {"00_overview": {"profile": "toy"}, "01_shapesworld": {"profile": "toy", "n_captions": 3}}
    assert "chapter times: 00_overview" in capsys.readouterr().err


# --- 2. outputs checked before the work; damaged files; nan -----------------------------------

def test_output_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys, never_load, two_size_store):
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    assert "is a file" in fails(capsys, "generate", *TINY, "a cat", "--out", str(existing))
    assert "is a file" in fails(capsys, "train", "--store", str(two_size_store), "--out", str(existing))
    assert "is a file" in fails(capsys, "collect", *TINY, "--n-prompts", "1", "--out", str(existing))
    assert existing.read_text() == "keep me"


def test_read_only_output_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, never_load, two_size_store):
    # As a read-only filesystem answers (tests run as root, for whom permission bits do not count).
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(readonly.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert "Read-only file system" in fails(capsys, "generate", *TINY, "a cat", "--out", str(readonly / "g"))
    assert "Read-only file system" in fails(capsys, "collect", *TINY, "--n-prompts", "1", "--out", str(readonly / "c"))
    assert "Read-only file system" in fails(capsys, "train", "--store", str(two_size_store), "--out", str(readonly / "t"))
    assert "Read-only file system" in fails(capsys, "riebench", *TINY, "--out", str(readonly / "r.jsonl"))


def test_machine_refusing_a_file_midway_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr("repro.cli.models.run_blocks", refuse)  # registered afresh by main()
    assert "Permission denied" in fails(capsys, "blocks")


@pytest.mark.parametrize("argv, needle", [
    (["train", "--lr", "nan"], "--lr: must be a finite number"),
    (["train", "--lr", "-1"], "lr must be finite and >= 0"),
    (["train", "--steps", "0"], "steps must be in 1..1000000000, got 0"),
    (["collect", "--n-prompts", "abc"], "'abc' is not an integer"),
    (["collect", "--n-prompts", "0"], "n_prompts must be in 1..100000000, got 0"),
    (["generate", "x", "--guidance", "inf"], "must be a finite number"),
    (["riebench", "--m-steer", "nan", "--out", "r.jsonl"], "must be a finite number"),
])
def test_bad_numbers_are_one_line(capsys, argv, needle):
    if argv[0] == "train":
        argv = [*argv, "--store", "s", "--out", "o"]
    elif argv[0] == "collect":
        argv = [*argv, "--out", "o"]
    assert needle in fails(capsys, *argv)


def test_truncated_sae_is_one_line(tmp_path, capsys):
    from repro.sae import SAEConfig, TopKSAE, save_sae

    save_sae(TopKSAE(SAEConfig(d_model=64, n_features=128, k=4, k_aux=8)), tmp_path / "saes" / "down.2.1")
    weights = tmp_path / "saes" / "down.2.1" / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = fails(capsys, "riebench", *TINY, "--saes", str(tmp_path / "saes"), "--out", str(tmp_path / "r.jsonl"))
    assert "sae.safetensors is damaged" in line and not (tmp_path / "r.jsonl").exists()


# --- 3. an SAE of the wrong width: refused up front -----------------------------------------

def test_riebench_refuses_an_sae_of_the_wrong_width_before_any_edit(tiny_pipe):
    from repro.errors import ReproError
    from repro.riebench.data import RIEEdit
    from repro.riebench.runner import run_benchmark
    from repro.sae import SAEConfig, TopKSAE

    sae = TopKSAE(SAEConfig(d_model=7, n_features=16, k=2, k_aux=4))
    edits = [RIEEdit("a", "change_colour", "a red circle", "a blue circle")]
    with pytest.raises(ReproError, match="reads 7 channels but this model's down.2.1 has"):
        run_benchmark(tiny_pipe, {"unet.down_blocks.2.attentions.1": sae}, edits, methods=["transport"], progress=False)


# --- 4, 5, 6. block aliases; blocks of different map sizes in one training; identical bytes ----

def test_collect_blocks_all_and_paper(tmp_path, one_thread):
    from repro.blocks import PAPER_BLOCKS
    from repro.store import ActivationStore

    for alias, n in (("all", 11), ("paper", 4)):
        assert main(["collect", *TINY, "--n-prompts", "1", "--blocks", alias, "--out", str(tmp_path / alias),
                     "--no-progress"]) == 0
        assert len(ActivationStore(tmp_path / alias).blocks) == n
    assert ActivationStore(tmp_path / "paper").blocks == list(PAPER_BLOCKS)


def test_train_blocks_of_different_map_sizes_together_and_resume_exactly(tmp_path, two_size_store, one_thread):
    common = ["train", "--store", str(two_size_store), "--batch-size", "16", "--expansion", "2", "--k", "2",
              "--device", "cpu", "--no-progress", "--log-every", "1", "--checkpoint-every", "2"]
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--steps", "2", "--out", str(tmp_path / "b")]) == 0
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "b")]) == 0  # resumes at step 2
    for block in ("down.1.1", "down.2.1"):
        a, b = (tmp_path / run / block / "sae.safetensors" for run in "ab")
        assert a.read_bytes() == b.read_bytes(), block
    cfg = json.loads((tmp_path / "a" / "down.2.1" / "cfg.json").read_text())
    assert cfg["data"]["groups"] == [["down.1.1"], ["down.2.1"]]


@pytest.mark.slow
def test_train_chapter_on_blocks_of_different_map_sizes(tmp_path, monkeypatch, two_size_store):
    from repro.notebooks import run_notebook

    monkeypatch.setenv("REPRO_RESULTS_DIR", str(tmp_path / "results"))
    run_notebook("03_train", {"store": str(two_size_store), "out": str(tmp_path / "saes"), "steps": 4,
                              "batch_size": 16, "k": 2, "expansion": 4, "log_every": 2, "checkpoint_every": 2,
                              "stats_batches": 1, "device": "cpu"}, output=tmp_path / "03.ipynb")
    numbers = json.loads((tmp_path / "results" / "03_train.json").read_text())["numbers"]
    assert set(numbers["per_block"]) == {"down.1.1", "down.2.1"}


# --- 7. a damaged shard is rewritten ---------------------------------------------------------

def test_damaged_shards_are_rewritten(tmp_path, capsys, one_thread):
    out = tmp_path / "s"
    collect = ["collect", *TINY, "--n-prompts", "4", "--shard-size", "2", "--batch-size", "2", "--store-dtype", "fp32",
               "--blocks", "mid.0", "--out", str(out), "--no-progress"]
    assert main(collect) == 0
    shards = sorted((out / "shards").glob("*.safetensors"))
    good = [p.read_bytes() for p in shards]
    shards[0].write_bytes(good[0][:-100])  # truncated: the rerun sees the size and rewrites it
    assert main(collect) == 0
    assert shards[0].read_bytes() == good[0]
    flipped = bytearray(good[1])
    flipped[-5] ^= 0xFF  # same size: only the sha256 tells
    shards[1].write_bytes(bytes(flipped))
    capsys.readouterr()
    assert "--repair" in fails(capsys, "store", "verify", str(out), "--no-progress")
    assert main(["store", "verify", "--repair", str(out), "--no-progress"]) == 0
    assert "removed 1 damaged shards" in capsys.readouterr().out
    assert main(collect) == 0
    assert main(["store", "verify", str(out), "--no-progress"]) == 0
    assert [p.read_bytes() for p in shards] == good


# --- 8, 10. map sizes at odd latent sides; the default model ----------------------------------

def test_blocks_at_a_resolution_of_odd_latent_side(capsys):
    assert main(["blocks", *TINY, "--resolution", "72"]) == 0  # 18 -> 9 -> 5 (4x VAE)
    rows = {line.split()[0]: line.split()[3] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["down.1.1"] == "9x9" and rows["down.2.1"] == "5x5" and rows["up.1.0"] == "9x9"


def test_commands_default_to_the_default_profiles_model():
    from repro.profiles import get_profile

    parser = build_parser()
    model = get_profile("toy").turbo_model
    assert parser.parse_args(["collect", "--n-prompts", "1", "--out", "x"]).model == model
    assert parser.parse_args(["generate", "a cat"]).model == model
    assert parser.parse_args(["blocks"]).model == model


# --- 10, 12. chapters in a throwaway project: Ctrl-C, and the progress shown -------------------

SLEEPER = """\
    ---
    jupytext:
      text_representation:
        extension: .md
        format_name: myst
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---

    # {title}

    ```{{code-cell}} ipython3
    :tags: [parameters]

    seconds = 0
    marker = ""
    ```

    ## Waiting a while

    ```{{code-cell}} ipython3
    import pathlib, time
    if marker:
        pathlib.Path(marker).write_text("started")
    time.sleep(seconds)
    ```
"""


@pytest.fixture
def sleepy_project(tmp_path, monkeypatch):
    """A project root holding two chapters that sleep `seconds` (REPRO_ROOT points at it)."""
    (tmp_path / "notebooks").mkdir()
    for name in ("00_first", "01_second"):
        (tmp_path / "notebooks" / f"{name}.md").write_text(textwrap.dedent(SLEEPER.format(title=name)))
    monkeypatch.setenv("REPRO_ROOT", str(tmp_path))
    return tmp_path


def test_notebook_run_shows_chapter_cell_and_times(sleepy_project, capsys):
    assert main(["notebook", "run"]) == 0
    err = capsys.readouterr().err
    assert "chapter 1/2: 00_first" in err and "chapter 2/2: 01_second" in err
    assert "00_first:" in err and "cell 4: Waiting a while" in err  # the bar: chapter, cell, section
    assert "chapter times: 00_first" in err and ", 01_second " in err and "total" in err
    assert "IPKernelApp" not in err  # the kernel's own log goes to build/logs
    assert (sleepy_project / "book" / "chapters" / "01_second.ipynb").is_file()


@pytest.mark.slow
def test_ctrl_c_during_a_chapter_is_one_line(sleepy_project):
    marker = sleepy_project / "started"
    # A terminal's Ctrl-C: SIGINT to the whole foreground process group.
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", "notebook", "run", "00_first", "-p", "seconds", "120",
                             "-p", "marker", str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "REPRO_ROOT": str(sleepy_project)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ERROR" not in err, err
    assert err.strip().splitlines()[-1] == "repro: interrupted"
    assert not (sleepy_project / "book" / "chapters" / "00_first.ipynb").exists()  # nothing half-written
