"""The toy's own most active blocks (repro.features.own_blocks) on the real shapes-turbo and oracle.

Known answer (01, 100 held-out captions on one H100): ablating down.1.0 or up.1.0 costs 0.88 of
the images with every attribute right, down.2.1 0.00. On dev scenes the ranking must put blocks
like those far ahead of down.2.1, and the own blocks must be the top of it outside the paper's four.
"""

import pytest
import torch

from repro.blocks import PAPER_BLOCKS
from repro.features.own_blocks import capture_blocks, own_blocks, rank_blocks, train_block_saes
from repro.generate import Sampling
from repro.profiles import get_profile

TURBO = Sampling(steps=1, guidance=0.0)


@pytest.fixture(scope="module")
def pipe():
    from repro.models.loading import load_pipeline

    return load_pipeline("shapes-turbo", device="cpu")


@pytest.mark.slow
def test_the_ranking_finds_the_blocks_whose_ablation_breaks_the_image_and_own_blocks_skip_the_papers(pipe):
    from repro.shapes.oracle import load_oracle

    ranking = rank_blocks(pipe, load_oracle(), TURBO, n=16, seed=0, batch_size=16, n_boot=200)
    assert len(ranking) == 11 and list(ranking["change"]) == sorted(ranking["change"])
    assert (ranking["lo"] <= ranking["change"]).all() and (ranking["change"] <= ranking["hi"]).all()
    assert ranking.loc["down.2.1", "in_paper"] and not ranking.loc["down.1.0", "in_paper"]
    chosen = own_blocks(ranking, 3)
    assert len(chosen) == 3 and not set(chosen) & set(PAPER_BLOCKS)
    assert chosen == [b for b in ranking.index if b not in PAPER_BLOCKS][:3]
    # the chosen blocks break far more images than down.2.1, whose ablation changes almost nothing
    assert ranking.loc[chosen, "change"].max() < ranking.loc["down.2.1", "change"] - 0.3
    assert ranking.loc[chosen[0], "hi"] < ranking.loc["down.2.1", "lo"]


@pytest.mark.slow
def test_own_block_saes_are_trained_on_the_captured_updates_and_beat_their_init(pipe):
    from repro.features.analysis import analyse_features
    from repro.features.toy_concepts import concept_names
    from repro.sae.metrics import explained_variance
    from repro.sae.model import TopKSAE

    data = capture_blocks(pipe, ["up.1.0"], TURBO, n=24, seed=0, batch_size=12)
    x = data.updates["up.1.0"]
    assert x.shape == (24, 16, 16, 64)  # up_blocks[1]: 16x16 latent cells, 64 channels
    ids, chunk, labels = next(data.chunks("up.1.0", size=10))
    assert ids.tolist() == list(range(10)) and chunk.dtype == torch.float32
    assert labels.shape == (10, len(concept_names()), 16, 16)

    prof = get_profile("toy", {"sae_steps": 150, "sae_batch": 512})
    saes = train_block_saes(data, prof, seed=3, device="cpu")
    sae = saes["up.1.0"]
    assert sae.cfg.d_model == 64 and sae.cfg.n_features == prof.sae_expansion * 64 and sae.cfg.k == prof.sae_k
    tokens = x.reshape(-1, 64).float()
    init = TopKSAE(sae.cfg, seed=3)
    with torch.no_grad():
        assert explained_variance(tokens, sae(tokens)) > explained_variance(tokens, init(tokens)) + 0.2
    # mean_f, the painting rule's scale, is the analysis pass's own statistic over the same data
    again = analyse_features(sae, data.chunks("up.1.0", concepts=False), m=1).stats
    assert torch.equal(sae.feature_stats.mean, again.mean) and int(sae.feature_stats.count.sum()) > 0
