"""One builder and one loader for a set of block SAEs (issue 15, defects 4 and 6)."""

import json

import pytest
import torch

from repro.errors import ReproError
from repro.sae import SAEConfig, TopKSAE, build_block_saes, load_block_saes, save_sae


class _Store:
    blocks = ["down.2.1", "mid.0", "up.0.0", "up.0.1"]

    def block_shape(self, block):
        return (4, 4, 64)

    def block_name(self, block):
        return block


def test_every_block_gets_its_own_seed_and_a_subset_keeps_it():
    saes = build_block_saes(_Store(), k=2, expansion=4, dead_tokens=100, seed=5)
    decs = [s.W_dec for s in saes.values()]
    for i in range(len(decs)):
        for j in range(i + 1, len(decs)):
            assert not torch.equal(decs[i], decs[j])
    assert torch.equal(saes["mid.0"].W_dec, TopKSAE(saes["mid.0"].cfg, seed=6).W_dec)
    sub = build_block_saes(_Store(), k=2, expansion=4, dead_tokens=100, seed=5, blocks=["up.0.0"])
    assert torch.equal(sub["up.0.0"].W_dec, saes["up.0.0"].W_dec)
    assert saes["up.0.1"].cfg.n_features == 256 and saes["up.0.1"].cfg.dead_tokens_threshold == 100


def _original(folder, d=8, n=16, k=2):
    """An SAE in the original release's layout: <name>/final/{config.json, state_dict.pth}."""
    final = folder / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text(json.dumps({"n_dirs_local": n, "d_model": d, "k": k, "auxk": 4,
                                                   "dead_steps_threshold": 10}))
    sae = TopKSAE(SAEConfig(d_model=d, n_features=n, k=k, k_aux=4), seed=1)
    state = {"encoder.weight": sae.W_enc.data, "decoder.weight": sae.W_dec.data, "pre_bias": sae.b_pre.data,
             "latent_bias": sae.b_lat.data, "stats_last_nonzero": torch.zeros(n, dtype=torch.int64)}
    torch.save({"state_dict": state}, final / "state_dict.pth")


def test_loader_takes_a_string_path_and_both_layouts(tmp_path):
    root = tmp_path / "saes"
    save_sae(TopKSAE(SAEConfig(d_model=8, n_features=16, k=2, k_aux=0)), root / "mid.0", block="mid.0")
    _original(root / "unet.down_blocks.2.attentions.1_k2_hidden16_auxk4_bs4096_lr0.0001")
    (root / "checkpoints").mkdir()  # not an SAE: ignored
    saes = load_block_saes(str(root))
    assert list(saes) == ["mid.0", "down.2.1"] or set(saes) == {"mid.0", "down.2.1"}
    assert saes["down.2.1"].cfg.n_features == 16
    with pytest.raises(ReproError, match="no SAE"):
        load_block_saes(str(tmp_path / "saes" / "checkpoints"))


def test_the_paper_profile_trains_riebench_sets_at_k160_and_a_second_seed():
    from repro.profiles import PROFILES
    import dataclasses

    from repro.sae.sets import riebench_set, sae_sets, seed_set

    paper = sae_sets(PROFILES["paper"])
    assert [(s.name, s.k, s.seed) for s in paper] == [("saes", 10, 0), ("saes-seed1", 10, 1000), ("saes-k160", 160, 0)]
    assert riebench_set(PROFILES["paper"], paper).k == 160 and seed_set(paper).name == "saes-seed1"
    assert seed_set(sae_sets(dataclasses.replace(PROFILES["paper"], sae_seeds=1))) is None
    toy = sae_sets(PROFILES["toy"])
    t = PROFILES["toy"]
    assert riebench_set(t, toy).name == "saes-k16"
    assert [s.steps for s in toy] == [t.sae_steps, t.sae_steps, t.riebench_sae_steps or t.sae_steps]  # main, seed 2, RIEBench
