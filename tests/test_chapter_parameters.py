"""Every chapter parameter is a setting of the library (issue 29): it maps onto a field of the Profile
or of a stage's config dataclass (`repro.chapter_fields`), with a type the field takes; a parameter
that maps onto a Profile field defaults to None and then takes the profile's value, so a profile is a
set of overrides of them. Chapters 04 and 05 call, show and glue: at most 120 lines of code each."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import jupytext
import pytest

from repro.chapter_fields import FIELDS, dataclass_of, profile_fields
from repro.errors import ReproError
from repro.notebooks import check_parameters, default_parameters, list_notebooks, notebooks_dir, parameters, stage_settings
from repro.profiles import PROFILES, get_profile

EVERY_CHAPTER = {"profile": "Profile.name", "overrides": "Profile"}  # overrides: any Profile field, by name

CHAPTER_ONLY = {
    # (chapter, parameter): why it is no setting of a stage (what the page shows, or which runs it compares)
    ("00_overview", "prompts"): "the prompts the overview draws and shows",
    **{("01_shapesworld", n): "how many captions or renders the toy world's check draws"
       for n in ("n_captions", "n_base", "n_ablation", "n_oracle", "n_grid")},
    ("03_train", "sets"): "which of the profile's SAE sets (repro.sae.sets) this run trains",
    ("06_riebench", "compare_saes"): "the SAEs of a control row: another run of the benchmark",
    ("06_riebench", "random_control"): "whether to add the random-SAE control row: another run of the benchmark",
    ("07_claims", "results"): "the folder of results the verdict table reads",
    ("07_claims", "decisive"): "the committed decisive run (toy-full on a GPU) whose verdicts 07 shows beside this build's",
}


def field_of(chapter: str, parameter: str) -> str | None:
    """"Class.field" that `parameter` of `chapter` sets by `FIELDS` ("Profile" for overrides); None
    for a chapter without a stage dataclass or a parameter of CHAPTER_ONLY."""
    stage, named = FIELDS.get(chapter, (None, {}))
    if parameter in EVERY_CHAPTER or parameter in named:
        return {**EVERY_CHAPTER, **named}[parameter]
    return None if stage is None or (chapter, parameter) in CHAPTER_ONLY else f"{stage}.{parameter}"


def takes(tp, value) -> bool:
    """Whether a chapter's default `value` is a value of a field annotated `tp` (a comma list or a list
    for a tuple, a string for a path)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(takes(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, str) or isinstance(value, (list, tuple)) and all(takes(args[0], v) for v in value)
    if tp is type(None) or value is None:
        return value is None and tp is type(None)
    if tp is Path:
        return isinstance(value, str)
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    return isinstance(value, tp)


def mapping_problems(chapter: str, defaults: dict) -> list[str]:
    """What keeps `chapter`'s parameters (name -> default) from mapping onto fields: [] when each is a
    field of its dataclass with a type the field takes, or is listed in CHAPTER_ONLY."""
    problems = []
    for name, default in defaults.items():
        target = field_of(chapter, name)
        if target is None:
            if (chapter, name) not in CHAPTER_ONLY:
                problems.append(f"{chapter}: {name} maps onto no field")
            continue
        if target == "Profile":  # overrides: a mapping of Profile fields
            problems += [] if default == {} else [f"{chapter}: {name} (overrides) must default to {{}}"]
            continue
        cls_name, field = target.split(".")
        cls = dataclass_of(cls_name)
        hints = typing.get_type_hints(cls)
        if field not in {f.name for f in dataclasses.fields(cls)}:
            problems.append(f"{chapter}: {name} -> {target}: {cls_name} has no field {field!r}")
        elif cls_name == "Profile" and field != "name":
            if default is not None:  # the profile's value unless given: no "0 means the profile's"
                problems.append(f"{chapter}: {name} overrides Profile.{field} and must default to None, not {default!r}")
        elif not takes(hints[field], default):
            problems.append(f"{chapter}: {name} = {default!r} is no value of {target} ({hints[field]})")
    return problems


def code_lines(path: Path) -> int:
    """Non-blank lines of a MyST notebook's code cells."""
    return sum(1 for cell in jupytext.read(path).cells if cell.cell_type == "code"
               for line in cell.source.splitlines() if line.strip())


def test_every_chapter_parameter_maps_onto_a_field():
    assert sorted(FIELDS) == list_notebooks()
    problems = [p for name in list_notebooks() for p in mapping_problems(name, default_parameters(name))]
    assert problems == []
    stale = [key for key in CHAPTER_ONLY if key[1] not in default_parameters(key[0])]
    assert stale == [], "CHAPTER_ONLY lists parameters no chapter has"


def test_a_new_unmapped_parameter_or_a_sentinel_default_fails(tmp_path, monkeypatch):
    text = (notebooks_dir() / "04_evaluate.md").read_text()
    cell = 'n_loop = 32  # held-out prompts for reconstruction in the loop\n'
    assert cell in text
    (tmp_path / "04_evaluate.md").write_text(text.replace(cell, 'n_loop = "x"\nn_new = 3\n'))
    (tmp_path / "03_train.md").write_text((notebooks_dir() / "03_train.md").read_text().replace(
        "k = None  #", "k = 0  #"))
    monkeypatch.setattr("repro.notebooks.notebooks_dir", lambda: tmp_path)
    assert mapping_problems("04_evaluate", default_parameters("04_evaluate")) == [
        "04_evaluate: n_loop = 'x' is no value of EvaluateConfig.n_loop (<class 'int'>)",
        "04_evaluate: n_new -> EvaluateConfig.n_new: EvaluateConfig has no field 'n_new'"]
    assert mapping_problems("03_train", default_parameters("03_train")) == [
        "03_train: k overrides Profile.sae_k and must default to None, not 0"]
    assert mapping_problems("07_claims", {"results": "", "new": 1}) == ["07_claims: new maps onto no field"]


@pytest.mark.parametrize("profile", ["toy", "toy-full", "standin", "paper"])
def test_a_parameter_left_at_none_takes_the_profiles_value(profile):
    prof = PROFILES[profile]
    for name in list_notebooks():
        P = parameters(name, {"profile": profile})
        for key, field in profile_fields(name).items():
            assert getattr(P, key) == getattr(prof, field), (name, key)
        assert get_profile(P.profile, P.overrides) == prof, name  # nothing given: nothing overridden


def test_a_parameter_given_overrides_its_profile_field_for_that_chapter():
    P = parameters("03_train", {"profile": "paper", "k": 32, "steps": "7", "overrides": {"sae_batch": 256}})
    assert (P.k, P.steps, P.batch_size, P.expansion) == (32, 7, 256, PROFILES["paper"].sae_expansion)
    assert get_profile(P.profile, P.overrides) == dataclasses.replace(PROFILES["paper"], sae_k=32, sae_steps=7, sae_batch=256)
    assert parameters("06_riebench", {"per_category": 0, "grid": "paper"}).per_category == 0  # 0: every edit, a value
    assert check_parameters("03_train", {"k": "none"}) == {"k": None}
    for key, value, needle in (("k", "3x", "parameter k of 03_train must be an integer"),
                               ("k", "0", "sae_k must be at least 1, got 0"),
                               ("batch_size", str(10**9), "sae_batch must be in 1..4194304")):
        with pytest.raises(ReproError, match=needle):
            check_parameters("03_train", {key: value})
    with pytest.raises(ReproError, match="riebench_per_category must be in 0..1000000"):
        check_parameters("06_riebench", {"per_category": -2})
    with pytest.raises(ReproError, match="unknown riebench_grid 'huge'"):
        check_parameters("06_riebench", {"grid": "huge"})


@pytest.mark.parametrize("chapter", ["04_evaluate", "05_features"])
def test_the_stage_config_holds_the_chapters_defaults(chapter):
    prof, cfg = stage_settings(chapter, {})
    assert prof == PROFILES["toy"] and cfg == dataclass_of(FIELDS[chapter][0])()
    prof, changed = stage_settings(chapter, {"profile": "paper", "batch_size": 3, "seed": "5"})
    # 04's and 05's generation batch is the profile's image_batch (toy-full: 1024)
    assert (prof.image_batch, changed.seed) == (3, 5) and prof.name == "paper"


@pytest.mark.parametrize("chapter", ["04_evaluate", "05_features"])
def test_chapters_04_and_05_hold_at_most_120_lines_of_code(chapter):
    assert code_lines(notebooks_dir() / f"{chapter}.md") <= 120


def test_code_lines_counts_code_cells_only(tmp_path):
    header = (notebooks_dir() / "07_claims.md").read_text().split("\n---\n")[0] + "\n---\n"  # jupytext's front matter
    nb = tmp_path / "x.md"
    nb.write_text(header + "# Title\n\nprose\n\n```{code-cell} ipython3\n:tags: [parameters]\n\na = 1\n```\n\ntext\n\n"
                  "```{code-cell} ipython3\nb = 2\n\nc = 3  # three\n```\n")
    assert code_lines(nb) == 3


def test_notebook_list_names_the_profile_field_a_parameter_takes(capsys):
    from repro.cli import main

    assert main(["notebook", "list"]) == 0
    train = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("03_train:"))
    assert "k=<profile's sae_k>" in train and "log_every=50" in train and "None" not in train
