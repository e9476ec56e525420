import pytest
import torch

from repro.features.analysis import analyse_features
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_model=8, n_features=32, k=3, k_aux=4), seed=2)
    x = torch.randn(20, 3, 3, 8)
    concepts = torch.rand(20, 5, 3, 3) > 0.6
    return sae, x, concepts


def _chunks(x, concepts, size):
    for s in range(0, len(x), size):
        yield torch.arange(s, min(s + size, len(x))), x[s:s + size], concepts[s:s + size]


@pytest.mark.parametrize("chunk, dense", [(20, 2 ** 25), (3, 2 ** 25), (7, 32 * 9)])
def test_analysis_equals_brute_force(data, chunk, dense):
    sae, x, concepts = data
    out = analyse_features(sae, _chunks(x, concepts, chunk), m=4, concept_names=list("abcde"), max_dense_elems=dense)
    z = sae.encode(x.reshape(-1, 8)).detach()  # [N*9, n]
    on = z > 0
    freq = on.float().mean(0)
    mean = torch.where(on.any(0), (z * on).sum(0) / on.sum(0).clamp_min(1), torch.zeros(32))
    torch.testing.assert_close(out.stats.frequency, freq)
    torch.testing.assert_close(out.stats.mean, mean, atol=1e-5, rtol=1e-5)
    img_max = z.reshape(20, 9, 32).amax(1)  # [N, n]
    for f in range(32):
        vals, ids = img_max[:, f].topk(4)
        live = vals > 0
        assert out.top.image_ids[f][live].tolist() == ids[live].tolist()
        assert (out.top.image_ids[f][~live] == -1).all()
        for slot, img in enumerate(ids[live].tolist()):
            expected = z.reshape(20, 3, 3, 32)[img, :, :, f]
            torch.testing.assert_close(out.top.maps[f, slot].float(), expected, atol=1e-2, rtol=1e-2)
    cflat = concepts.permute(0, 2, 3, 1).reshape(-1, 5).float()
    torch.testing.assert_close(out.concepts.both.float(), on.float().T @ cflat)
    p = out.concepts.precision()
    assert ((p >= 0) & (p <= 1)).all() and out.concepts.names == list("abcde")
