"""Where things live: the project root, embedded models, results. All overridable."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout holding this package (the folder with pyproject.toml), else the cwd.

    Notebooks run from `notebooks/`, the CLI from anywhere: paths are taken from here,
    never from the working directory. `REPRO_ROOT` overrides.
    """
    if "REPRO_ROOT" in os.environ:
        return Path(os.environ["REPRO_ROOT"]).resolve()
    here = Path(__file__).resolve()
    for folder in here.parents:
        if (folder / "pyproject.toml").exists() and (folder / "src" / "repro").exists():
            return folder
    return Path.cwd().resolve()


def models_dir() -> Path:
    """Embedded models (ShapesWorld, the oracle): `REPRO_MODELS_DIR` or `<root>/models`."""
    return Path(os.environ.get("REPRO_MODELS_DIR", project_root() / "models"))


def results_dir() -> Path:
    """Headline numbers of each notebook: `REPRO_RESULTS_DIR` or `<root>/results`."""
    return Path(os.environ.get("REPRO_RESULTS_DIR", project_root() / "results"))


def cache_dir() -> Path:
    """Scratch space for built or collected data: `REPRO_CACHE_DIR` or `<root>/.cache`."""
    return Path(os.environ.get("REPRO_CACHE_DIR", project_root() / ".cache"))


def artifacts_dir(profile: str = "toy") -> Path:
    """What the chapters hand on to each other (activation stores, SAEs, feature data):
    `REPRO_ARTIFACTS_DIR` or `<root>/artifacts`, one folder per profile."""
    return Path(os.environ.get("REPRO_ARTIFACTS_DIR", project_root() / "artifacts")) / profile


def display_path(path: str | os.PathLike) -> str:
    """`path` relative to the project root when inside it (what pages and logs show: a
    published book must not carry the absolute paths of the machine that built it)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(project_root()))
    except ValueError:
        return str(path)
