"""Our SAEs in SAELens and sparsify, and theirs in repro: same codes and reconstructions, both ways.

Each direction runs the other package's own loader and forward pass (sae-lens 6.54.12 and
eai-sparsify 1.3.3, the `[interop]` extra). Codes: the indices of the nonzero latents equal, their
values within 1e-5 (fp32); reconstructions within 1e-5. The original layout is checked through our
own reader of it (the original code is not a package).
"""

import json

import pytest
import torch

from repro.errors import ReproError
from repro.sae import FeatureStats, SAEConfig, TopKSAE, load_block_saes, load_sae, save_sae
from repro.sae.export import export_saes

CFG = SAEConfig(d_model=32, n_features=128, k=6, k_aux=16, auxk_coef=0.05, dead_tokens_threshold=3000)
TOL = dict(rtol=0, atol=1e-5)


def _sae(seed=0, b_lat_mean=0.0):
    sae = TopKSAE(CFG, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(CFG.n_features, CFG.d_model, generator=gen))  # W_enc != W_dec^T
        sae.b_pre.normal_(generator=gen)
        sae.b_lat.normal_(b_lat_mean, 0.3, generator=gen)
        sae.tokens_since_fired.random_(0, 10_000, generator=gen)
    sae.metadata = {"block": "down.2.1", "model": "shapes-turbo", "data": {"batch_size": 256},
                    "training": {"lr": 1e-3, "tokens": 123456}}
    sae.feature_stats = FeatureStats(mean=torch.rand(128, generator=gen), std=torch.rand(128, generator=gen),
                                     frequency=torch.rand(128, generator=gen) / 10,
                                     count=torch.randint(0, 99, (128,), generator=gen), n_tokens=4321)
    return sae


def _x(n=256, seed=1):
    return 2 * torch.randn(n, CFG.d_model, generator=torch.Generator().manual_seed(seed))


def _nonzero(z):
    """Dense codes [B, n] -> (mask of nonzeros, values there)."""
    return z != 0, z[z != 0]


def assert_same_codes(z, z_ref):
    """Dense codes [B, n]: same nonzero latents, values within 1e-5."""
    m, v = _nonzero(z)
    m_ref, v_ref = _nonzero(z_ref)
    assert torch.equal(m, m_ref), f"{int((m != m_ref).sum())} code positions differ"
    torch.testing.assert_close(v, v_ref, **TOL)


def _ours(sae, x):
    with torch.no_grad():
        return sae.encode(x), sae(x)


def _export(tmp_path, fmt, sae):
    folders, note = export_saes({"down.2.1": sae}, tmp_path / fmt, fmt)
    return folders[0], note


# --------------------------------------------------------------------------- SAELens

def test_saelens_opens_our_export_with_the_same_numbers(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _sae(b_lat_mean=-9.0)  # many negative pre-activations: TopK-then-ReLU order matters
    folder, note = _export(tmp_path, "saelens", sae)
    assert note.startswith("the saelens layout has no place for ") and "\n" not in note
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == CFG.k and theirs.cfg.metadata.hook_name == "down.2.1"
    x = _x()
    z_ref, xhat_ref = _ours(sae, x)
    nnz = (z_ref != 0).sum(-1)
    assert (nnz < CFG.k).any() and (nnz == CFG.k).any()  # rows with fewer than k positive codes, and full rows
    with torch.no_grad():
        z = theirs.encode(x)
        xhat = theirs.decode(z)
        assert_same_codes(z, z_ref)
        torch.testing.assert_close(xhat, xhat_ref, **TOL)
        torch.testing.assert_close(theirs(x), xhat_ref, **TOL)


def _lens_sae(rescale: bool, b_dec_in: bool):
    """A SAELens TopK SAE with weights of a trained one's scale and decoder rows far from unit norm."""
    from sae_lens.saes.topk_sae import TopKSAE as LensTopK, TopKSAEConfig

    sae = LensTopK(TopKSAEConfig(d_in=32, d_sae=128, k=6, rescale_acts_by_decoder_norm=rescale,
                                 apply_b_dec_to_input=b_dec_in))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(32, 128, generator=gen) / 32**0.5)
        sae.b_enc.copy_(torch.randn(128, generator=gen) * 0.3 - 0.2)
        sae.W_dec.copy_(torch.randn(128, 32, generator=gen) / 32**0.5 * (0.5 + torch.rand(128, 1, generator=gen)))
        sae.b_dec.copy_(torch.randn(32, generator=gen))
    return sae


@pytest.mark.parametrize("rescale,b_dec_in", [(False, True), (True, True), (False, False)])
def test_saelens_saved_sae_opens_in_repro(tmp_path, rescale, b_dec_in):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = _lens_sae(rescale, b_dec_in)
    theirs.save_model(tmp_path / "lens")
    ours = load_sae(tmp_path / "lens")
    assert ours.cfg.k == 6 and ours.cfg.n_features == 128 and ours.metadata["format"] == "saelens"
    x = _x()
    with torch.no_grad():
        # rescale_acts_by_decoder_norm: SAELens' own fold_W_dec_norm gives the codes of the folded SAE we hold
        reference = sae_lens.SAE.load_from_disk(str(tmp_path / "lens"), fold_W_dec_norm=rescale)
        assert_same_codes(ours.encode(x), reference.encode(x))
        torch.testing.assert_close(ours(x), theirs(x), **TOL)


