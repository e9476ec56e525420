"""Profiles: overrides are applied and checked, and `standin` is `paper` on stand-in models."""

import dataclasses
import re

import pytest

from repro.errors import ReproError
from repro.generate import Sampling
from repro.models.standin import is_standin
from repro.notebooks import check_parameters
from repro.profiles import PROFILES, Profile, get_profile


def test_no_overrides_give_the_profile_itself():
    assert get_profile("paper") is PROFILES["paper"]
    assert get_profile("paper", {}) is PROFILES["paper"]
    with pytest.raises(ReproError, match="unknown profile 'huge'"):
        get_profile("huge")


def test_overrides_replace_fields():
    p = get_profile("paper", {"turbo_model": "tiny-random", "collect_prompts": 16})
    assert p.turbo_model == "tiny-random" and p.collect_prompts == 16
    # everything else is the paper profile's
    paper = PROFILES["paper"]
    assert p.name == "paper" and p.base_model == paper.base_model and p.sae_steps == paper.sae_steps
    assert dataclasses.replace(p, turbo_model=paper.turbo_model, collect_prompts=paper.collect_prompts) == paper
    assert paper.turbo_model == "stabilityai/sdxl-turbo" and paper.collect_prompts == 1_500_000  # not mutated


def test_sampling_overrides_merge_into_the_profiles_sampling():
    p = get_profile("paper", {"base": {"steps": 3}})
    assert p.base == Sampling(steps=3, guidance=8.0, resolution=1024)
    assert p.turbo == PROFILES["paper"].turbo and p.turbo_multistep == PROFILES["paper"].turbo_multistep
    p = get_profile("paper", {"turbo_multistep": {"steps": 2, "resolution": 256}})
    assert p.turbo_multistep == Sampling(steps=2, guidance=0.0, resolution=256)
    assert PROFILES["paper"].base.steps == 25


def test_integer_valued_float_is_accepted_for_int_fields():
    p = get_profile("toy", {"collect_prompts": 16.0, "sae_k": 4.0})
    assert p.collect_prompts == 16 and type(p.collect_prompts) is int
    assert p.sae_k == 4 and type(p.sae_k) is int
    with pytest.raises(ReproError, match="collect_prompts"):
        get_profile("toy", {"collect_prompts": 16.5})


@pytest.mark.parametrize(
    "overrides, key",
    [({"collect_promps": 8}, "'collect_promps'"),               # unknown field
     ({"base": 3}, "override base "),                           # sampling override that is not a mapping
     ({"base": [("steps", 3)]}, "override base "),
     ({"base": {"stepz": 3}}, "'stepz'"),                       # unknown sampling field
     ({"collect_prompts": "16"}, "override collect_prompts "),  # wrong type
     ({"collect_prompts": True}, "override collect_prompts "),  # a bool is not an int here
     ({"dtype": 16}, "override dtype "),
     ({"name": "mine"}, "'name'")],                             # the name is not a setting
)
def test_bad_overrides_raise_naming_the_key(overrides, key):
    with pytest.raises(ReproError, match=re.escape(key)) as info:
        get_profile("paper", overrides)
    assert "\n" not in str(info.value)


def test_standin_is_paper_on_standin_models_at_reduced_counts():
    paper, standin = PROFILES["paper"], PROFILES["standin"]
    for field in ("turbo", "turbo_multistep", "base", "sae_expansion", "sae_k", "sae_batch", "dtype", "dead_tokens"):
        assert getattr(standin, field) == getattr(paper, field), field
    assert standin.turbo == Sampling(steps=1, guidance=0.0, resolution=512)
    assert standin.base == Sampling(steps=25, guidance=8.0, resolution=1024)
    assert (standin.turbo_model, standin.base_model) == ("standin-sdxl-turbo", "standin-sdxl-base")
    assert (paper.turbo_model, paper.base_model) != (standin.turbo_model, standin.base_model)
    assert is_standin(standin.turbo_model) == "sdxl-turbo" and is_standin(standin.base_model) == "sdxl-base"
    assert is_standin(paper.turbo_model) is None
    assert standin.collect_prompts < paper.collect_prompts and standin.sae_steps < paper.sae_steps
    assert (standin.collect_prompts, standin.sae_steps) == (2048, 2000)
    assert standin.name == "standin"
    # no field is left unaccounted for: the differences are exactly these
    differ = {f.name for f in dataclasses.fields(Profile) if getattr(paper, f.name) != getattr(standin, f.name)}
    assert differ == {"name", "turbo_model", "base_model", "collect_prompts", "prompts", "eval_prompts",
                      "sae_steps", "description"}


