"""A hostile store cannot make any command touch a file outside it (issue 30).

A manifest whose shard names a file outside the store (`../x`, an absolute path), or a
shard that is a link out of the store, a folder, a FIFO or a device: every store command
(`store info`, `store verify`, `store verify --repair`, reading, `repro train`) refuses
with one line (exit 2), and the outside file keeps its bytes and its mtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repro.cli import main as cli_main
from repro.collect import CollectConfig, collect
from repro.errors import ReproError
from repro.store import ActivationStore, StoreSource

SHARD0 = "shards/shard-000000.safetensors"


@pytest.fixture(scope="module")
def clean_store(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("untrusted") / "store"
    collect(CollectConfig(out=out, n_prompts=4, shard_size=2, batch_size=2, dtype="fp32", blocks=("mid.0",)),
            pipe=pipe, progress=False)
    return out


@pytest.fixture
def store(clean_store, tmp_path):
    """A fresh copy of the clean store, and an outside file that is a byte copy of its first
    shard (so its size and sha256 match the manifest: the strongest bait)."""
    copy = tmp_path / "store"
    shutil.copytree(clean_store, copy)
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(copy / SHARD0, outside)
    os.utime(outside, ns=(1_000_000_000, 1_000_000_000))  # a known mtime to compare with
    return copy, outside


def _fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def _point_manifest_at(store: Path, name: str) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    (store / "manifest.json").write_text(json.dumps(manifest))


def _commands(store: Path, tmp_path: Path) -> list[list[str]]:
    return [
        ["store", "verify", str(store), "--no-progress"],
        ["store", "verify", "--repair", str(store), "--no-progress"],
        ["train", "--store", str(store), "--out", str(tmp_path / "t"), "--steps", "2", "--batch-size", "8",
         "--checkpoint-every", "0", "--device", "cpu", "--no-progress"],
    ]


def _one_line_refusal(capsys, argv) -> str:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (argv, err)
    assert len(err.splitlines()) == 1 and err.startswith("repro: error:") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link-out"])
def test_a_hostile_manifest_touches_nothing_outside_the_store(store, tmp_path, capsys, how):
    folder, outside = store
    if how == "dotdot":
        _point_manifest_at(folder, "../outside.safetensors")
    elif how == "absolute":
        _point_manifest_at(folder, str(outside))
    else:  # the manifest is right, the shard is a link out of the store
        (folder / SHARD0).unlink()
        (folder / SHARD0).symlink_to(outside)
    before = _fingerprint(outside)
    for argv in _commands(folder, tmp_path):
        err = _one_line_refusal(capsys, argv)
        assert "not a plain name inside the store folder" in err
        assert _fingerprint(outside) == before and outside.exists()
    with pytest.raises(ReproError, match="inside the store"):
        store_ = ActivationStore(folder)
        store_.prompts()
    if how == "link-out":  # the manifest itself is fine: opening works, reading is refused
        with pytest.raises(ReproError, match="inside the store"):
            next(iter(StoreSource(folder, 8, shuffle=False)))
        assert (folder / SHARD0).is_symlink()  # --repair did not delete the link either
    assert _fingerprint(outside) == before


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_shard_that_is_not_a_file_is_refused_and_kept(store, tmp_path, capsys, kind):
    folder, _ = store
    (folder / SHARD0).unlink()
    if kind == "folder":
        (folder / SHARD0).mkdir()
        (folder / SHARD0 / "inside").write_text("keep me")
    else:
        (folder / SHARD0).symlink_to("/dev/zero")
    for argv in _commands(folder, tmp_path):
        err = _one_line_refusal(capsys, argv)
        assert "not a plain name" in err if kind == "device" else f"is a {kind}" in err
    assert (folder / SHARD0).is_dir() if kind == "folder" else (folder / SHARD0).is_symlink()


def test_a_fifo_shard_is_refused_without_hanging(store, tmp_path):
    folder, _ = store
    (folder / SHARD0).unlink()
    os.mkfifo(folder / SHARD0)
    for argv in _commands(folder, tmp_path)[:2]:
        res = subprocess.run([sys.executable, "-m", "repro.cli", *argv], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "is a FIFO, not a file" in res.stderr
    assert (folder / SHARD0).is_fifo()


def test_a_truncated_shard_is_found_by_size_and_repaired(store, capsys):
    folder, _ = store
    data = (folder / SHARD0).read_bytes()
    (folder / SHARD0).write_bytes(data[:-10])
    with pytest.raises(ReproError, match="not the .* bytes its manifest records"):
        ActivationStore(folder).prompts()
    assert cli_main(["store", "verify", "--repair", str(folder), "--no-progress"]) == 0
    assert not (folder / SHARD0).exists()
    assert [r["file"] for r in ActivationStore(folder).shards] == ["shards/shard-000001.safetensors"]


@pytest.mark.parametrize("lie, match", [
    (lambda m: m["settings"].update(dtype="bf16"), "its mid.0 is F32"),
    (lambda m: m["shards"][0].update(stop=1), "it holds 2 prompts 0..2, the manifest says 1 prompts 0..1"),
])
def test_a_manifest_that_lies_about_its_shards_fails_verify(store, capsys, lie, match):
    folder, _ = store
    manifest = json.loads((folder / "manifest.json").read_text())
    lie(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    err = _one_line_refusal(capsys, ["store", "verify", "--repair", str(folder), "--no-progress"])
    assert match in err and "does not hold what the manifest says" in err
    assert (folder / SHARD0).is_file()  # a lie is not repaired by deleting data
