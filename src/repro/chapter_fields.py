"""Which setting each chapter parameter is: a field of the Profile or of a stage's config dataclass.

A parameter that maps onto a Profile field is an override of it: its default in the chapter is
None, the profile's value, and a value given changes that field for the run as `overrides`
would (`-p k 32` is `-p overrides '{"sae_k": 32}'`); `repro.notebooks.parameters` folds it into
the profile and hands the chapter the profile's value. Every other parameter sets the field of
the same meaning of its stage's dataclass; tests/test_chapter_parameters.py checks that every
parameter of every chapter is here, with a type the field takes (or says why it is the chapter's own).
"""

from __future__ import annotations

import importlib

CLASSES = {  # where each dataclass lives (imported only when asked: `repro notebook list` needs no torch)
    "Profile": "repro.profiles", "CollectConfig": "repro.collect", "StoreTraining": "repro.cli.train",
    "TrainConfig": "repro.sae.config", "EvaluateConfig": "repro.evaluate.experiments",
    "FeaturesConfig": "repro.features.experiments", "RIEBenchRun": "repro.cli.riebench",
    "RIEBenchConfig": "repro.riebench.runner",
}

FIELDS: dict[str, tuple[str | None, dict[str, str]]] = {
    # chapter: (the dataclass whose same-named fields its other parameters are, {parameter: "Class.field"})
    "00_overview": ("CollectConfig", {"model": "Profile.turbo_model"}),  # seed, device: of the generation
    "01_shapesworld": ("CollectConfig", {"turbo_model": "Profile.turbo_model", "base_model": "Profile.base_model"}),
    "02_collect": ("CollectConfig", {"model": "Profile.turbo_model", "prompts": "Profile.prompts",
                                     "n_prompts": "Profile.collect_prompts", "store": "CollectConfig.out"}),
    "03_train": ("TrainConfig", {"store": "StoreTraining.store", "out": "StoreTraining.out", "seed": "StoreTraining.seed",
                                 "expansion": "Profile.sae_expansion", "k": "Profile.sae_k", "batch_size": "Profile.sae_batch",
                                 "steps": "Profile.sae_steps", "dead_tokens": "Profile.dead_tokens"}),
    "04_evaluate": ("EvaluateConfig", {"n_control": "Profile.control_prompts", "n_timing": "Profile.timing_prompts",
                                       "batch_size": "Profile.image_batch"}),
    "05_features": ("FeaturesConfig", {"batch_size": "Profile.image_batch"}),
    "06_riebench": ("RIEBenchRun", {"edits": "Profile.riebench_edits", "per_category": "Profile.riebench_per_category",
                                    "grid": "Profile.riebench_grid", "batch_size": "Profile.riebench_batch"}),
    "07_claims": (None, {}),
}


def profile_fields(chapter: str) -> dict[str, str]:
    """{parameter: Profile field} of the parameters of `chapter` that override the profile."""
    return {p: f.split(".", 1)[1] for p, f in FIELDS.get(chapter, (None, {}))[1].items() if f.startswith("Profile.")}


def dataclass_of(name: str) -> type:
    """The dataclass `name` of `CLASSES`."""
    return getattr(importlib.import_module(CLASSES[name]), name)


__all__ = ["CLASSES", "FIELDS", "dataclass_of", "profile_fields"]