def test_saelens_refuses_what_repro_cannot_express(tmp_path):
    pytest.importorskip("sae_lens")
    folder, _ = _export(tmp_path, "saelens", _sae())
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["normalize_activations"] = "layer_norm"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ReproError, match="normalize_activations='layer_norm'"):
        load_sae(folder)


# --------------------------------------------------------------------------- sparsify

def test_sparsify_opens_our_export_with_the_same_numbers(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    sae = _sae(b_lat_mean=-9.0)
    folder, note = _export(tmp_path, "sparsify", sae)
    assert "sparsify layout has no place for" in note
    theirs = sparsify.SparseCoder.load_from_disk(folder, device="cpu")
    many = sparsify.SparseCoder.load_many(str(tmp_path / "sparsify"), local=True)
    assert list(many) == ["down.2.1"] and theirs.cfg.k == CFG.k and theirs.num_latents == CFG.n_features
    x = _x()
    z_ref, xhat_ref = _ours(sae, x)
    with torch.no_grad():
        acts, idx, _ = theirs.encode(x)
        z = torch.zeros(len(x), CFG.n_features).scatter_(-1, idx, acts)
        assert_same_codes(z, z_ref)
        torch.testing.assert_close(theirs.decode(acts, idx), xhat_ref, **TOL)
        torch.testing.assert_close(theirs(x).sae_out, xhat_ref, **TOL)


def test_sparsify_saved_sae_opens_in_repro(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(5)
    theirs = sparsify.SparseCoder(32, sparsify.SparseCoderConfig(num_latents=128, k=6))
    with torch.no_grad():
        theirs.encoder.bias.normal_(-0.2, 0.3)
        theirs.b_dec.normal_()
    theirs.save_to_disk(tmp_path / "layers.3")
    ours = load_sae(tmp_path / "layers.3")
    assert ours.metadata["format"] == "sparsify" and ours.cfg.n_features == 128
    x = _x()
    with torch.no_grad():
        acts, idx, _ = theirs.encode(x)
        z_ref = torch.zeros(len(x), 128).scatter_(-1, idx, acts)
        assert_same_codes(ours.encode(x), z_ref)
        torch.testing.assert_close(ours(x), theirs(x).sae_out, **TOL)


# --------------------------------------------------------------------------- every layout back into repro

@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "original"])
def test_every_export_round_trips_exactly_through_repro(tmp_path, fmt):
    sae = _sae()
    folders, note = export_saes({"down.2.1": sae, "up.0.1": _sae(seed=1)}, tmp_path / "out", fmt)
    assert len(folders) == 2 and "repro_cfg.json" in note
    back = load_block_saes(tmp_path / "out")
    assert list(back) == ["down.2.1", "up.0.1"]
    got = back["down.2.1"]
    assert got.cfg == CFG  # k_aux, auxk_coef, dead threshold: restored from repro_cfg.json beside
    for name in ("W_enc", "b_lat", "W_dec", "b_pre"):
        torch.testing.assert_close(getattr(got, name), getattr(sae, name).detach(), rtol=0, atol=0)
    assert torch.equal(got.tokens_since_fired, sae.tokens_since_fired)
    assert got.feature_stats.n_tokens == 4321 and torch.equal(got.feature_stats.count, sae.feature_stats.count)
    assert got.metadata["model"] == "shapes-turbo" and got.metadata["format"] == fmt


def test_original_export_is_the_release_layout(tmp_path):
    sae = _sae()
    folder, _ = _export(tmp_path, "original", sae)
    assert folder.parent.name == "unet.down_blocks.2.attentions.1_k6_hidden128_auxk16_bs256_lr0.001"
    assert folder.name == "final"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg == {"n_dirs_local": 128, "d_model": 32, "k": 6, "auxk": 16, "dead_steps_threshold": round(3000 / 256)}
    state = torch.load(folder / "state_dict.pth", weights_only=True)["state_dict"]
    assert torch.equal(state["encoder.weight"], sae.W_enc.detach()) and state["decoder.weight"].shape == (32, 128)
    assert torch.equal(state["stats_last_nonzero"], sae.tokens_since_fired // 256)
    assert torch.equal(torch.load(folder / "mean.pt", weights_only=True), sae.feature_stats.mean)
    # Without our files beside it, the release's own reader path sees the same maths.
    for name in ("repro_cfg.json", "repro_state.safetensors", "feature_stats.safetensors"):
        (folder / name).unlink()
    plain = load_sae(folder.parent)
    x = _x()
    assert_same_codes(plain.encode(x).detach(), _ours(sae, x)[0])
    assert plain.metadata["format"] == "original" and plain.cfg.dead_tokens_threshold == 12 * 256


@pytest.mark.parametrize("fmt,drop", [("saelens", "cfg.json"), ("sparsify", "sae.safetensors")])
def test_incomplete_foreign_folder_is_one_clear_error(tmp_path, fmt, drop):
    folder, _ = _export(tmp_path, fmt, _sae())
    (folder / drop).unlink()
    with pytest.raises(ReproError, match="is missing: the SAE folder is incomplete"):
        load_sae(folder)


def test_export_refuses_unknown_format(tmp_path):
    with pytest.raises(ReproError, match="unknown SAE format 'gguf': use one of: saelens, sparsify, original"):
        export_saes({"down.2.1": _sae()}, tmp_path, "gguf")


def test_our_own_layout_is_not_mistaken_for_sparsify(tmp_path):
    # both write sae.safetensors + cfg.json: the cfg's keys tell them apart
    save_sae(_sae(), tmp_path / "ours")
    assert load_sae(tmp_path / "ours").metadata.get("format") is None
