"""SAE files: our layout round trip, the original release's layout, and clear errors."""

import json

import pytest
import torch

from repro.errors import ReproError
from repro.sae import FeatureStats, SAEConfig, TopKSAE, load_sae, save_sae

CFG = SAEConfig(d_model=16, n_features=64, k=4, k_aux=8, dead_tokens_threshold=640)


def _sae():
    sae = TopKSAE(CFG, seed=1)
    with torch.no_grad():
        sae.b_pre.normal_()
        sae.b_lat.normal_()
        sae.tokens_since_fired.random_(0, 1000)
    return sae


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_round_trip(tmp_path, dtype):
    sae = _sae()
    sae.feature_stats = FeatureStats(
        mean=torch.rand(64), std=torch.rand(64), frequency=torch.rand(64), count=torch.arange(64), n_tokens=999
    )
    save_sae(sae, tmp_path / "blk", dtype=dtype, block="unet.mid_block.attentions.0", model="stabilityai/sdxl-turbo")
    cfg = json.loads((tmp_path / "blk" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["block"] == "unet.mid_block.attentions.0"
    assert "repro_version" in cfg["provenance"] and cfg["n_features"] == 64
    back = load_sae(tmp_path / "blk")
    assert back.cfg == CFG
    assert back.dtype == (dtype or torch.float32)  # dtype comes from the weights
    for name in ("W_enc", "b_lat", "W_dec", "b_pre"):
        torch.testing.assert_close(getattr(back, name), getattr(sae, name).detach().to(back.dtype), rtol=0, atol=0)
    assert torch.equal(back.tokens_since_fired, sae.tokens_since_fired)
    assert back.metadata["model"] == "stabilityai/sdxl-turbo"
    assert back.feature_stats.n_tokens == 999 and torch.equal(back.feature_stats.count, torch.arange(64))
    # Same maths on the stored weights: upcast the loaded SAE and compare to the original
    # with its weights rounded to the saved dtype (a bf16 forward could pick other top-k).
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name in ("W_enc", "b_lat", "W_dec", "b_pre"):
            getattr(sae, name).copy_(getattr(sae, name).to(back.dtype).float())
    torch.testing.assert_close(back.float()(x), sae(x).detach(), rtol=0, atol=0)


def test_unknown_cfg_keys_are_tolerated(tmp_path):
    save_sae(_sae(), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["added_in_a_later_version"] = {"x": 1}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(tmp_path).metadata["added_in_a_later_version"] == {"x": 1}


def _write_original(folder, n=64, d=16, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"n_dirs_local": n, "d_model": d, "k": 4, "auxk": 8, "dead_steps_threshold": 10})
    )
    state = {
        "encoder.weight": torch.randn(n, d, generator=gen),
        "decoder.weight": torch.randn(d, n, generator=gen),
        "pre_bias": torch.randn(d, generator=gen),
        "latent_bias": torch.randn(n, generator=gen),
        "stats_last_nonzero": torch.arange(n, dtype=torch.int64),
    }
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    torch.save(torch.rand(n, generator=gen), folder / "mean.pt")
    torch.save(torch.rand(n, generator=gen), folder / "std.pt")
    return state


def test_original_layout_loads_and_computes_by_hand(tmp_path):
    name = "unet.down_blocks.2.attentions.1_k4_hidden64_auxk8_bs256_lr0.0001"
    state = _write_original(tmp_path / name / "final")
    sae = load_sae(tmp_path / name)  # the parent folder holding a single final/ is accepted
    assert sae.cfg.n_features == 64 and sae.cfg.k == 4 and sae.cfg.k_aux == 8
    assert sae.cfg.dead_tokens_threshold == 10 * 256  # steps at batch 256 -> tokens
    assert torch.equal(sae.tokens_since_fired, torch.arange(64) * 256)
    assert sae.metadata["block"] == "down.2.1"  # the release's module path, normalised
    assert sae.feature_stats.mean.shape == (64,) and sae.feature_stats.frequency is None
    x = torch.randn(5, 16)
    pre = (x - state["pre_bias"]) @ state["encoder.weight"].T + state["latent_bias"]
    z = torch.zeros(5, 64)
    for b in range(5):
        top = sorted(range(64), key=lambda i: -pre[b, i].item())[:4]
        for i in top:
            z[b, i] = max(pre[b, i].item(), 0.0)
    torch.testing.assert_close(sae.encode(x), z)
    x_hat = torch.stack([sum(z[b, i] * state["decoder.weight"][:, i] for i in range(64)) for b in range(5)])
    torch.testing.assert_close(sae(x), x_hat + state["pre_bias"], rtol=1e-5, atol=1e-5)
    # Converting to our layout keeps everything.
    save_sae(sae, tmp_path / "converted")
    back = load_sae(tmp_path / "converted")
    torch.testing.assert_close(back(x), sae(x), rtol=0, atol=0)
    assert back.metadata["block"] == "down.2.1"


def test_original_layout_refuses_pickled_code(tmp_path):
    folder = tmp_path / "evil"
    _write_original(folder)
    torch.save({"state_dict": {"encoder.weight": object()}}, folder / "state_dict.pth")  # not weights-only
    with pytest.raises(ReproError, match="weights-only"):
        load_sae(folder)


@pytest.mark.parametrize(
    "files, missing",
    [(["config.json"], "state_dict.pth"), (["state_dict.pth"], "config.json"), (["cfg.json"], "sae.safetensors")],
)
def test_half_a_layout_names_the_missing_file(tmp_path, files, missing):
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(ReproError, match=missing):
        load_sae(tmp_path)


def test_neither_layout_is_one_clear_error(tmp_path):
    with pytest.raises(ReproError, match="sae.safetensors.*config.json"):
        load_sae(tmp_path)
    with pytest.raises(ReproError, match="does not exist"):
        load_sae(tmp_path / "nope")


def test_identical_saes_are_identical_bytes(tmp_path):
    # safetensors writes metadata keys in a hash order that changes from map to map (and process
    # to process): with more than one key, 20 saves of one SAE would almost surely differ.
    sae = _sae()
    blobs = set()
    for i in range(20):
        save_sae(sae, tmp_path / str(i))
        blobs.add((tmp_path / str(i) / "sae.safetensors").read_bytes())
    assert len(blobs) == 1


@pytest.mark.parametrize("name, damage", [
    ("sae.safetensors", lambda b: b[: len(b) // 2]),
    ("sae.safetensors", lambda b: b"\x00" * 16),
    ("feature_stats.safetensors", lambda b: b[:40]),
    ("cfg.json", lambda b: b[:-10]),
])
def test_damaged_files_are_one_clear_error(tmp_path, name, damage):
    sae = _sae()
    sae.feature_stats = FeatureStats(mean=torch.rand(64), std=torch.rand(64))
    save_sae(sae, tmp_path)
    path = tmp_path / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ReproError, match=f"{name} is damaged"):
        load_sae(tmp_path)


@pytest.mark.parametrize("value, needle", [
    (torch.rand(63), "shape \\(63,\\)"),
    (torch.arange(64), "torch.int64"),
    ({"mean": torch.rand(64)}, "dict"),
])
def test_released_stats_of_the_wrong_shape_or_type_are_refused(tmp_path, value, needle):
    _write_original(tmp_path / "sae")
    torch.save(value, tmp_path / "sae" / "mean.pt")
    with pytest.raises(ReproError, match=f"mean.pt holds .*{needle}.*not 64 floats"):
        load_sae(tmp_path / "sae")


def test_released_config_with_bad_values_is_one_clear_error(tmp_path):
    _write_original(tmp_path / "sae")
    (tmp_path / "sae" / "config.json").write_text(json.dumps({"n_dirs_local": "many", "d_model": 16, "k": 4}))
    with pytest.raises(ReproError, match="n_dirs_local=.many., not a whole number"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "config.json").write_text("[1, 2]")
    with pytest.raises(ReproError, match="not a config object"):
        load_sae(tmp_path / "sae")
