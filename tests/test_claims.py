"""The verdict rule: a negative result counts only where the same test detects a planted effect."""

import json

import pytest

from repro.claims import POWER, Claim, claims_table, verdict
from repro.errors import ReproError


def _claim(**kw):
    base = dict(claim="features are causal", chapter="05_features", measure="McNemar vs random direction",
                result="0.10 [0.05, 0.18]", control="0.08 [0.04, 0.15]", beats_control=False,
                positive_control="planted directions", power=0.9, n="48 scenes")
    return Claim(**{**base, **kw})


def test_a_negative_needs_power_on_its_positive_control():
    assert verdict(_claim(beats_control=True, power=0.1))[0] == "reproduces"
    assert verdict(_claim(power=POWER))[0] == "does not reproduce"
    v, why = verdict(_claim(power=POWER - 0.01))
    assert v == "undecidable" and "79%" in why
    assert verdict(_claim(power=None))[0] == "does not reproduce"  # a direct measurement


def test_the_table_reads_every_chapters_claims_with_their_profile(tmp_path):
    for chapter, claims, profile in (("04_evaluate", [_claim(chapter="04_evaluate", beats_control=True)], "toy"),
                                     ("05_features", [_claim(power=0.5), _claim(claim="pure")], "toy-full"),
                                     ("06_riebench", [], "toy")):
        record = {"numbers": {"claims": [c.to_dict() for c in claims]}, "context": {"profile": profile}}
        (tmp_path / f"{chapter}.json").write_text(json.dumps(record))
    (tmp_path / "07_claims.json").write_text(json.dumps({"numbers": {"table": [{"claim": "x"}]}}))
    table = claims_table(tmp_path)
    assert list(table["verdict"]) == ["reproduces", "undecidable", "does not reproduce"]
    assert list(table["profile"]) == ["toy", "toy-full", "toy-full"]
    (tmp_path / "05_features.json").write_text("{not json")
    with pytest.raises(ReproError, match="05_features.json"):
        claims_table(tmp_path)


def test_05s_causal_claim_without_discordant_pairs_is_undecidable_and_silent():
    """No planted direction ever differs from its control: the MDE is not estimable, which the
    claim says in words, with no warning in the chapter's output (a warning prints a file path)."""
    import warnings

    import numpy as np
    import pandas as pd

    from repro.features.experiments import claims

    det = pd.DataFrame([{"block": "mid.0", "concept": f"colour={c}", "detector": d, "f1": f, "n_pos": 40}
                        for c in ("red", "blue") for d, f in (("SAE", 0.3), ("random SAE", 0.1), ("linear probe", 0.8))])
    cz = pd.DataFrame([{"block": "mid.0", "label": "colour=red", "kind": kind, "family": "colour", "detected": False,
                        "diff_vs_isotropic": 0.0, "p": 1.0, "mde": np.nan, "n": 16, "strength": 1.0}
                       for kind in ("planted", "SAE feature", "isotropic random")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        causal = claims(det, cz)[1]
    assert "not estimable" in causal.positive_control and causal.power == 0.0
    assert verdict(causal)[0] == "undecidable"


def test_05s_own_block_claims_name_their_blocks_and_headlines_take_a_prefix():
    import pandas as pd

    from repro.features.experiments import best_strengths, causal_headlines, claims, power_table

    det = pd.DataFrame([{"block": "up.1.0", "concept": f"colour={c}", "detector": d, "f1": f, "n_pos": 40}
                        for c in ("red", "blue") for d, f in (("SAE", 0.3), ("random SAE", 0.1), ("linear probe", 0.8))])
    # the planted direction is detected at its second strength only; the SAE feature nowhere
    cz = pd.DataFrame([{"block": "up.1.0", "label": "colour=red", "kind": kind, "family": "colour", "strength": s,
                        "detected": kind == "planted" and s == 2.0, "diff_vs_isotropic": d if kind == "planted" else 0.0,
                        "p": 0.01 if kind == "planted" and s == 2.0 else 1.0, "mde": 0.3, "n": 48, "joint": 0.5,
                        "joint_lo": 0.3, "joint_hi": 0.7, "diff_lo": 0.1, "diff_hi": 0.6}
                       for kind in ("planted", "SAE feature", "isotropic random") for s, d in ((1.0, 0.1), (2.0, 0.4))])
    interpretable, causal = claims(det, cz, where="the toy's own blocks (up.1.0)")
    assert interpretable.claim.endswith(", in the toy's own blocks (up.1.0)") and causal.claim.endswith("(up.1.0)")
    assert causal.power == 1.0 and not causal.beats_control and verdict(causal)[0] == "does not reproduce"
    best = best_strengths(cz)
    assert best.set_index("kind").loc["planted", "strength"] == 2.0 and len(best) == 3
    heads = causal_headlines(power_table(cz), prefix="own_")
    assert heads == {"own_causal_planted": "1 of 1", "own_causal_sae": "0 of 1", "own_causal_shaped": "none tested"}
    assert set(causal_headlines(None)) == {"causal_planted", "causal_sae", "causal_shaped"}


def test_records_turn_nan_into_null_and_keep_the_rest():
    import json

    import numpy as np
    import pandas as pd

    from repro.results import records

    df = pd.DataFrame({"x": [1.5, np.nan], "name": ["a", None], "n": [1, 2], "ok": [True, False]})
    assert json.dumps(records(df)) == ('[{"x": 1.5, "name": "a", "n": 1, "ok": true}, '
                                       '{"x": null, "name": null, "n": 2, "ok": false}]')
    assert records(None) == []
