"""environment.yml (conda users) and pyproject.toml (pip) must list the same dependencies."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(spec: str) -> str:
    return spec.replace(" ", "").lower()


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip_deps = {_normalise(d) for d in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {_normalise(d) for d in conda_pip} == pip_deps


def test_torch_is_pinned_exactly():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_specs = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert len(torch_specs) == 1 and "==" in torch_specs[0], "torch must be pinned (CPU machines must not pull a CUDA build)"