def test_notebook_parameters_check_overrides_before_running():
    with pytest.raises(ReproError, match="collect_prompts"):
        check_parameters("02_collect", {"overrides": '{"collect_prompts": "x"}'})
    with pytest.raises(ReproError, match="collect_promps"):
        check_parameters("02_collect", {"overrides": '{"collect_promps": 8}'})
    with pytest.raises(ReproError, match="unknown profile"):
        check_parameters("02_collect", {"profile": "huge"})
    assert check_parameters("02_collect", {"overrides": '{"collect_prompts": 8}'}) == {"overrides": {"collect_prompts": 8}}
    assert check_parameters("02_collect", {"profile": "standin", "overrides": '{"base": {"steps": 4}}'}) == {
        "profile": "standin", "overrides": {"base": {"steps": 4}}}


def test_sampling_override_values_are_type_checked():
    for bad in ({"base": {"steps": "3"}}, {"base": {"guidance": "x"}}, {"turbo": {"resolution": "512"}}):
        with pytest.raises(ReproError, match="override (base|turbo)"):
            get_profile("paper", bad)
    base = get_profile("paper", {"base": {"steps": 3.0, "guidance": 7}}).base
    assert (base.steps, base.guidance) == (3, 7.0) and isinstance(base.steps, int) and isinstance(base.guidance, float)


def test_behaviour_differences_are_profile_fields():
    """Issue 15, defect 3: the paper profile runs the paper's RIEBench settings; chapters read fields."""
    from repro.profiles import GRIDS
    from repro.riebench.methods import Grid

    paper, toy, standin = PROFILES["paper"], PROFILES["toy"], PROFILES["standin"]
    assert paper.riebench_sae_k == 160 and Grid.named(paper.riebench_grid) == Grid()
    assert paper.riebench_per_category == 0 and not paper.ground_truth and paper.sae_seeds == 2
    assert toy.ground_truth and toy.riebench_edits == "shapes" and Grid.named(toy.riebench_grid) == Grid.toy()
    assert not standin.ground_truth  # ShapesWorld prompts, but random models: no oracle can read them
    assert all(Grid.named(g) for g in GRIDS)
    with pytest.raises(ReproError, match="riebench_grid"):
        dataclasses.replace(paper, riebench_grid="huge")


def test_no_chapter_chooses_behaviour_by_profile_name_or_model_size():
    from repro.notebooks import notebooks_dir

    for path in sorted(notebooks_dir().glob("0[3-6]_*.md")):
        text = path.read_text()
        assert not re.search(r"prof\.name\s*==|\.name\s*==\s*\"toy\"|sample_size\s*\*", text), path.name
        assert "Grid.toy()" not in text, path.name


def test_the_toy_budget_is_pulled_in_profile_fields_that_the_chapters_read():
    """Issue 15: the toy's CPU levers are its own fields (smaller than the defaults, every curve
    and control kept), and 04/05 read them rather than fixed notebook counts."""
    from repro.notebooks import notebooks_dir
    from repro.profiles import Profile

    toy, default = PROFILES["toy"], {f.name: f.default for f in dataclasses.fields(Profile)}
    for name in ("causal_features", "timing_scenes", "timing_prompts"):
        assert 1 <= getattr(toy, name) < default[name], name
    assert toy.sae_seeds == 2 and toy.control_budgets >= 2  # seed stability and the control curve stay
    assert toy.control_steps * 4 == toy.sae_steps and toy.control_prompts < default["control_prompts"]
    text = {n: (notebooks_dir() / f"{n}.md").read_text() for n in ("04_evaluate", "05_features")}
    assert "prof.timing_prompts" in text["04_evaluate"]
    assert all(f"prof.{f}" in text["05_features"] for f in ("causal_features", "causal_scenes", "timing_scenes"))
    with pytest.raises(ReproError, match="timing_scenes"):
        dataclasses.replace(toy, timing_scenes=0)
