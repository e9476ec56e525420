"""Training outputs are guarded (issue 30): one training per folder, resumes that cannot mix
settings, and no NaN written or read back (SAEs, checkpoints, metrics.jsonl)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from repro.errors import ReproError
from repro.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, load_sae, save_sae, train_saes
from repro.sae.checkpoint import TRAINER_STATE, latest_checkpoint
from sparse_data import sparse_dictionary_data

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw):
    base = dict(steps=6, lr=3e-3, log_every=2, checkpoint_every=2, progress=False, device="cpu",
                geometric_median_samples=256)
    return TrainConfig(**{**base, **kw})


def _sae(k=4, seed=0):
    return {"a": TopKSAE(SAEConfig(d_model=16, n_features=64, k=k, k_aux=16, dead_tokens_threshold=640), seed=seed)}


def _source(batch_size=128, seed=0):
    x, _ = sparse_dictionary_data(2048, 16, seed=0)
    return TensorSource({"a": x}, batch_size, seed=seed)


# -- one training per output folder -----------------------------------------------------------------

RUN = textwrap.dedent("""
    import sys, time
    from repro.errors import ReproError
    from repro.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, train_saes
    from sparse_data import sparse_dictionary_data

    class Slow(TensorSource):  # a slow data source: the run holds its folder for a few seconds
        def __iter__(self):
            for batch in super().__iter__():
                time.sleep(float(sys.argv[2]))
                yield batch

    x, _ = sparse_dictionary_data(2048, 16, seed=0)
    sae = {"a": TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=16), seed=int(sys.argv[3]))}
    cfg = TrainConfig(steps=40, lr=3e-3, log_every=5, checkpoint_every=10, progress=False, device="cpu",
                      geometric_median_samples=256)
    try:
        train_saes(sae, Slow({"a": x}, 128), cfg, out_dir=sys.argv[1], resume=True)
    except ReproError as exc:
        print(f"repro: error: {exc}", file=sys.stderr)
        sys.exit(2)
