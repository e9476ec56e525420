"""Per-feature artifacts have one owner and never rewrite an SAE's weights or provenance (issue 15, defect 5)."""

import torch

from repro.features.analysis import TopExamples
from repro.features.artifacts import FeatureArtifacts, load_feature_artifacts, save_feature_artifacts
from repro.features.toy_concepts import FeatureLabels
from repro.sae import SAEConfig, TopKSAE, load_sae, save_sae
from repro.sae.io import SAE_CONFIG, SAE_WEIGHTS
from repro.sae.stats import FeatureStats


def test_artifacts_round_trip_and_leave_the_sae_files_alone(tmp_path):
    sae = TopKSAE(SAEConfig(d_model=8, n_features=16, k=2, k_aux=0), seed=3)
    folder = save_sae(sae, tmp_path / "down.2.1", block="down.2.1", training={"steps": 7})
    before = {name: (folder / name).read_bytes() for name in (SAE_WEIGHTS, SAE_CONFIG)}
    stats = FeatureStats(mean=torch.rand(16), std=torch.rand(16), frequency=torch.rand(16),
                         count=torch.arange(16), n_tokens=99)
    top = TopExamples(torch.arange(32).reshape(16, 2), torch.rand(16, 2), torch.rand(16, 2, 4, 4).half())
    labels = FeatureLabels(label=[f"colour=c{i}" for i in range(16)], purity=torch.rand(16), f1=torch.rand(16),
                           live=torch.arange(16) % 3 > 0)
    save_feature_artifacts(folder, FeatureArtifacts(stats=stats, top=top, labels=labels, threshold=0.8))
    assert {name: (folder / name).read_bytes() for name in before} == before  # provenance survives
    got = load_feature_artifacts(folder)
    assert torch.equal(got.stats.count, stats.count) and got.stats.n_tokens == 99
    assert torch.equal(got.top.image_ids, top.image_ids) and torch.equal(got.top.maps, top.maps)
    assert got.labels.label == labels.label and torch.equal(got.labels.live, labels.live)
    assert torch.allclose(got.labels.purity, labels.purity) and got.threshold == 0.8
    reloaded = load_sae(folder)
    assert reloaded.metadata["training"] == {"steps": 7} and "provenance" in reloaded.metadata
    assert torch.equal(reloaded.feature_stats.mean, stats.mean)


def test_missing_parts_load_as_none(tmp_path):
    sae = TopKSAE(SAEConfig(d_model=8, n_features=16, k=2, k_aux=0))
    folder = save_sae(sae, tmp_path / "mid.0")
    got = load_feature_artifacts(folder)
    assert got.stats is None and got.top is None and got.labels is None
