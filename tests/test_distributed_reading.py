"""Data-parallel reading scales: each rank of `repro train --parallel data` reads only its part
of the store's shards, and the run equals one process on the parts concatenated."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from repro.sae import TrainConfig, build_block_saes, load_sae, train_saes
from repro.store import ActivationStore, store_source

WORLD = 2
PARAMS = ("W_enc", "b_lat", "W_dec", "b_pre")
BLOCK = "mid.0"
TRAIN = dict(steps=12, k=4, k_aux=8, expansion=2, batch=64, lr=3e-3, dead=200, seed=5)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_pipe):
    """8 shards of 2 images, mid.0 only (16 tokens of 64 channels per image)."""
    from repro.collect import CollectConfig, collect

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("store") / "s"
    collect(CollectConfig(out=out, n_prompts=16, shard_size=2, batch_size=2, dtype="fp32", blocks=(BLOCK,),
                          device="cpu"), tiny_pipe, progress=False)
    return out


def _train_args(store: Path, out: Path) -> list[str]:
    t = TRAIN
    return ["train", "--store", str(store), "--out", str(out), "--blocks", BLOCK, "--steps", str(t["steps"]),
            "--k", str(t["k"]), "--k-aux", str(t["k_aux"]), "--expansion", str(t["expansion"]),
            "--batch-size", str(t["batch"]), "--lr", str(t["lr"]), "--dead-tokens", str(t["dead"]),
            "--seed", str(t["seed"]), "--checkpoint-every", "5", "--log-every", "4", "--device", "cpu",
            "--parallel", "data", "--no-progress"]


def _cli_rank(rank: int, world: int, port: int, store: str, out: str, logs: list[str]) -> None:
    """One rank as torchrun starts it (env:// rendezvous), counting the shards it reads."""
    from repro.cli import main

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    read: list[str] = []
    read_shard = ActivationStore.read_shard  # every shard read goes through it

    def counting(self, record, *args, **kwargs):
        read.append(record["file"])
        return read_shard(self, record, *args, **kwargs)

    ActivationStore.read_shard = counting
    assert main(_train_args(Path(store), Path(out))) == 0
    Path(logs[rank]).write_text(json.dumps(read))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_rank_reads_only_its_shards_and_the_run_equals_one_process(tmp_path, store):
    out = tmp_path / "dp"
    logs = [tmp_path / f"read-{r}.json" for r in range(WORLD)]
    mp.spawn(_cli_rank, args=(WORLD, _free_port(), str(store), str(out), [str(p) for p in logs]), nprocs=WORLD,
             join=True)
    files = [r["file"] for r in ActivationStore(store).shards]
    read = [set(json.loads(p.read_text())) for p in logs]
    for r in range(WORLD):
        assert read[r] == set(files[r::WORLD]), f"rank {r} read {sorted(read[r])}"  # old code: every shard

    # one process on the W parts concatenated: the same global batches
    t = TRAIN
    saes = build_block_saes(ActivationStore(store), k=t["k"], k_aux=t["k_aux"], expansion=t["expansion"],
                            dead_tokens=t["dead"], seed=t["seed"], blocks=[BLOCK])
    source = store_source(store, t["batch"], blocks=[BLOCK], ranks=WORLD, seed=t["seed"], device="cpu")
    cfg = TrainConfig(steps=t["steps"], lr=t["lr"], checkpoint_every=0, log_every=4, device="cpu", progress=False)
    train_saes(saes, source, cfg, out_dir=tmp_path / "one")
    got, want = load_sae(out / BLOCK), saes[BLOCK]
    for name in PARAMS:
        torch.testing.assert_close(getattr(got, name), getattr(want, name).detach().cpu(), rtol=1e-5, atol=1e-6,
                                   msg=name)
    assert torch.equal(got.tokens_since_fired, want.tokens_since_fired.cpu())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [4 * t["batch"] * i for i in (1, 2, 3)]


def test_split_stream_parts_are_disjoint_and_concatenate(store):
    """Reader r of W reads shards r::W in batches of B/W; the concatenation is one batch of B."""
    parts = [store_source(store, 32, ranks=WORLD, rank=r, seed=1, epochs=1) for r in range(WORLD)]
    whole = store_source(store, 32, ranks=WORLD, seed=1, epochs=1)
    assert [p.batch_size for p in parts] == [16, 16] and whole.batch_size == 32
    for batch, *own in zip(whole, *parts):
        assert torch.equal(batch[BLOCK], torch.cat([o[BLOCK] for o in own]))
    with pytest.raises(Exception, match="does not split over 2 ranks"):
        store_source(store, 33, ranks=WORLD, rank=0)


def test_a_store_in_one_group_is_read_once_and_yields_the_same_batches(store, monkeypatch):
    from repro.store import StoreSource

    reads = []
    read_shard = ActivationStore.read_shard
    monkeypatch.setattr(ActivationStore, "read_shard",
                        lambda self, rec, *a, **kw: reads.append(rec["file"]) or read_shard(self, rec, *a, **kw))
    kept = StoreSource(store, 24, seed=2, epochs=3)
    got = [b[BLOCK] for b in kept]
    assert len(reads) == 8  # three epochs, one read of each shard
    # twin: a fresh reader per epoch boundary reads again and must give the same rows
    fresh = []
    src = StoreSource(store, 24, seed=2, epochs=3)
    for batch in src:
        fresh.append(batch[BLOCK])
        src._held = None  # forget the kept chunk: the next epoch reads its shards again
    assert len(got) == len(fresh) and all(torch.equal(a, b) for a, b in zip(got, fresh))
