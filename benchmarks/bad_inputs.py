"""Bad input, tried as a new user would: every case runs `python -m repro.cli ...` in a
scratch folder and the table of exit codes is written to benchmarks/bad_inputs.md.

    python benchmarks/bad_inputs.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/bad_inputs.py --only files    # one group
    python benchmarks/bad_inputs.py --only ranges   # numbers out of range (issue 30, item 5)

What counts: exit 2 with exactly one `repro: error:` line on stderr and no traceback for
bad input; exit 0 where the input is fixable and the command fixes it (a resumed run, a
repaired store); 130 with one line for Ctrl-C. The read-only cases need root (a read-only
tmpfs is mounted in the scratch folder) and are marked "not run" otherwise, as are the
out-of-space ones (a tmpfs of 400 kB, nearly filled). Each command runs with its address space
of the ranges group capped at 8 GiB, so that a huge number that slips through cannot exhaust the shared machine. Everything
runs on the tiny random pipeline on the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-random", "--device", "cpu"]
SMALL = ["--n-prompts", "4", "--shard-size", "2", "--batch-size", "2", "--store-dtype", "fp32", "--no-progress"]


@dataclass
class Case:
    group: str
    what: str
    argv: list[str] | Callable[[], tuple[int, str]]
    """CLI arguments, or a function running a scenario and returning (exit code, stderr)."""
    expect: int = 2
    setup: Callable[[], None] | None = None
    needs: str = ""
    result: dict = field(default_factory=dict)


MEMORY_GUARD = 8 * 2**30
"""Address space of each command (bytes): a huge number that slips through fails an allocation in the
command (one line or a traceback in the table) instead of driving the shared machine out of memory."""


def _guard() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_GUARD, MEMORY_GUARD))


def cli(*args: str, timeout: float = 600, guard: bool = False, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=W, preexec_fn=_guard if guard else None, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- fixtures (in the scratch folder W) ---------------------------------------------------------

W = Path(".")


def fixtures() -> None:
    import torch

    from repro.sae import SAEConfig, TopKSAE, save_sae

    (W / "a-file").write_text("keep me")
    (W / "a-folder").mkdir()
    (W / "not-a-store").mkdir()
    (W / "not-a-store" / "notes.txt").write_text("mine")
    (W / "empty.txt").write_text("")
    (W / "three.txt").write_text("a red circle\na blue square\na green star\n")
    (W / "bad.json").write_text("{not json")
    (W / "empty-folder").mkdir()
    assert cli("collect", *TINY, *SMALL, "--blocks", "mid.0", "--out", "store").returncode == 0
    (W / "nonempty-model").mkdir()
    (W / "nonempty-model" / "x").write_text("x")
    sae = TopKSAE(SAEConfig(d_model=64, n_features=128, k=4, k_aux=8), seed=0)
    for name in ("good", "trunc", "cfg", "stats", "narrow"):
        save_sae(sae, W / "saes" / name / "down.2.1")
    save_sae(TopKSAE(SAEConfig(d_model=7, n_features=16, k=2, k_aux=4)), W / "saes" / "narrow" / "down.2.1")
    p = W / "saes" / "trunc" / "down.2.1" / "sae.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    (W / "saes" / "cfg" / "down.2.1" / "cfg.json").write_text("{\"d_model\": 64,")
    from repro.sae.stats import FeatureStats

    sae.feature_stats = FeatureStats(mean=torch.rand(128), std=torch.rand(128))
    save_sae(sae, W / "saes" / "stats" / "down.2.1")
    p = W / "saes" / "stats" / "down.2.1" / "feature_stats.safetensors"
    p.write_bytes(p.read_bytes()[:40])
    release = "unet.down_blocks.2.attentions.1_k4_hidden128_auxk8_bs256_lr0.0001"
    for variant in ("mean-shape", "std-int", "pickle", "pth-trunc"):
        folder = W / "release" / variant / release / "final"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"n_dirs_local": 128, "d_model": 64, "k": 4, "auxk": 8,
                                                        "dead_steps_threshold": 10}))
        state = {"encoder.weight": torch.randn(128, 64), "decoder.weight": torch.randn(64, 128),
                 "pre_bias": torch.randn(64), "latent_bias": torch.randn(128)}
        torch.save({"state_dict": state}, folder / "state_dict.pth")
        torch.save(torch.rand(128), folder / "mean.pt")
        torch.save(torch.rand(128), folder / "std.pt")
    torch.save(torch.rand(127), W / "release" / "mean-shape" / release / "final" / "mean.pt")
    torch.save(torch.arange(128), W / "release" / "std-int" / release / "final" / "std.pt")
    torch.save({"state_dict": {"encoder.weight": object()}}, W / "release" / "pickle" / release / "final" / "state_dict.pth")
    p = W / "release" / "pth-trunc" / release / "final" / "state_dict.pth"
    p.write_bytes(p.read_bytes()[:200])


def mount_read_only() -> bool:
    folder = W / "ro"
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def unmount_read_only() -> None:
    for name in ("ro", "full"):
        if os.path.ismount(W / name):
            subprocess.run(["umount", str(W / name)], check=False)


FULL_KB = 400
"""Size of the small tmpfs of the out-of-space cases (room for the --out probe, not for the outputs)."""


def full_disk(argv: list[str], left: int) -> tuple[int, str]:
    """`argv` writing into a fresh tmpfs of FULL_KB kB with `left` bytes free: exit 2 with one line, and
    no half-written file left behind (exit 1 if a temporary or an unparsable JSON file is left)."""
    folder = W / "full"
    unmount_read_only()
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FULL_KB}k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        return 1, f"cannot mount a tmpfs: {done.stderr.strip()}"
    try:
        filler = folder / "filler"
        with open(filler, "wb") as fh:  # leaves `left` bytes free
            fh.write(b"\0" * max(FULL_KB * 1024 - left, 0))
        try:
            r = cli(*argv, timeout=300)
        except subprocess.TimeoutExpired:
            return 1, "hung (killed after 300 s)"
        # Half-written = an atomic writer's temporary left behind, or a file that does not parse.
        files = [p for p in folder.rglob("*") if p.is_file() and p != filler and p.name != ".lock"]
        broken = [p for p in files if p.name.startswith(".") or ".tmp" in str(p.relative_to(folder))]
        for p in files:
            if p.suffix in (".json", ".jsonl") and p not in broken:
                try:
                    [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
                except ValueError:
                    broken.append(p)
        if broken:
            return 1, f"exit {r.returncode}; half-written files left: {', '.join(str(p.relative_to(folder)) for p in broken)[:160]}"
        kept = f" (complete files kept: {', '.join(sorted(str(p.relative_to(folder)) for p in files))})" if files else ""
        return r.returncode, r.stderr.rstrip("\n") + kept
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        mount_read_only()


# --- scenarios (a run changed on disk between two commands) ------------------------------------

def copy_store(name: str) -> Path:
    shutil.copytree(W / "store", W / name)
    return W / name


def damaged_shard(kind: str) -> tuple[int, str]:
    store = copy_store(f"store-{kind}")
    shard = sorted((store / "shards").glob("*.safetensors"))[1]
    good = shard.read_bytes()
    if kind == "truncated":
        shard.write_bytes(good[:-100])
    elif kind == "flipped":
        data = bytearray(good)
        data[-5] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    steps = []
    if kind == "flipped":
        r = cli("store", "verify", str(store), "--no-progress")
        steps.append(f"verify {r.returncode}")
        r = cli("store", "verify", "--repair", str(store), "--no-progress")
        steps.append(f"verify --repair {r.returncode}")
    r = cli("collect", *TINY, *SMALL, "--blocks", "mid.0", "--out", str(store))
    steps.append(f"collect {r.returncode}")
    v = cli("store", "verify", str(store), "--no-progress")
    steps.append(f"verify {v.returncode}")
    ok = shard.is_file() and shard.read_bytes() == good and v.returncode == 0
    return (0 if ok else 1), f"{', '.join(steps)}; shard rewritten bitwise: {ok}"


def manifest_garbage() -> tuple[int, str]:
    store = copy_store("store-manifest")
    (store / "manifest.json").write_text("{\"settings\":")
    r = cli("store", "info", str(store))
    return r.returncode, r.stderr


def killed_collect() -> tuple[int, str]:
    args = ["collect", *TINY, "--n-prompts", "40", "--shard-size", "2", "--batch-size", "2", "--store-dtype", "fp32",
            "--blocks", "mid.0", "--no-progress"]
    assert cli(*args, "--out", "whole").returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", *args, "--out", "killed"], cwd=W, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((W / "killed" / "shards").glob("shard-*.safetensors"))) < 3:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    r = cli(*args, "--out", "killed")
    same = all(sha(W / "whole" / "shards" / p.name) == sha(p) for p in (W / "killed" / "shards").glob("shard-*"))
    n = len(list((W / "killed" / "shards").glob("shard-*")))
    return (r.returncode if same and n == 20 else 1), f"rerun {r.returncode}; {n} shards, bitwise equal: {same}"


def killed_train() -> tuple[int, str]:
    args = ["train", "--store", "store", "--batch-size", "16", "--expansion", "2", "--k", "2", "--steps", "300",
            "--checkpoint-every", "20", "--device", "cpu", "--no-progress"]
    assert cli(*args, "--out", "sae-whole").returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", *args, "--out", "sae-killed"], cwd=W, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((W / "sae-killed" / "checkpoints").glob("step_*/trainer.pt")):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    r = cli(*args, "--out", "sae-killed")
    same = sha(W / "sae-whole" / "mid.0" / "sae.safetensors") == sha(W / "sae-killed" / "mid.0" / "sae.safetensors")
    return (r.returncode if same else 1), f"rerun {r.returncode}; final SAE bitwise equal: {same}"


def truncated_checkpoint() -> tuple[int, str]:
    def train(steps: int) -> subprocess.CompletedProcess:
        return cli("train", "--store", "store", "--batch-size", "16", "--expansion", "2", "--k", "2", "--steps", str(steps),
                   "--checkpoint-every", "2", "--device", "cpu", "--no-progress", "--out", "sae-ckpt")

    assert train(4).returncode == 0
    state = sorted((W / "sae-ckpt" / "checkpoints").glob("step_*"))[-1] / "trainer.pt"
    state.write_bytes(state.read_bytes()[:300])
    r = train(6)
    return r.returncode, r.stderr


def ctrl_c(argv: list[str], wait_for: Callable[[], bool]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    # As from a terminal: SIGINT handled by default (this script may run under nohup, which ignores it).
    proc = subprocess.Popen([sys.executable, "-m", "repro.cli", *argv], cwd=W, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not wait_for() and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def ctrl_c_notebook() -> tuple[int, str]:
    project = W / "project"
    (project / "notebooks").mkdir(parents=True, exist_ok=True)
    (project / "notebooks" / "00_sleep.md").write_text(SLEEPER)
    marker = project / "started"
    os.environ["REPRO_ROOT"] = str(project)
    try:
        return ctrl_c(["notebook", "run", "00_sleep", "-p", "marker", str(marker)], marker.exists)
    finally:
        del os.environ["REPRO_ROOT"]


SLEEPER = """---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# Sleep