""")


def _start(out: Path, delay: float, seed: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", RUN, str(out), str(delay), str(seed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _held(lock: Path) -> bool:
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def test_two_trainings_into_one_folder_cannot_both_succeed(tmp_path):
    out = tmp_path / "t"
    first = _start(out, 0.1, seed=0)  # 40 steps x 0.1 s: holds the folder for 4 s or more
    deadline = time.time() + 120
    while not _held(out / ".lock"):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    second = _start(out, 0.0, seed=1)
    err2 = second.communicate(timeout=120)[1]
    assert first.poll() is None  # the refusal came while the first was still training
    assert second.returncode == 2, err2
    assert err2.strip().splitlines() == [err2.strip()] and "another training is writing to" in err2
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]  # one run's log, not two interleaved
    trained = load_sae(out / "a")
    assert trained.metadata["training"]["steps"] == 40
    torch.testing.assert_close(load_sae(latest_checkpoint(out / "checkpoints") / "a").W_enc, trained.W_enc)
    # once the first has ended the folder is free: the same command resumes (nothing left to do)
    again = _start(out, 0.0, seed=1)
    assert again.wait(timeout=120) == 0, again.communicate()[1]


def test_the_lock_is_released_when_a_training_fails(tmp_path):
    out = tmp_path / "t"
    with pytest.raises(ReproError, match="d_model=16"):  # fails inside the locked part
        train_saes(_sae(), TensorSource({"a": torch.zeros(256, 8)}, 128), _cfg(), out_dir=out)
    assert not _held(out / ".lock")
    train_saes(_sae(), _source(), _cfg(), out_dir=out)
    assert (out / "a" / "sae.safetensors").is_file()


# -- resume: settings that change the result ----------------------------------------------------


@pytest.fixture
def interrupted(tmp_path):
    """A run of 4 steps with checkpoints at 2 and 4 (to be resumed to 6)."""
    out = tmp_path / "t"
    train_saes(_sae(), _source(), _cfg(steps=4), out_dir=out)
    return out


@pytest.mark.parametrize("change, needle", [
    (dict(cfg=dict(lr=1e-3)), "it was trained with lr=0.003, this run asks for lr=0.001"),
    (dict(cfg=dict(impl="reference")), "impl='auto', this run asks for impl='reference'"),
    (dict(cfg=dict(adam_betas=(0.8, 0.999))), "adam_betas"),
    (dict(sae=dict(k=8)), "its SAE for block 'a' has k=4 (this run: 8)"),
    (dict(source=dict(batch_size=64)), "its data had batch_size=128, this run's has batch_size=64"),
    (dict(source=dict(seed=3)), "seed=0"),
])
def test_a_resume_that_changes_the_result_is_refused(interrupted, change, needle):
    before = {p: p.read_bytes() for p in interrupted.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(ReproError, match="cannot resume") as exc:
        train_saes(_sae(**change.get("sae", {})), _source(**change.get("source", {})), _cfg(**change.get("cfg", {})),
                   out_dir=interrupted, resume=True)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    after = {p: p.read_bytes() for p in interrupted.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing was written: the SAEs, checkpoints and log are the first run's


def test_a_resume_that_only_extends_the_run_equals_one_run(interrupted, tmp_path):
    resumed = train_saes(_sae(), _source(), _cfg(log_every=3, on_nonfinite="skip"), out_dir=interrupted, resume=True)
    straight = train_saes(_sae(), _source(), _cfg(), out_dir=tmp_path / "straight")
    assert resumed.steps == straight.steps == 6
    assert torch.equal(load_sae(interrupted / "a").W_dec, load_sae(tmp_path / "straight" / "a").W_dec)
    training = load_sae(interrupted / "a").metadata["training"]
    assert training["resumed"] == [{"step": 4, "changed": {"on_nonfinite": ["stop", "skip"]}}]  # recorded, not lost
    assert training["config"]["lr"] == 3e-3


def test_a_checkpoint_without_its_config_is_refused(interrupted):
    ckpt = latest_checkpoint(interrupted / "checkpoints")
    state = torch.load(ckpt / TRAINER_STATE, weights_only=True)
    del state["config"]
    torch.save(state, ckpt / TRAINER_STATE)
    with pytest.raises(ReproError, match="lacks the field 'config'"):
        train_saes(_sae(), _source(), _cfg(), out_dir=interrupted, resume=True)


# -- non-finite values ------------------------------------------------------------------------------


def test_nan_weights_are_never_saved(tmp_path):
    sae = _sae()["a"]
    with torch.no_grad():
        sae.W_dec[3, 5] = float("nan")
        sae.b_pre[0] = float("inf")
    with pytest.raises(ReproError, match=r"non-finite weights \(W_dec: 1 of 1024 values, b_pre: 1 of 16 values\)"):
        save_sae(sae, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_nan_weights_are_refused_on_load(tmp_path):
    save_sae(_sae()["a"], tmp_path / "s")
    tensors = load_file(str(tmp_path / "s" / "sae.safetensors"))
    tensors["W_enc"][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "s" / "sae.safetensors"))
    with pytest.raises(ReproError, match=r"non-finite weights \(W_enc: 1 of 1024 values\) and is refused"):
        load_sae(tmp_path / "s")


def test_a_nan_checkpoint_is_refused_on_resume(interrupted):
    ckpt = latest_checkpoint(interrupted / "checkpoints")
    state = torch.load(ckpt / TRAINER_STATE, weights_only=True)
    state["optimizers"]["a"]["state"][0]["exp_avg"][0, 0] = float("nan")
    torch.save(state, ckpt / TRAINER_STATE)
    with pytest.raises(ReproError, match="non-finite Adam states for block 'a'"):
        train_saes(_sae(), _source(), _cfg(), out_dir=interrupted, resume=True)
    tensors = load_file(str(ckpt / "a" / "sae.safetensors"))  # and NaN in the checkpoint's SAE
    tensors["b_lat"][1] = float("nan")
    save_file(tensors, str(ckpt / "a" / "sae.safetensors"))
    with pytest.raises(ReproError, match="non-finite"):
        train_saes(_sae(), _source(), _cfg(), out_dir=interrupted, resume=True)


def _strict(text: str) -> list[dict]:
    def refuse(name):
        raise AssertionError(f"metrics.jsonl holds {name}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_metrics_are_strict_json_with_nan_as_null(tmp_path):
    x, _ = sparse_dictionary_data(1024, 16, seed=0)
    bad = x.clone()
    bad[:] = float("nan")  # block b's batches are all skipped: its interval means are NaN
    saes = {**_sae(), "b": TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=16), seed=1)}
    result = train_saes(saes, TensorSource({"a": x, "b": bad}, 128), _cfg(steps=4, on_nonfinite="skip",
                        init_b_pre=False, checkpoint_every=0), out_dir=tmp_path)
    rows = _strict((tmp_path / "metrics.jsonl").read_text())
    a = [r for r in rows if r["block"] == "a"]
    b = [r for r in rows if r["block"] == "b"]
    assert len(a) == len(b) == 2 and result.skipped_nonfinite == {"a": 0, "b": 4}
    assert all(r["loss"] is None and r["nonfinite"] == ["loss", "nmse", "auxk", "ev", "l0"] for r in b)
    assert all(isinstance(r["loss"], float) and "nonfinite" not in r for r in a)
    assert [r["skipped_nonfinite"] for r in b] == [2, 4]
