"""Known answers on the real toy (shapes-turbo + the real oracle): the causality test must find a
direction known to carry colour, in the block that writes colour, and must not find a random one.

Which block: ablating each block of the 1-step shapes-turbo on 96 held-out captions
(`repro.shapes.scoring.block_ablation`, H100, benchmarks/toy_positive_controls.py's notes)
costs colour accuracy most at up.1.0 (-0.78), up.1.1 (-0.66) and down.1.0 (-0.50); up.0.1, the
paper's "style/colour" block, costs -0.09. Painting the class-mean difference of colour=blue at
up.1.1 with s = 2 (twice the difference) switched blue on in 19/24 scenes with the rest kept in
13/24 (joint; isotropic random direction 0/24) on the GPU.
"""

import pytest

from repro.features.positive_controls import ISOTROPIC, PLANTED, positive_controls
from repro.generate import Sampling

BLOCK, LABEL, STRENGTH, N = "up.1.1", "colour=blue", 2.0, 16


@pytest.fixture(scope="module")
def table():
    from repro.models.loading import load_pipeline
    from repro.shapes.oracle import load_oracle

    pipe = load_pipeline("shapes-turbo", device="cpu")
    return positive_controls(pipe, load_oracle(), [BLOCK], [LABEL], Sampling(steps=1, guidance=0.0), n=N, n_dev=32,
                             strengths=[STRENGTH], kinds=(PLANTED, ISOTROPIC), seed=0, batch_size=16)


@pytest.mark.slow
def test_a_planted_colour_direction_is_found_and_a_random_one_is_not(table):
    planted = table[table["kind"] == PLANTED].iloc[0]
    iso = table[table["kind"] == ISOTROPIC].iloc[0]
    assert planted["n"] == iso["n"] == N and planted["baseline"] == iso["baseline"] == 0.0
    # the planted direction: detected against the isotropic control by the paired test
    assert planted["detected"] and planted["p"] < 0.05 and planted["joint"] >= 0.25
    assert planted["diff_lo"] > 0 and planted["joint_lo"] > iso["joint"]
    assert planted["detected_vs_unedited"]
    # the isotropic random direction of the same norm: no better than not editing at all
    assert not iso["detected_vs_unedited"] and iso["success"] <= 1 / N
    assert table.attrs["directions"][f"{BLOCK} | {LABEL}"]["n_pos"] > 0
