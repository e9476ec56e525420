"""Several ranks on CPU (gloo, 2 processes): sharded collection and parallel SAE training equal one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from repro.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, load_sae, train_saes
from sparse_data import sparse_dictionary_data
from repro.store import ActivationStore

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PARAMS = ("W_enc", "b_lat", "W_dec", "b_pre")
WORLD = 2
DP_RTOL, DP_ATOL = 1e-5, 1e-6  # data-parallel vs one process, fp32 weights after 30 steps


# ---------------------------------------------------------------------------------------
# Collection: torchrun with 2 ranks writes the store one process writes


def _collect_args(out: Path, n: int) -> list[str]:
    return ["-m", "repro.cli", "collect", "--model", "tiny-random", "--device", "cpu", "--n-prompts", str(n),
            "--shard-size", "2", "--batch-size", "2", "--store-dtype", "bf16", "--guidance", "2", "--out", str(out),
            "--no-progress"]


def _torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-port", str(port),
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def _records(folder: Path) -> tuple[list, dict]:
    store = ActivationStore(folder)
    assert store.complete and store.verify_all() == []
    records = [{k: r[k] for k in ("index", "file", "start", "stop", "bytes", "sha256", "prompts_sha256", "nonfinite")}
               for r in store.shards]
    return records, {r["file"]: load_file(folder / r["file"]) for r in store.shards}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_collection_equals_one_process_and_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, *_collect_args(one, 10)], cwd=ROOT, env=ENV, check=True, capture_output=True,
                   timeout=300)
    # a first distributed run of 6 prompts, then one extending it to 10 (resume: shards 0-2 kept)
    for n in (6, 10):
        proc = _torchrun(_collect_args(two, n), _free_port())
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(two.glob(".manifest.rank-*"))  # parts merged away
    rec1, t1 = _records(one)
    rec2, t2 = _records(two)
    assert rec1 == rec2
    assert (one / "manifest.json").read_text().count("sha256") == (two / "manifest.json").read_text().count("sha256")
    for name in t1:
        for key in t1[name]:
            assert torch.equal(t1[name][key], t2[name][key]), (name, key)
    m1, m2 = (json.loads((f / "manifest.json").read_text()) for f in (one, two))
    assert m1["settings"] == m2["settings"] and m1["info"] == m2["info"] and m2["n_prompts"] == 10


def test_parts_left_by_killed_ranks_are_folded_in_by_one_process(tmp_path, tiny_pipe):
    """Ranks run as independent workers (no process group) leave parts; one process merges them."""
    from repro.collect import CollectConfig, collect

    torch.set_num_threads(1)
    cfg = CollectConfig(out=tmp_path / "s", n_prompts=6, shard_size=2, batch_size=2, dtype="fp32", steps=1,
                        blocks=("mid.0",), device="cpu")
    assert collect(cfg, tiny_pipe, progress=False, rank=1, world_size=WORLD) is None  # shard 1 only
    assert [p.name for p in (tmp_path / "s").glob(".manifest.rank-*")] == [".manifest.rank-00001.json"]
    assert not (tmp_path / "s" / "manifest.json").exists()
    sha1 = json.loads((tmp_path / "s" / ".manifest.rank-00001.json").read_text())["shards"][0]["sha256"]
    store = collect(cfg, tiny_pipe, progress=False)  # one process: shards 0 and 2, keeps 1
    assert store.complete and [r["index"] for r in store.shards] == [0, 1, 2]
    assert store.shards[1]["sha256"] == sha1 and store.verify_all() == []
    assert not list((tmp_path / "s").glob(".manifest.rank-*"))


# ---------------------------------------------------------------------------------------
# Training: block-parallel and data-parallel under torch.multiprocessing + gloo


def _saes():
    def one(seed):
        return TopKSAE(SAEConfig(d_model=16, n_features=64, k=4, k_aux=16, dead_tokens_threshold=640), seed=seed)

    return {"a": one(0), "b": one(1)}


def _data():
    x, _ = sparse_dictionary_data(4096, 16, n_atoms=32, k_active=3, seed=0)
    return {"a": x, "b": x.flip(1) * 0.5}


def _cfg(**kw):
    base = dict(steps=30, lr=3e-3, log_every=5, checkpoint_every=10, progress=False, device="cpu",
                geometric_median_samples=1024, impl="reference")
    return TrainConfig(**{**base, **kw})


def _worker(rank: int, world: int, init_file: str, out: str, parallel: str, steps: int) -> None:
    from repro.dist import train_distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = _data()
        train_distributed(_saes(), lambda blocks: TensorSource({b: data[b] for b in blocks}, 256, seed=3),
                          _cfg(steps=steps), out_dir=out, parallel=parallel)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, out: Path, parallel: str, steps: int = 30) -> None:
    init = tmp_path / f"init-{parallel}-{steps}"
    init.unlink(missing_ok=True)
    mp.spawn(_worker, args=(WORLD, str(init), str(out), parallel, steps), nprocs=WORLD, join=True)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    torch.set_num_threads(1)
    train_saes(_saes(), TensorSource(_data(), 256, seed=3), _cfg(), out_dir=out)
    return out


def test_block_parallel_equals_one_process_bitwise(tmp_path, one_process):
    out = tmp_path / "block"
    _spawn(tmp_path, out, "block")
    for block in ("a", "b"):
        got, want = load_sae(out / block), load_sae(one_process / block)
        for name in PARAMS:
            assert torch.equal(getattr(got, name), getattr(want, name)), (block, name)
        assert torch.equal(got.tokens_since_fired, want.tokens_since_fired)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    want_rows = [json.loads(line) for line in (one_process / "metrics.jsonl").read_text().splitlines()]
    key = lambda r: {k: r[k] for k in ("block", "step", "tokens", "loss", "nmse", "ev", "l0", "dead_frac")}  # noqa: E731
    assert [key(r) for r in rows] == [key(r) for r in want_rows]


def test_data_parallel_equals_one_process_within_tolerance_and_resumes(tmp_path, one_process):
    out = tmp_path / "data"
    _spawn(tmp_path, out, "data", steps=20)  # stops at a checkpoint ...
    _spawn(tmp_path, out, "data", steps=30)  # ... and resumes from it on both ranks
    for block in ("a", "b"):
        got, want = load_sae(out / block), load_sae(one_process / block)
        for name in PARAMS:
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=DP_RTOL, atol=DP_ATOL,
                                       msg=f"{block}.{name}")
        assert torch.equal(got.tokens_since_fired, want.tokens_since_fired)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    want_rows = [json.loads(line) for line in (one_process / "metrics.jsonl").read_text().splitlines()]
    assert [(r["block"], r["step"], r["tokens"]) for r in rows] == [(r["block"], r["step"], r["tokens"]) for r in want_rows]
    for r, w in zip(rows, want_rows):
        for k in ("loss", "nmse", "ev", "l0"):
            assert r[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), (r["block"], r["step"], k)


@pytest.mark.parametrize("impl", ["reference", "fast", "fused"])
def test_dp_step_equals_the_same_step_on_one_rank(tmp_path, impl):
    """dp_train_step(impl) with a world of one is train_step(impl) up to rounding."""
    from repro.dist import dp_train_step
    from repro.sae.step import make_optimizer, train_step

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        x = _data()["a"][:512]
        ref, got = _saes()["a"], _saes()["a"]
        ref.tokens_since_fired.fill_(700)  # some latents dead: AuxK on
        got.tokens_since_fired.fill_(700)
        o1, o2 = make_optimizer(ref, 3e-3), make_optimizer(got, 3e-3)
        for _ in range(3):
            a = train_step(ref, o1, x, impl=impl)
            b = dp_train_step(got, o2, x, impl=impl)
            for k in ("loss", "nmse", "auxk", "ev", "l0"):
                torch.testing.assert_close(getattr(b, k), getattr(a, k).detach(), rtol=1e-5, atol=1e-7)
            assert float(a.auxk) > 0
        for name in PARAMS:
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=DP_RTOL, atol=DP_ATOL)
    finally:
        dist.destroy_process_group()


def _impl_worker(rank: int, world: int, init_file: str, out: str) -> None:
    from repro.dist import dp_train_step
    from repro.sae.step import make_optimizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = _data()["a"][:512]
        result = {}
        for impl in ("fast", "fused"):
            sae = _saes()["a"]
            sae.tokens_since_fired.fill_(700)  # some latents dead: AuxK on
            opt = make_optimizer(sae, 3e-3)
            logs = [dp_train_step(sae, opt, x[rank::world], impl=impl) for _ in range(3)]  # uneven rows: strided
            result[impl] = {"params": {n: getattr(sae, n).detach() for n in PARAMS},
                            "since": sae.tokens_since_fired.clone(),
                            "logs": [{k: float(getattr(o, k)) for k in ("loss", "nmse", "auxk", "ev", "l0")} for o in logs]}
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def test_dp_step_of_each_impl_on_two_ranks_equals_one_process(tmp_path):
    """The fast and fused losses split over 2 ranks train as train_step(impl) on the whole batch."""
    from repro.sae.step import make_optimizer, train_step

    out = tmp_path / "impls.pt"
    mp.spawn(_impl_worker, args=(WORLD, str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    got = torch.load(out)
    torch.set_num_threads(1)
    x = _data()["a"][:512]
    for impl in ("fast", "fused"):
        sae = _saes()["a"]
        sae.tokens_since_fired.fill_(700)
        opt = make_optimizer(sae, 3e-3)
        logs = [train_step(sae, opt, x, impl=impl) for _ in range(3)]
        assert logs[0].auxk > 0
        for r, w in zip(got[impl]["logs"], logs):
            for k, v in r.items():
                assert v == pytest.approx(float(getattr(w, k).detach()), rel=1e-4, abs=1e-6), (impl, k)  # as the 30-step test
        for name in PARAMS:
            torch.testing.assert_close(got[impl]["params"][name], getattr(sae, name), rtol=DP_RTOL, atol=DP_ATOL,
                                       msg=f"{impl}.{name}")
        assert torch.equal(got[impl]["since"], sae.tokens_since_fired)