```{code-cell} ipython3
:tags: [parameters]

marker = ""
```

```{code-cell} ipython3
import pathlib, time
pathlib.Path(marker).write_text("started")
time.sleep(120)
```
"""


# --- the cases --------------------------------------------------------------------------------

# --- untrusted artifacts (issue 30): nothing outside the store is touched --------------------

def hostile_store(how: str, argv_of) -> tuple[int, str]:
    """A store copy made hostile (`how`), one command on it; exit 1 if a file outside changed."""
    n = len(list(W.glob(f"store-{how}*")))  # one how, several commands: a copy each
    store = copy_store(f"store-{how}{n or ''}")
    outside = W / f"outside-{how}{n or ''}.safetensors"
    shard = store / "shards" / "shard-000000.safetensors"
    shutil.copyfile(shard, outside)
    manifest = json.loads((store / "manifest.json").read_text())
    if how in ("dotdot", "absolute"):
        manifest["shards"][0]["file"] = f"../{outside.name}" if how == "dotdot" else str(outside)
    elif how == "link-out":
        shard.unlink()
        shard.symlink_to(outside)
    elif how == "folder":
        shard.unlink()
        shard.mkdir()
    elif how == "fifo":
        shard.unlink()
        os.mkfifo(shard)
    elif how == "dtype-lie":
        manifest["settings"]["dtype"] = "bf16"
    elif how == "null-record":
        manifest["shards"][0] = None
    elif how == "no-blocks":
        del manifest["settings"]["blocks"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    before = (outside.read_bytes(), os.stat(outside).st_mtime_ns)
    try:
        r = cli(*argv_of(store.name), timeout=120)
    except subprocess.TimeoutExpired:
        return 1, "hung (killed after 120 s)"
    if (outside.read_bytes(), os.stat(outside).st_mtime_ns) != before:
        return 1, "the file outside the store was changed"
    return r.returncode, r.stderr


def two_trainings() -> tuple[int, str]:
    """Two `repro train` into one folder at once: the second must be refused while the first runs."""
    argv = ["train", "--store", "store", "--out", "twice", "--steps", "3000", "--batch-size", "8", "--device", "cpu",
            "--checkpoint-every", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "repro.cli", *argv], cwd=W, env=env, stderr=subprocess.PIPE, text=True)
    import fcntl

    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if (W / "twice" / ".lock").exists():
            with open(W / "twice" / ".lock") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fh, fcntl.LOCK_UN)
                except BlockingIOError:
                    break
        time.sleep(0.05)
    second = cli(*argv)
    still = first.poll() is None
    err1 = first.communicate(timeout=600)[1]
    if not (still and first.returncode == 0):
        return 1, f"first run: exit {first.returncode}, still running when refused: {still}; {err1[-200:]}"
    return second.returncode, second.stderr


def changed_resume() -> tuple[int, str]:
    base = ["train", "--store", "store", "--out", "resume-lr", "--steps", "4", "--batch-size", "8", "--device", "cpu",
            "--checkpoint-every", "2", "--no-progress"]
    if cli(*base).returncode != 0:
        return 1, "the first run failed"
    r = cli(*base[:5], "--steps", "8", *base[7:], "--lr", "0.001")
    return r.returncode, r.stderr


def nan_sae() -> tuple[int, str]:
    from safetensors.torch import load_file, save_file

    folder = W / "saes" / "nan"
    shutil.copytree(W / "saes" / "good", folder)
    path = folder / "down.2.1" / "sae.safetensors"
    tensors = load_file(str(path))
    tensors["W_dec"][0, 0] = float("nan")
    save_file(tensors, str(path))
    r = cli("riebench", *TINY, "--saes", str(folder), "--out", "r-nan.jsonl")
    return r.returncode, r.stderr


def cfg_without_k() -> tuple[int, str]:
    folder = W / "saes" / "no-k"
    shutil.copytree(W / "saes" / "good", folder)
    cfg = json.loads((folder / "down.2.1" / "cfg.json").read_text())
    del cfg["k"]
    (folder / "down.2.1" / "cfg.json").write_text(json.dumps(cfg))
    r = cli("riebench", *TINY, "--saes", str(folder), "--out", "r-nok.jsonl")
    return r.returncode, r.stderr


def untrusted_cases() -> list[Case]:
    verify = lambda s: ["store", "verify", s, "--no-progress"]  # noqa: E731
    repair = lambda s: ["store", "verify", "--repair", s, "--no-progress"]  # noqa: E731
    train = lambda s: ["train", "--store", s, "--out", f"t-{s}", "--steps", "2", "--batch-size", "8",  # noqa: E731
                       "--device", "cpu", "--checkpoint-every", "0", "--no-progress"]
    C = lambda what, fn, expect=2: Case("untrusted", what, fn, expect=expect)  # noqa: E731
    return [
        C("manifest shard '../outside' (same bytes): verify --repair", lambda: hostile_store("dotdot", repair)),
        C("manifest shard '../outside': train", lambda: hostile_store("dotdot", train)),
        C("manifest shard an absolute path: verify", lambda: hostile_store("absolute", verify)),
        C("shard a link out of the store: verify --repair", lambda: hostile_store("link-out", repair)),
        C("shard a link out of the store: train", lambda: hostile_store("link-out", train)),
        C("shard a folder: verify --repair", lambda: hostile_store("folder", repair)),
        C("shard a FIFO: verify (no hang)", lambda: hostile_store("fifo", verify)),
        C("manifest dtype lies (bf16 for fp32 shards): verify", lambda: hostile_store("dtype-lie", verify)),
        C("manifest shard record null: store info", lambda: hostile_store("null-record", lambda s: ["store", "info", s])),
        C("manifest without settings.blocks: train", lambda: hostile_store("no-blocks", train)),
        C("two trainings into one --out at once", two_trainings),
        C("train resumed with another --lr", changed_resume),
        C("NaN in SAE weights: riebench", nan_sae),
        C("cfg.json without k: riebench", cfg_without_k),
    ]


def range_cases() -> list[Case]:
    """Numbers out of range (issue 30, item 5): refused before work starts, with the valid range."""
    huge = str(2**64)
    C = lambda what, argv: Case("ranges", what, argv)  # noqa: E731
    train = ["train", "--store", "store", "--out", "t", "--device", "cpu"]
    return [
        C("generate --seed 2**64", ["generate", *TINY, "a cat", "--seed", huge]),
        C("generate --seed -1", ["generate", *TINY, "a cat", "--seed", "-1"]),
        C("generate two prompts from --seed 2**63-1 (the second overflows)",
          ["generate", *TINY, "a cat", "a dog", "--seed", str(2**63 - 1)]),
        C("generate --steps 10**20", ["generate", *TINY, "a cat", "--steps", str(10**20)]),
        C("generate --resolution 8 (too small for the VAE)", ["generate", *TINY, "a cat", "--resolution", "8"]),
        C("generate --resolution 100000", ["generate", *TINY, "a cat", "--resolution", "100000"]),
        C("blocks --resolution 100000", ["blocks", *TINY, "--resolution", "100000"]),
        C("collect --resolution 16", ["collect", *TINY, "--n-prompts", "1", "--resolution", "16", "--out", "x"]),
        C("collect --n-prompts 10**12", ["collect", *TINY, "--n-prompts", str(10**12), "--out", "x"]),
        C("collect --n-prompts 10**8 --shard-size 1 (10**8 shards)",
          ["collect", *TINY, "--n-prompts", str(10**8), "--shard-size", "1", "--out", "x"]),
        C("collect --batch-size 10**9", ["collect", *TINY, "--n-prompts", "2", "--batch-size", str(10**9), "--out", "x"]),
        C("collect --shard-size 10**9", ["collect", *TINY, "--n-prompts", "2", "--shard-size", str(10**9), "--out", "x"]),
        C("collect --seed 2**63-1 for 2 prompts", ["collect", *TINY, "--n-prompts", "2", "--seed", str(2**63 - 1), "--out", "x"]),
        C("collect --writers 10**6", ["collect", *TINY, "--n-prompts", "2", "--writers", str(10**6), "--out", "x"]),
        C("train --seed 2**64", [*train, "--seed", huge]),
        C("train --seed -1", [*train, "--seed", "-1"]),
        C("train --batch-size 10**10", [*train, "--batch-size", str(10**10)]),
        C("train --expansion 10**8", [*train, "--expansion", str(10**8)]),
        C("train --steps 10**13", [*train, "--steps", str(10**13)]),
        C("train --k 10**13", [*train, "--k", str(10**13)]),
        C("train --geometric-median-samples 10**12", [*train, "--geometric-median-samples", str(10**12)]),
        C("train --adam-betas 0.9 1.5", [*train, "--adam-betas", "0.9", "1.5"]),
        C("train --read-threads 10**6", [*train, "--read-threads", str(10**6)]),
        C("riebench --batch-size 10**9", ["riebench", *TINY, "--batch-size", str(10**9), "--out", "r.jsonl"]),
        C("riebench --resolution 100000", ["riebench", *TINY, "--resolution", "100000", "--out", "r.jsonl"]),
        C("riebench --mask-dilate-px 10**9", ["riebench", *TINY, "--mask-dilate-px", str(10**9), "--out", "r.jsonl"]),
        C("riebench --k-transfer 10**12", ["riebench", *TINY, "--k-transfer", str(10**12), "--out", "r.jsonl"]),
        C("riebench-example --resolution 10**6", ["riebench-example", "ex", "--resolution", str(10**6)]),
        C("build-model --seed 2**64", ["build-model", "bm", "--seed", huge]),
        C("toy train --seed -3", ["toy", "train", "--seed", "-3"]),
        C("toy train --set data.scenes=10**9", ["toy", "train", "--set", f"data.scenes={10**9}"]),
        C("toy train --batch-size 10**9", ["toy", "train", "--batch-size", str(10**9)]),
        C("toy eval --n 10**9", ["toy", "eval", "--n", str(10**9)]),
        C("notebook run 00_overview -p seed -1", ["notebook", "run", "00_overview", "-p", "seed", "-1"]),
        C("notebook run 00_overview -p seed 2**64", ["notebook", "run", "00_overview", "-p", "seed", huge]),
        C("notebook run 01_shapesworld -p n_captions -5 (a negative count)",
          ["notebook", "run", "01_shapesworld", "-p", "n_captions", "-5"]),
        C("notebook run 01_shapesworld -p n_captions 10**12",
          ["notebook", "run", "01_shapesworld", "-p", "n_captions", str(10**12)]),
        C("notebook run 03_train -p batch_size 10**9", ["notebook", "run", "03_train", "-p", "batch_size", str(10**9)]),
        C("notebook run 05_features -p purity_threshold 1.5", ["notebook", "run", "05_features", "-p", "purity_threshold", "1.5"]),
        C("notebook run 05_features -p causal_strengths '[1, NaN]'",
          ["notebook", "run", "05_features", "-p", "causal_strengths", "[1, NaN]"]),
        C("notebook run 06_riebench -p per_category -2", ["notebook", "run", "06_riebench", "-p", "per_category", "-2"]),
        C("notebook run 00_overview -p overrides '{\"collect_prompts\": -1}'",
          ["notebook", "run", "00_overview", "-p", "overrides", '{"collect_prompts": -1}']),
        C("notebook run 00_overview -p overrides '{\"sae_batch\": 10**12}'",
          ["notebook", "run", "00_overview", "-p", "overrides", '{"sae_batch": 1000000000000}']),
        C("notebook run 00_overview -p overrides '{\"base\": {\"steps\": 10**6}}'",
          ["notebook", "run", "00_overview", "-p", "overrides", '{"base": {"steps": 1000000}}']),
    ]


def full_disk_cases() -> list[Case]:
    """The disk fills during the run (issue 30, item 6): one line, nothing half-written left."""
    full = "root (small tmpfs)"
    C = lambda what, fn: Case("no space", what, fn, needs=full)  # noqa: E731
    train = ["train", "--store", "store", "--expansion", "2", "--k", "2", "--batch-size", "16", "--steps", "4",
             "--checkpoint-every", "2", "--device", "cpu", "--no-progress"]
    return [
        C("train: the first checkpoint does not fit", lambda: full_disk([*train, "--out", "full/t"], 40_000)),
        C("train: the final SAE does not fit (no checkpoints)",
          lambda: full_disk([*train[:-3], "--checkpoint-every", "0", "--no-progress", "--out", "full/t"], 40_000)),
        C("generate: the first PNG does not fit", lambda: full_disk(["generate", *TINY, "a cat", "a dog", "--out", "full/g"],
                                                                    3_000)),
        C("collect: the first shard does not fit",
          lambda: full_disk(["collect", *TINY, *SMALL, "--blocks", "mid.0", "--out", "full/c"], 20_000)),
        C("riebench: the results file does not fit",
          lambda: full_disk(["riebench", *TINY, "--limit", "1", "--categories", "change_colour", "--methods", "steer",
                             "--no-progress", "--out", "full/r.jsonl"], 0)),
    ]


def cases() -> list[Case]:
    C = Case
    ro = "root (read-only tmpfs)"
    return [
        # command line: arguments and values
        C("arguments", "no command", []),
        C("arguments", "unknown command", ["nosuch"]),
        C("arguments", "collect without --out", ["collect", "--n-prompts", "1"]),
        C("arguments", "collect --n-prompts abc", ["collect", "--n-prompts", "abc", "--out", "x"]),
        C("arguments", "collect --n-prompts 0", ["collect", "--n-prompts", "0", "--out", "x"]),
        C("arguments", "collect --n-prompts -5", ["collect", "--n-prompts", "-5", "--out", "x"]),
        C("arguments", "collect --steps 0", ["collect", *TINY, "--n-prompts", "1", "--steps", "0", "--out", "x"]),
        C("arguments", "collect --guidance nan", ["collect", "--n-prompts", "1", "--guidance", "nan", "--out", "x"]),
        C("arguments", "collect --resolution 100 (not a multiple of 8)",
          ["collect", *TINY, "--n-prompts", "1", "--resolution", "100", "--out", "x"]),
        C("arguments", "collect --batch-size 0", ["collect", "--n-prompts", "1", "--batch-size", "0", "--out", "x"]),
        C("arguments", "collect --shard-size 0", ["collect", "--n-prompts", "1", "--shard-size", "0", "--out", "x"]),
        C("arguments", "collect --store-dtype fp8", ["collect", "--n-prompts", "1", "--store-dtype", "fp8", "--out", "x"]),
        C("arguments", "collect --blocks down.9.9", ["collect", *TINY, "--n-prompts", "1", "--blocks", "down.9.9", "--out", "x"]),
        C("arguments", "collect --blocks ',' (empty list)", ["collect", *TINY, "--n-prompts", "1", "--blocks", ",", "--out", "x"]),
        C("arguments", "collect --blocks naming a block twice",
          ["collect", *TINY, "--n-prompts", "1", "--blocks", "mid.0,mid_block.attentions.0", "--out", "x"]),
        C("arguments", "collect --blocks all (documented alias)",
          ["collect", *TINY, "--n-prompts", "1", "--blocks", "all", "--no-progress", "--out", "all-blocks"], expect=0),
        C("arguments", "collect --blocks paper (documented alias)",
          ["collect", *TINY, "--n-prompts", "1", "--blocks", "paper", "--no-progress", "--out", "paper-blocks"], expect=0),
        C("arguments", "collect --model /no/such/folder", ["collect", "--model", "/no/such/folder", "--n-prompts", "1", "--out", "x"]),
        C("arguments", "collect --model-dtype float8", ["collect", *TINY, "--model-dtype", "float8", "--n-prompts", "1", "--out", "x"]),
        C("arguments", "collect --device cuda:7 (no such device)", ["collect", "--model", "tiny-random", "--device", "cuda:7",
                                                                  "--n-prompts", "1", "--out", "x"]),
        C("arguments", "generate --steps 0", ["generate", *TINY, "a cat", "--steps", "0"]),
        C("arguments", "generate --guidance inf", ["generate", *TINY, "a cat", "--guidance", "inf"]),
        C("arguments", "generate --resolution 12", ["generate", *TINY, "a cat", "--resolution", "12"]),
        C("arguments", "blocks --dtype float8", ["blocks", *TINY, "--dtype", "float8"]),
        C("arguments", "blocks --model /no/such/folder", ["blocks", "--model", "/no/such/folder"]),
        C("arguments", "blocks --resolution 0", ["blocks", *TINY, "--resolution", "0"]),
        C("arguments", "train --lr nan", ["train", "--store", "store", "--out", "t", "--lr", "nan"]),
        C("arguments", "train --lr -1", ["train", "--store", "store", "--out", "t", "--lr", "-1"]),
        C("arguments", "train --steps 0", ["train", "--store", "store", "--out", "t", "--steps", "0"]),
        C("arguments", "train --k 0", ["train", "--store", "store", "--out", "t", "--k", "0"]),
        C("arguments", "train --k 300 --expansion 1 (k >= features)",
          ["train", "--store", "store", "--out", "t", "--k", "300", "--expansion", "1"]),
        C("arguments", "train --step 5 (store has 1 step)", ["train", "--store", "store", "--out", "t", "--step", "5"]),
        C("arguments", "train --half cond (store without guidance)", ["train", "--store", "store", "--out", "t", "--half", "cond"]),
        C("arguments", "train --blocks down.9.9", ["train", "--store", "store", "--out", "t", "--blocks", "down.9.9"]),
        C("arguments", "train --blocks up.0.1 (not in the store)", ["train", "--store", "store", "--out", "t", "--blocks", "up.0.1"]),
        C("arguments", "train --parallel foo", ["train", "--store", "store", "--out", "t", "--parallel", "foo"]),
        C("arguments", "riebench --methods foo", ["riebench", *TINY, "--methods", "foo", "--out", "r.jsonl"]),
        C("arguments", "riebench --categories foo", ["riebench", *TINY, "--categories", "foo", "--out", "r.jsonl"]),
        C("arguments", "riebench --m-steer nan", ["riebench", *TINY, "--m-steer", "nan", "--out", "r.jsonl"]),
        C("arguments", "riebench --k-transfer 0", ["riebench", *TINY, "--k-transfer", "0", "--out", "r.jsonl"]),
        C("arguments", "riebench --limit 0", ["riebench", *TINY, "--limit", "0", "--out", "r.jsonl"]),
        C("arguments", "riebench-example --per-category 3", ["riebench-example", "ex", "--per-category", "3"]),
        C("arguments", "toy train --stage foo", ["toy", "train", "--stage", "foo"]),
        C("arguments", "toy train --steps vae=x", ["toy", "train", "--steps", "vae=x"]),
        C("arguments", "notebook run 99_missing", ["notebook", "run", "99_missing"]),
        C("arguments", "notebook run 00_overview -p seed 3x", ["notebook", "run", "00_overview", "-p", "seed", "3x"]),
        C("arguments", "notebook run 00_overview --profile huge", ["notebook", "run", "00_overview", "--profile", "huge"]),
        C("arguments", "notebook run 00_overview 01_shapesworld -p nope 1",
          ["notebook", "run", "00_overview", "01_shapesworld", "-p", "nope", "1"]),
        C("arguments", "notebook run (all chapters) -p nope 1", ["notebook", "run", "-p", "nope", "1"]),
        C("arguments", "notebook run 00_overview 01_shapesworld -p n_captions 3x",
          ["notebook", "run", "00_overview", "01_shapesworld", "-p", "n_captions", "3x"]),
        C("arguments", "notebook run 00_overview -p overrides '{\"nope\": 1}'",
          ["notebook", "run", "00_overview", "-p", "overrides", '{"nope": 1}']),
        # files: inputs that are missing or wrong, outputs that cannot be written
        C("files", "generate --out EXISTING_FILE", ["generate", *TINY, "a cat", "--out", "a-file"]),
        C("files", "train --out EXISTING_FILE", ["train", "--store", "store", "--out", "a-file"]),
        C("files", "collect --out EXISTING_FILE", ["collect", *TINY, "--n-prompts", "1", "--out", "a-file"]),
        C("files", "collect --out a folder holding other files", ["collect", *TINY, "--n-prompts", "1", "--out", "not-a-store"]),
        C("files", "riebench --out EXISTING_FOLDER", ["riebench", *TINY, "--out", "a-folder"]),
        C("files", "riebench-example OUT under a file", ["riebench-example", "a-file/sub"]),
        C("files", "build-model into a non-empty folder", ["build-model", "nonempty-model"]),
        C("files", "collect --out on a read-only filesystem", ["collect", *TINY, "--n-prompts", "1", "--out", "ro/s"], needs=ro),
        C("files", "train --out on a read-only filesystem", ["train", "--store", "store", "--out", "ro/t"], needs=ro),
        C("files", "generate --out on a read-only filesystem", ["generate", *TINY, "a cat", "--out", "ro/g"], needs=ro),
        C("files", "riebench --out on a read-only filesystem", ["riebench", *TINY, "--out", "ro/r.jsonl"], needs=ro),
        C("files", "collect --prompts missing.txt", ["collect", *TINY, "--prompts", "missing.txt", "--n-prompts", "1", "--out", "x"]),
        C("files", "collect --prompts empty.txt", ["collect", *TINY, "--prompts", "empty.txt", "--n-prompts", "1", "--out", "x"]),
        C("files", "collect --n-prompts 5 from a file of 3", ["collect", *TINY, "--prompts", "three.txt", "--n-prompts", "5", "--out", "x"]),
        C("files", "collect onto a store made with other settings (--steps 2)",
          ["collect", *TINY, *SMALL, "--blocks", "mid.0", "--steps", "2", "--out", "store"]),
        C("files", "collect asking for fewer prompts than the store holds",
          ["collect", *TINY, "--n-prompts", "2", "--shard-size", "2", "--batch-size", "2", "--store-dtype", "fp32", "--blocks", "mid.0",
           "--out", "store"]),
        C("files", "train --store missing", ["train", "--store", "missing", "--out", "t"]),
        C("files", "train --store a folder that is no store", ["train", "--store", "not-a-store", "--out", "t"]),
        C("files", "store info missing", ["store", "info", "missing"]),
        C("files", "store verify missing", ["store", "verify", "missing"]),
        C("files", "riebench --edits missing.json", ["riebench", *TINY, "--edits", "missing.json", "--out", "r.jsonl"]),
        C("files", "riebench --edits bad.json (not JSON)", ["riebench", *TINY, "--edits", "bad.json", "--out", "r.jsonl"]),
        C("files", "riebench --saes missing", ["riebench", *TINY, "--saes", "missing", "--out", "r.jsonl"]),
        C("files", "riebench --saes an empty folder", ["riebench", *TINY, "--saes", "empty-folder", "--out", "r.jsonl"]),
        C("files", "riebench --masks missing", ["riebench", *TINY, "--masks", "missing", "--out", "r.jsonl"]),
        # corrupted artifacts
        C("corrupted", "truncated sae.safetensors", ["riebench", *TINY, "--saes", "saes/trunc", "--out", "r.jsonl"]),
        C("corrupted", "cfg.json cut short", ["riebench", *TINY, "--saes", "saes/cfg", "--out", "r.jsonl"]),
        C("corrupted", "truncated feature_stats.safetensors", ["riebench", *TINY, "--saes", "saes/stats", "--out", "r.jsonl"]),
        C("corrupted", "SAE whose width is not its block's", ["riebench", *TINY, "--saes", "saes/narrow", "--out", "r.jsonl"]),
        C("corrupted", "release layout: mean.pt of the wrong shape",
          ["riebench", *TINY, "--saes", "release/mean-shape", "--out", "r.jsonl"]),
        C("corrupted", "release layout: std.pt of integers", ["riebench", *TINY, "--saes", "release/std-int", "--out", "r.jsonl"]),
        C("corrupted", "release layout: state_dict.pth with pickled code",
          ["riebench", *TINY, "--saes", "release/pickle", "--out", "r.jsonl"]),
        C("corrupted", "release layout: truncated state_dict.pth",
          ["riebench", *TINY, "--saes", "release/pth-trunc", "--out", "r.jsonl"]),
        C("corrupted", "manifest.json cut short", manifest_garbage),
        C("corrupted", "truncated shard, then the same collect", lambda: damaged_shard("truncated"), expect=0),
        C("corrupted", "deleted shard, then the same collect", lambda: damaged_shard("deleted"), expect=0),
        C("corrupted", "shard with a flipped byte: verify, verify --repair, collect", lambda: damaged_shard("flipped"), expect=0),
        C("corrupted", "truncated checkpoint trainer.pt, then train resumes", truncated_checkpoint),
        # interrupted runs
        C("interrupted", "collect killed (SIGKILL) after 3 shards, rerun", killed_collect, expect=0),
        C("interrupted", "train killed (SIGKILL) after its first checkpoint, rerun", killed_train, expect=0),
        C("interrupted", "Ctrl-C during notebook run", ctrl_c_notebook, expect=130),
        C("interrupted", "Ctrl-C during collect",
          lambda: ctrl_c(["collect", *TINY, "--n-prompts", "400", "--shard-size", "2", "--batch-size", "2", "--blocks", "mid.0",
                          "--no-progress", "--out", "ctrl-c"], lambda: (W / "ctrl-c" / "manifest.json").exists()),
          expect=130),
    ] + untrusted_cases() + range_cases() + full_disk_cases()


def run_case(case: Case, can: set[str]) -> None:
    if case.needs and case.needs not in can:
        case.result = {"code": None, "note": f"not run (needs {case.needs})"}
        return
    started = time.time()
    try:
        if callable(case.argv):
            code, err = case.argv()
        else:
            done = cli(*case.argv, timeout=300, guard=case.group == "ranges")
            code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = None, f"hung (killed after {exc.timeout:.0f} s)"
    hung = code is None or err.startswith("hung")
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line]
    errors = [line for line in lines if line.startswith("repro:")]
    clean = "Traceback" not in err and (code == 0 or len(errors) == 1)
    ok = code == case.expect and clean
    note = errors[0] if errors else (lines[-1] if lines and code != 0 else err.strip().splitlines()[-1] if err.strip() else "")
    note = note.replace(f"{W}/", "").replace(str(W), ".")  # the scratch folder's name changes from run to run
    case.result = {"code": "hung" if code is None else code, "ok": ok and not hung, "lines": len(lines),
                   "note": note[:220], "s": round(time.time() - started, 1), "traceback": "Traceback" in err,
                   "hung": hung}


def write_table(all_cases: list[Case], out: Path) -> None:
    rows = ["# Bad inputs and the exit codes they give", "",
            "Written by `python benchmarks/bad_inputs.py` (issue 16). Each case runs `python -m repro.cli ...` in a",
            "scratch folder holding a small store (`store`, tiny random pipeline, block mid.0, 4 prompts), SAE folders",
            "and damaged copies of them. Expected: exit 2 with one `repro: error:` line and no traceback for bad",
            "input; 0 where the command repairs what the input broke (a resumed or repaired run, checked bitwise);",
            "130 with one line for Ctrl-C.", ""]
    for group in dict.fromkeys(c.group for c in all_cases):
        chosen = [c for c in all_cases if c.group == group]
        rows += [f"## {group} ({len(chosen)})", "", "| input | command | exit | as expected | stderr (first line) |",
                 "|---|---|---|---|---|"]
        for c in chosen:
            command = "scenario: " + c.what if callable(c.argv) else "`repro " + " ".join(
                a if a and " " not in a and "'" not in a else repr(a) for a in c.argv) + "`"
            r = c.result
            ok = "-" if r.get("code") is None else ("yes" if r["ok"] else "**no**")
            note = r.get("note", "").replace("|", "\\|")
            rows.append(f"| {c.what} | {command.replace('|', chr(92) + '|')} | {r.get('code', '-')} | {ok} | {note} |")
        rows.append("")
    ran = [c for c in all_cases if c.result.get("code") is not None]
    good = sum(c.result["ok"] for c in ran)
    codes = {}
    for c in ran:
        codes[c.result["code"]] = codes.get(c.result["code"], 0) + 1
    tracebacks = sum(c.result.get("traceback", False) for c in ran)
    hangs = sum(c.result.get("hung", False) for c in ran)
    rows += ["## Summary", "", f"{len(ran)} of {len(all_cases)} cases ran; {good} as expected; {tracebacks} tracebacks, "
             f"{hangs} hangs. Exit codes: "
             + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items(), key=lambda kv: str(kv[0]))) + ".", ""]
    out.write_text("\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    global W
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "bad_inputs.md")
    parser.add_argument("--only", default=None,
                        help="run one group: arguments, files, corrupted, interrupted, untrusted, ranges, 'no space'")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as tmp:
        W = Path(tmp)
        fixtures()
        can = {"root (read-only tmpfs)", "root (small tmpfs)"} if mount_read_only() else set()
        try:
            chosen = [c for c in cases() if args.only in (None, c.group)]
            for i, case in enumerate(chosen, 1):
                run_case(case, can)
                r = case.result
                print(f"[{i}/{len(chosen)}] {case.group}: {case.what}: {r.get('code')} "
                      f"{'ok' if r.get('ok') else r.get('note', '')}", flush=True)
        finally:
            unmount_read_only()
    write_table(chosen, args.out)
    ran = [c for c in chosen if c.result.get("code") is not None]
    print(f"wrote {args.out}: {sum(c.result['ok'] for c in ran)} of {len(ran)} as expected, "
          f"{sum(c.result.get('traceback', False) for c in ran)} tracebacks, {sum(c.result.get('hung', False) for c in ran)} hangs")
    return 0 if all(c.result.get("ok", True) for c in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
