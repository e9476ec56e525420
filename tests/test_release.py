"""`repro release`: a Hub-ready folder with a model card, opened offline through the Hugging Face cache;
`repro export` from the command line."""

import hashlib
import json
import shutil

import pytest
import torch
import yaml

from repro.cli import main
from repro.errors import ReproError
from repro.sae import FeatureStats, SAEConfig, TopKSAE, load_sae, save_sae

BLOCKS = {"down.2.1": SAEConfig(d_model=16, n_features=64, k=4, k_aux=8, dead_tokens_threshold=640),
          "up.0.1": SAEConfig(d_model=8, n_features=32, k=3, k_aux=8, dead_tokens_threshold=640)}


@pytest.fixture
def trained(tmp_path):
    """A folder of two block SAEs as `repro train` writes them, a per-feature file beside one,
    and 04_evaluate's results for both."""
    saes = tmp_path / "saes"
    for i, (block, cfg) in enumerate(BLOCKS.items()):
        sae = TopKSAE(cfg, seed=i)
        with torch.no_grad():
            sae.b_pre.normal_(generator=torch.Generator().manual_seed(i))
        sae.feature_stats = FeatureStats(mean=torch.rand(cfg.n_features), std=torch.rand(cfg.n_features),
                                         frequency=torch.rand(cfg.n_features), count=torch.arange(cfg.n_features),
                                         n_tokens=5000)
        save_sae(sae, saes / block, block=block, model="shapes-turbo", command="repro train --store S --out O",
                 training={"steps": 100, "tokens": 409600 + i, "lr": 1e-3}, data={"store": "store", "batch_size": 4096})
    (saes / "down.2.1" / "labels.json").write_text('{"0": "red"}')
    results = tmp_path / "04_evaluate.json"
    recon = {"down.2.1": {"ev": 0.81, "ev_interval": [0.78, 0.84]}, "up.0.1": {"ev": 0.66, "ev_interval": [0.6, 0.7]}}
    results.write_text(json.dumps({"notebook": "04_evaluate", "numbers": {"reconstruction": recon}}))
    return saes, results


def _card(path):
    text = path.read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_release_folder_and_model_card(tmp_path, trained, capsys):
    saes, results = trained
    out = tmp_path / "release"
    assert main(["release", str(saes), str(out), "--results", str(results)]) == 0
    assert "load_sae('hf:OWNER/NAME/<block>')" in capsys.readouterr().out
    meta, body = _card(out / "README.md")
    assert meta["library_name"] == "repro" and meta["base_model"] == "shapes-turbo"
    assert meta["blocks"] == ["down.2.1", "up.0.1"]
    down = meta["saes"]["down.2.1"]
    assert (down["d"], down["n"], down["k"], down["k_aux"]) == (16, 64, 4, 8)
    assert down["training_tokens"] == 409600 and meta["saes"]["up.0.1"]["training_tokens"] == 409601
    assert down["data"] == {"store": "store", "batch_size": 4096}
    assert down["held_out_ev"] == 0.81 and down["held_out_ev_95_interval"] == [0.78, 0.84]
    assert down["command"] == "repro train --store S --out O"
    assert "commit" in down  # the git commit of the training run (None outside a checkout)
    assert "| `up.0.1` | 8 | 32 | 3 | 409601 | 0.660 [0.600, 0.700] |" in body
    # one folder per block: weights byte for byte, per-feature files with them
    for block in BLOCKS:
        for name in ("sae.safetensors", "cfg.json", "feature_stats.safetensors"):
            assert _sha(out / block / name) == _sha(saes / block / name)
    assert (out / "down.2.1" / "labels.json").read_text() == '{"0": "red"}'


def test_release_refuses_blocks_without_ev(tmp_path, trained):
    saes, results = trained
    data = json.loads(results.read_text())
    del data["numbers"]["reconstruction"]["up.0.1"]
    results.write_text(json.dumps(data))
    with pytest.raises(ReproError, match=r"no held-out EV for block\(s\) up.0.1"):
        from repro.sae.release import release_saes

        release_saes(saes, tmp_path / "r", results=results)
    assert main(["release", str(saes), str(tmp_path / "r"), "--results", str(results), "--allow-missing-ev"]) == 0
    meta, _ = _card(tmp_path / "r" / "README.md")
    assert meta["saes"]["up.0.1"]["held_out_ev"] is None and meta["saes"]["down.2.1"]["held_out_ev"] == 0.81


def _fake_hub_cache(root, repo, files_from):
    """Lay `files_from` out as huggingface_hub's cache holds a downloaded model repository."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, base / "snapshots" / commit)
    return base


def test_release_opens_offline_from_the_hf_cache(tmp_path, trained, monkeypatch):
    saes, results = trained
    from repro.sae.release import release_saes

    release_saes(saes, tmp_path / "release", results=results)
    hub = tmp_path / "hf" / "hub"
    _fake_hub_cache(hub, "someone/shapes-saes", tmp_path / "release")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae = load_sae("hf:someone/shapes-saes/up.0.1")
    ref = load_sae(saes / "up.0.1")
    assert sae.cfg == ref.cfg and sae.metadata["block"] == "up.0.1"
    for name in ("W_enc", "b_lat", "W_dec", "b_pre"):
        assert torch.equal(getattr(sae, name), getattr(ref, name))
    assert torch.equal(sae.feature_stats.count, ref.feature_stats.count)
    # HF_HUB_CACHE wins over HF_HOME, as in huggingface_hub
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(ReproError, match="someone/shapes-saes is not in the local Hugging Face cache"):
        load_sae("hf:someone/shapes-saes/up.0.1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    with pytest.raises(ReproError, match="has no folder 'mid.0' in the cache: use one of: down.2.1, up.0.1"):
        load_sae("hf:someone/shapes-saes/mid.0")
    with pytest.raises(ReproError, match="is not hf:OWNER/NAME/BLOCK"):
        load_sae("hf:someone/shapes-saes")


def test_export_command(tmp_path, trained, capsys):
    saes, _ = trained
    assert main(["export", str(saes), "--to", "sparsify", str(tmp_path / "sp")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("the sparsify layout has no place for ") and len(lines) == 2
    assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == ["down.2.1", "up.0.1"]
    cfg = json.loads((tmp_path / "sp" / "up.0.1" / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["num_latents"], cfg["k"]) == (8, 32, 3)
    back = load_sae(tmp_path / "sp" / "up.0.1")
    assert back.cfg == BLOCKS["up.0.1"] and back.metadata["command"] == "repro train --store S --out O"
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(saes), "--to", "gguf", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "invalid choice: 'gguf'" in capsys.readouterr().err


def test_cli_formats_match_the_library():
    from repro.cli.export import FORMATS as CLI_FORMATS
    from repro.sae.export import FORMATS

    assert CLI_FORMATS == FORMATS
