"""Property tests (Hypothesis): generated manifests and cfg.json files, damaged at random.

Whatever a manifest or a config holds (a key dropped, a value of the wrong type, null, NaN,
a hostile shard name), loading and using it either gives the right result or raises
ReproError (one line at the CLI: exit 2); never another exception, a hang, or a file
touched outside the store.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from repro.cli import main as cli_main
from repro.errors import ReproError
from repro.sae import SAEConfig, TopKSAE, load_sae, save_sae
from repro.store import ActivationStore, StoreWriter

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
PROMPTS = [f"prompt {i}" for i in range(5)]
HOSTILE = ["../outside.safetensors", "shards/../../outside.safetensors", "/etc/hostname", "", ".", "shards",
           "shards/", "shards\\shard-000000.safetensors", "a\0b", "./shards/shard-000000.safetensors",
           "link/outside.safetensors", "shards/shard-000001.safetensors", "manifest.json"]
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**7), st.floats(), st.text(max_size=12),
              st.sampled_from(HOSTILE)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def _write_store(folder: Path) -> None:
    """A real 3-shard store (5 prompts, 2 per shard, one block 2x2x4, fp32), written by StoreWriter."""
    settings_ = {"format_version": 1, "model": "m", "blocks": ["mid.0"], "steps": 1, "guidance": 0.0,
                 "resolution": 16, "dtype": "fp32", "compute_dtype": "float32", "shard_size": 2, "batch_size": 2,
                 "seed": 0, "prompt_kind": "list", "store_images": False}
    info = {"block_shapes": {"mid.0": {"height": 2, "width": 2, "channels": 4}}, "halves": ["all"]}
    gen = torch.Generator().manual_seed(0)
    with StoreWriter(folder, settings_, info, len(PROMPTS)) as writer:
        for index, start in enumerate(range(0, len(PROMPTS), 2)):
            stop = min(start + 2, len(PROMPTS))
            n = stop - start
            writer.write_shard(index, start, stop, PROMPTS[start:stop], list(range(start, stop)),
                               {"mid.0": torch.randn(n, 1, 1, 4, 4, generator=gen)}, torch.zeros(n, 4, 2, 2))
        writer.finish(3)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    folder = tmp_path_factory.mktemp("props") / "store"
    _write_store(folder)
    return folder


def _leaves(obj, path=()):
    """Every key path of a JSON object, containers included."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))


def _damage(data, obj):
    """Drop or replace 1-3 values of `obj` (a deep copy) at paths drawn by Hypothesis."""
    obj = copy.deepcopy(obj)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _leaves(obj) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON)
    return obj


def _fingerprint(folder: Path) -> dict:
    return {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@PROPS
@given(data=st.data())
def test_a_damaged_manifest_loads_right_or_is_refused(clean, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "store"
        shutil.copytree(clean, folder)
        outside = Path(tmp) / "outside.safetensors"
        shutil.copyfile(folder / "shards/shard-000000.safetensors", outside)
        (Path(tmp) / "link").symlink_to(Path(tmp))
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps(_damage(data, manifest)))
        before = {outside: (outside.read_bytes(), os.stat(outside).st_mtime_ns)}
        shards_before = _fingerprint(folder / "shards")
        try:
            store = ActivationStore(folder)
            bad = store.verify_all(threads=1)
            if not bad:  # every listed shard is intact: what it reads must be the truth
                want = [p for r in store.shards for p in PROMPTS[r["start"]:r["stop"]]]
                assert store.prompts() == want
                assert store.seeds() == [i for r in store.shards for i in range(r["start"], r["stop"])]
                batch = next(iter(store.source(2, shuffle=False)))
                assert batch["mid.0"].shape == (2, 4) and torch.isfinite(batch["mid.0"]).all()
        except ReproError as exc:
            assert "\n" not in str(exc)
        assert {outside: (outside.read_bytes(), os.stat(outside).st_mtime_ns)} == before
        assert _fingerprint(folder / "shards") == shards_before  # reading never writes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cli_verify_repair_of_a_damaged_manifest_is_exit_0_or_one_line(clean, data, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "store"
        shutil.copytree(clean, folder)
        outside = Path(tmp) / "outside.safetensors"
        shutil.copyfile(folder / "shards/shard-000000.safetensors", outside)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["shards"][data.draw(st.integers(0, 2))]["file"] = data.draw(st.sampled_from(HOSTILE[:9]))
        text = json.dumps(_damage(data, manifest) if data.draw(st.booleans()) else manifest)
        (folder / "manifest.json").write_text(text)
        # the damage may drop the very record that named the hostile file: then the store is sound
        hostile_left = any(json.dumps(h) in text for h in HOSTILE[:9])
        before = outside.read_bytes(), os.stat(outside).st_mtime_ns
        rc = cli_main(["store", "verify", "--repair", str(folder), "--no-progress"])
        err = capsys.readouterr().err.strip()
        refused = rc == 2 and len(err.splitlines()) == 1 and err.startswith("repro: error:")
        assert refused or (not hostile_left and rc == 0), (rc, err)
        assert (outside.read_bytes(), os.stat(outside).st_mtime_ns) == before
        assert (folder / "shards/shard-000000.safetensors").is_file()  # nothing deleted either


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("props-sae") / "sae"
    save_sae(TopKSAE(SAEConfig(d_model=8, n_features=32, k=3, k_aux=4), seed=0), folder, block="mid.0")
    return folder


@PROPS
@given(data=st.data())
def test_a_damaged_cfg_json_loads_right_or_is_refused(sae_folder, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sae"
        shutil.copytree(sae_folder, folder)
        cfg = json.loads((folder / "cfg.json").read_text())
        damaged = _damage(data, cfg)
        (folder / "cfg.json").write_text(json.dumps(damaged))
        try:
            sae = load_sae(folder)
        except ReproError as exc:
            assert "\n" not in str(exc) and "cfg.json" in str(exc)
            return
        # loaded: every field is the file's, none defaulted
        for name, value in sae.cfg.to_dict().items():
            assert damaged[name] == value, name
        assert (sae.cfg.d_model, sae.cfg.n_features) == (8, 32)  # the weights' shapes agree with it


@pytest.mark.parametrize("field", ["k", "d_model", "n_features", "k_aux", "architecture"])
def test_a_cfg_json_without_a_required_field_names_it(sae_folder, tmp_path, field):
    folder = tmp_path / "sae"
    shutil.copytree(sae_folder, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg[field]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ReproError, match=f"cfg.json lacks the field '{field}'"):
        load_sae(folder)
