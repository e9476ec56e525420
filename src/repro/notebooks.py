"""Run the book's notebooks with papermill, with parameters checked before anything runs.

Notebooks live in `notebooks/` as MyST markdown (jupytext), one chapter each, with one
code cell tagged `parameters`. The runner converts a chapter to ipynb, checks the given
parameters against the defaults in that cell (names and types), executes it with
papermill and writes the executed notebook atomically to `book/chapters/<name>.ipynb`.
A failing chapter becomes one line: the error the notebook raised.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from repro.errors import ReproError, choices_hint
from repro.paths import project_root


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def chapters_dir() -> Path:
    return project_root() / "book" / "chapters"


def list_notebooks() -> list[str]:
    """Chapter names in book order (their file names sort in that order)."""
    return sorted(p.stem for p in notebooks_dir().glob("[0-9]*.md"))


def notebook_file(name: str) -> Path:
    stem = Path(name).stem
    path = notebooks_dir() / f"{stem}.md"
    if not path.exists():
        raise ReproError(f"no notebook {name!r}: use {choices_hint(list_notebooks())}")
    return path


def _parameters_source(path: Path) -> str:
    import jupytext

    nb = jupytext.read(path)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return cell.source
    raise ReproError(f"{path.name} has no code cell tagged 'parameters': add one (see notebooks/README.md)")


def default_parameters(name: str) -> dict[str, Any]:
    """Names and default values of a notebook's `parameters` cell (literal assignments)."""
    tree = ast.parse(_parameters_source(notebook_file(name)))
    defaults: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defaults[target.id] = ast.literal_eval(node.value)
    return defaults


def _kind(value: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _coerce(notebook: str, key: str, raw: Any, default: Any) -> Any:
    """Turn a value given on the command line (a string) or by papermill into the default's type."""
    bad = ReproError(
        f"parameter {key} of {notebook} must be {_kind(default)} (default {default!r}), got {raw!r}"
    )
    if default is None:  # optional: any scalar, "none" means None
        return None if raw in (None, "none", "None", "") else raw
    if isinstance(raw, str) and not isinstance(default, str):
        try:
            raw = json.loads(raw) if not isinstance(default, bool) else {"true": True, "false": False}[raw.lower()]
        except (ValueError, KeyError):
            raise bad from None
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise bad
    elif isinstance(default, int):
        if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, float) and raw.is_integer())):
            raise bad
        raw = int(raw)
    elif isinstance(default, float):
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise bad
        raw = float(raw)
    elif not isinstance(raw, type(default)):
        raise bad
    return raw


def check_parameters(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Validate names and types of `given` against the notebook's defaults; returns coerced values."""
    defaults = default_parameters(name)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ReproError(f"{name} has no parameter {unknown[0]!r}: use {choices_hint(defaults)}")
    checked = {key: _coerce(name, key, value, defaults[key]) for key, value in given.items()}
    if "profile" in checked or "overrides" in checked:
        from repro.profiles import get_profile

        get_profile(checked.get("profile", defaults.get("profile", "toy")), checked.get("overrides"))
    return checked


def parameters(name: str, namespace: dict[str, Any]) -> SimpleNamespace:
    """Inside a notebook: the parameter values now in `namespace` (its globals()), checked.

    Papermill injects values without looking at types; this catches `-p n_images 3x`
    with one clear error before any work is done.
    """
    defaults = default_parameters(name)
    values = {key: namespace.get(key, default) for key, default in defaults.items()}
    return SimpleNamespace(**check_parameters(name, values))


def run_notebook(name: str, given: dict[str, Any] | None = None, output: Path | None = None,
                 kernel: str = "python3") -> Path:
    """Execute one chapter with papermill; returns the executed notebook's path."""
    import jupytext
    import nbformat
    import papermill

    from repro.io import atomic_path
    from repro.models.loading import quiet_libraries

    quiet_libraries()
    source = notebook_file(name)
    name = source.stem
    params = check_parameters(name, dict(given or {}))
    output = Path(output) if output else chapters_dir() / f"{name}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        unexecuted = Path(tmp) / f"{name}.ipynb"
        nbformat.write(jupytext.read(source), unexecuted)
        with atomic_path(output) as executed:
            started = time.time()
            try:
                papermill.execute_notebook(
                    str(unexecuted), str(executed), parameters=params, kernel_name=kernel,
                    cwd=str(source.parent), progress_bar=False, language="python",
                )
            except papermill.PapermillExecutionError as exc:
                failed = project_root() / "build" / "failed" / f"{name}.ipynb"
                failed.parent.mkdir(parents=True, exist_ok=True)
                os.replace(executed, failed)
                executed.touch()  # atomic_path cleans up the (now empty) temp file
                raise ReproError(
                    f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                    f"(executed copy kept at {failed})"
                ) from None
            _stamp(executed, params, time.time() - started)
    return output


def _stamp(path: Path, params: dict[str, Any], seconds: float) -> None:
    """Record how and where the chapter ran, for the book's status page."""
    import platform

    import nbformat

    from repro.io import git_commit

    nb = nbformat.read(path, as_version=4)
    # papermill records the temporary absolute input/output paths: the site must not leak them.
    papermill_meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        papermill_meta.pop(key, None)
    nb.metadata["repro"] = {
        "parameters": params,
        "seconds": round(seconds, 1),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cpus)",
        "git_commit": git_commit(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    nbformat.write(nb, path)
