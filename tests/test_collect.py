"""Collection end to end: SIGKILL and resume, and the streaming source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repro.collect import CollectConfig, collect
from repro.errors import ReproError
from repro.generate import Sampling
from repro.store import ActivationStore, StoreSource
from repro.stream import StreamSource

BLOCKS = ("down.2.1", "mid.0", "up.0.0", "up.0.1")
ROOT = Path(__file__).resolve().parents[1]




def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "repro.cli", "collect", "--model", "tiny-random", "--device", "cpu",
            "--n-prompts", "24", "--shard-size", "2", "--batch-size", "2", "--store-dtype", "bf16", "--guidance", "2",
            "--out", str(out), "--no-progress"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(out: Path) -> None:
    subprocess.run(_command(out), check=True, cwd=ROOT, capture_output=True, timeout=300, env=ENV)


def _store_contents(folder: Path) -> tuple[list, list, list, dict]:
    store = ActivationStore(folder)
    assert store.complete and store.verify_all() == []
    records = [{k: r[k] for k in ("file", "start", "stop", "bytes", "sha256", "prompts_sha256", "nonfinite")}
               for r in store.shards]
    tensors = {r["file"]: load_file(folder / r["file"]) for r in store.shards}
    return records, store.prompts(), store.seeds(), tensors


def test_sigkill_and_rerun_equals_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(killed), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "shards" / "shard-000000.safetensors"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    assert proc.poll() is None, "the collection ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = killed / "manifest.json"
    assert not manifest.exists() or not ActivationStore(killed).complete
    _run(killed)  # the same command resumes
    _run(tmp_path / "clean")
    a, b = _store_contents(killed), _store_contents(tmp_path / "clean")
    assert a[0] == b[0]  # records: ranges, sizes, checksums
    assert a[1] == b[1] and a[2] == b[2] == list(range(24))
    for name in a[3]:
        assert a[3][name].keys() == b[3][name].keys()
        assert all(torch.equal(a[3][name][k], b[3][name][k]) for k in a[3][name])
    assert not list(killed.glob("**/.*tmp-*"))


def test_stream_yields_batches_for_all_blocks(pipe):
    src = StreamSource(pipe, "shapes", 24, n_prompts=5, buffer_images=2, gen_batch_size=2)
    assert src.blocks == list(BLOCKS)
    batches = list(src)
    assert len(batches) == 5 * 16 // 24
    for batch in batches:
        assert set(batch) == set(BLOCKS)
        assert all(t.shape == (24, 64) and t.dtype == torch.float32 for t in batch.values())
    assert src.state_dict()["cursor"] is None and list(src) == []
    assert src.images_generated == 5


def test_stream_equals_store_tokens_and_resumes_exactly(pipe, tmp_path):
    sampling = Sampling(steps=2, guidance=2.0)
    store = collect(CollectConfig(out=tmp_path / "s", n_prompts=6, shard_size=2, batch_size=2, steps=2, guidance=2.0,
                                  dtype="bf16"), pipe=pipe, progress=False)
    kw = dict(sampling=sampling, n_prompts=6, buffer_images=2, gen_batch_size=2, dtype=torch.bfloat16)
    streamed = list(StreamSource(pipe, "shapes", 16, shuffle=False, **kw))
    stored = list(StoreSource(store, 16, shuffle=False, epochs=1))
    assert len(streamed) == len(stored) == 6 * 2 * 2 * 16 // 16
    assert all(torch.equal(s[b], t[b]) for s, t in zip(streamed, stored) for b in BLOCKS)

    ref = list(StreamSource(pipe, "shapes", 20, half="cond", shuffle_seed=5, **kw))
    src = StreamSource(pipe, "shapes", 20, half="cond", shuffle_seed=5, **kw)
    it = iter(src)
    for _ in range(7):  # 140 of 64 tokens per chunk: the third chunk, offset 12
        next(it)
    state = src.state_dict()
    assert state["prompt_position"] == 4  # it was in the third chunk (images 4..5)
    again = StreamSource(pipe, "shapes", 20, half="cond", shuffle_seed=5, **kw)
    again.load_state_dict(state)
    rest = list(again)
    assert len(rest) == len(ref) - 7 and all(torch.equal(a[b], r[b]) for a, r in zip(rest, ref[7:]) for b in BLOCKS)
    assert again.images_generated == 2  # only the chunk it was in was regenerated
    with pytest.raises(ReproError, match="buffer_images"):
        StreamSource(pipe, "shapes", 20, shuffle_seed=5, **{**kw, "buffer_images": 3}).load_state_dict(state)


def test_stream_from_an_endless_generator_feeds_a_trainer_loop(pipe):
    src = StreamSource(pipe, "shapes", 32, blocks="mid.0,up.0.1", buffer_images=4, gen_batch_size=4)
    for n, batch in enumerate(src, 1):
        assert sorted(batch) == ["mid.0", "up.0.1"] and batch["mid.0"].shape == (32, 64)
        if n == 4:
            break
    assert src.state_dict()["prompt_position"] == 8
    assert src.describe()["prompts"]["name"] == "shapes"
