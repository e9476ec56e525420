"""Run the book's notebooks with papermill, with parameters checked before anything runs.

Notebooks live in `notebooks/` as MyST markdown (jupytext), one chapter each, with one
code cell tagged `parameters`. The runner converts a chapter to ipynb, checks the given
parameters against the defaults in that cell (names, types and ranges), executes it with
papermill and writes the executed notebook atomically to `book/chapters/<name>.ipynb`.
A failing chapter becomes one line: the error the notebook raised.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import sys
import tempfile
import threading
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


def _coerce(notebook: str, key: str, raw: Any, default: Any, typed: Any = None) -> Any:
    """Turn a value given on the command line (a string) or by papermill into the default's type
    (`typed`'s where the default is None: the profile's value, `repro.chapter_fields`)."""
    if default is None and raw in (None, "none", "None"):
        return None
    bad = ReproError(f"parameter {key} of {notebook} must be {_kind(default if typed is None else typed)} "
                     f"(default {default!r}), got {raw!r}")
    default = default if typed is None else typed
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


PARAMETER_RANGES: tuple[tuple[str, str, float | None, float | None], ...] = (
    # (chapter pattern, parameter pattern, low, high): the first match wins, and the range always
    # holds the chapter's default. Caps as in repro.ranges.
    ("*", "seed", 0, 2**63 - 1),
    ("*", "n_base", 0, 1_000_000),  # 0: n_captions
    ("*", "n_*", 1, 1_000_000),  # prompts, captions or scenes generated and held in memory
    ("*", "batch_size", 1, 4096),  # images per generation call
    ("*", "shard_size", 1, 65_536),
    ("*", "log_every", 1, 10**9),
    ("*", "checkpoint_every", 0, 10**9),  # 0: no checkpoints
    ("*", "stats_batches", 0, 10**9),
    ("*", "top_m", 1, 100_000),
    ("*", "sample_per_feature", 1, 100_000),
    ("*", "purity_threshold", 0.0, 1.0),
)
"""Valid ranges of chapter parameters by name; any other integer whose default is >= 0 must stay
>= 0, and every number (also in a list) must be finite. A parameter that overrides a profile field
(`repro.chapter_fields`) has the field's range, checked by the Profile."""


def parameter_range(notebook: str, key: str, default: Any) -> tuple[float | None, float | None]:
    """(low, high) of a numeric parameter of `notebook` (None: unbounded), widened to hold its default."""
    from fnmatch import fnmatchcase

    low, high = next(((lo, hi) for nb, pattern, lo, hi in PARAMETER_RANGES
                      if fnmatchcase(notebook, nb) and fnmatchcase(key, pattern)),
                     (0 if isinstance(default, int) and default >= 0 else None, None))
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        low = default if low is not None and default < low else low
        high = default if high is not None and default > high else high
    return low, high


def _check_range(notebook: str, key: str, value: Any, default: Any) -> None:
    """One ReproError if a numeric parameter (or a number in a list) is out of range or not finite."""
    import math

    numbers = value if isinstance(value, list) else [value]
    for item in numbers:
        if isinstance(item, float) and not math.isfinite(item):
            raise ReproError(f"parameter {key} of {notebook} must hold finite numbers (default {default!r}), got {value!r}")
        if isinstance(default, list) and default and all(isinstance(d, (int, float)) for d in default) and (
                isinstance(item, bool) or not isinstance(item, (int, float))):
            raise ReproError(f"parameter {key} of {notebook} must be a list of numbers (default {default!r}), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(default, (int, float)):
        return
    low, high = parameter_range(notebook, key, default)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"in {low}..{high}" if low is not None and high is not None else (
            f"at least {low}" if high is None else f"at most {high}")
        raise ReproError(f"parameter {key} of {notebook} must be {span} (default {default!r}), got {value!r}")


def check_parameters(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Validate names, types and ranges of `given` against the notebook's defaults (`PARAMETER_RANGES`;
    a parameter that overrides a profile field, against that field); returns coerced values."""
    from repro.chapter_fields import profile_fields
    from repro.profiles import PROFILES

    defaults = default_parameters(name)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ReproError(f"{name} has no parameter {unknown[0]!r}: use {choices_hint(defaults)}")
    fields = profile_fields(name)  # typed like the toy profile's value of the field they override
    checked = {key: _coerce(name, key, value, defaults[key], getattr(PROFILES["toy"], fields[key], None) if key in fields
                            else None) for key, value in given.items()}
    for key, value in checked.items():
        if key not in fields:
            _check_range(name, key, value, defaults[key])
    chapter_profile(name, {**defaults, **checked})  # the profile with every override is checked here too
    return checked


def chapter_profile(name: str, values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(The profile a chapter's parameter `values` select, their overrides): `overrides` with the
    parameters that override profile fields folded in (None: not given, `repro.chapter_fields`)."""
    from repro.chapter_fields import profile_fields
    from repro.profiles import get_profile

    overrides = {**(values.get("overrides") or {}),
                 **{field: values[key] for key, field in profile_fields(name).items() if values.get(key) is not None}}
    return get_profile(values.get("profile", "toy"), overrides), overrides


def split_parameters(names: list[str], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parameters of a run over several chapters, per chapter, all checked up front.

    Each chapter gets the given parameters it has; a parameter that no chapter has, or a
    value of the wrong type for any chapter that has it, is refused before anything runs.
    """
    names = [notebook_file(name).stem for name in names]
    defaults = {name: default_parameters(name) for name in names}
    known = set().union(*defaults.values())
    unknown = sorted(set(given) - known)
    if unknown:
        which = f"{names[0]} has no" if len(names) == 1 else f"none of {', '.join(names)} has a"
        raise ReproError(f"{which} parameter {unknown[0]!r}: use {choices_hint(sorted(known))}")
    return {name: check_parameters(name, {k: v for k, v in given.items() if k in defaults[name]}) for name in names}


def parameters(name: str, namespace: dict[str, Any]) -> SimpleNamespace:
    """Inside a notebook: the parameter values now in `namespace` (its globals()), checked; a parameter
    that overrides a profile field is folded into `overrides` and set to the profile's value (so
    `get_profile(P.profile, P.overrides)` is the profile the chapter runs on, `repro.chapter_fields`).

    Papermill injects values without looking at types; this catches `-p n_images 3x`
    with one clear error before any work is done.
    """
    from repro.chapter_fields import profile_fields

    defaults = default_parameters(name)
    values = {**defaults, **check_parameters(name, {key: namespace.get(key, d) for key, d in defaults.items()})}
    prof, values["overrides"] = chapter_profile(name, values)
    values.update({key: getattr(prof, field) for key, field in profile_fields(name).items()})
    return SimpleNamespace(**values)


def glue_texts(texts: dict[str, Any]) -> None:
    """Inside a chapter: glue each {name: value} for the prose's {glue:} references, shown only there."""
    from myst_nb import glue

    for name, value in texts.items():
        glue(name, value, display=False)


def stage_settings(name: str, namespace: dict[str, Any]) -> tuple[Any, Any]:
    """Inside a chapter with a stage config (04, 05: `repro.chapter_fields.FIELDS`): the profile it runs
    on and its stage config, from `parameters` (lists as tuples)."""
    import dataclasses

    from repro.chapter_fields import FIELDS, dataclass_of

    values = vars(parameters(name, namespace))
    cls = dataclass_of(FIELDS[name][0])
    config = {f.name: tuple(v) if isinstance(v := values[f.name], list) else v for f in dataclasses.fields(cls)}
    return chapter_profile(name, values)[0], cls(**config)


def run_notebook(name: str, given: dict[str, Any] | None = None, output: Path | None = None,
                 kernel: str = "python3") -> Path:
    """Execute one chapter with papermill; returns the executed notebook's path."""
    import jupytext
    import nbformat
    import papermill

    from repro.io import atomic_path
    from repro.models.loading import quiet_libraries

    quiet_libraries()
    keep_sigint = _sigint_keeper()
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
                    cwd=str(source.parent), language="python", engine_name=_engine(keep_sigint),
                    progress_bar={"desc": name, "dynamic_ncols": True, "leave": False},
                    kernel_manager_class=_kernel_manager(log_dir() / f"{name}.kernel.log", keep_sigint),
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


def log_dir() -> Path:
    """Where each chapter's kernel writes its own log (kernel warnings, tracebacks of a kill)."""
    return project_root() / "build" / "logs"


def _sigint_keeper():
    """A function that (re)installs this process's Ctrl-C handling while a chapter runs.

    nbclient replaces the handler, while a kernel runs, with an asyncio one that only
    shuts the kernel down, and the cell's wait for a reply could then hang. Installed when
    the kernel has started and before each cell, Ctrl-C kills the chapter's kernel (it is
    in a session of its own and sleeps through a polite shutdown) and raises
    KeyboardInterrupt: one line, exit 130, in a second. Any other handler (an ignored
    SIGINT under nohup) is put back as it was.
    """
    original = signal.getsignal(signal.SIGINT)
    kernels: list = []  # the chapter's kernel managers, once started

    def on_sigint(signum, frame):
        for km in kernels:
            process = getattr(getattr(km, "provisioner", None), "process", None)
            if process is not None and process.poll() is None:
                process.kill()
        raise KeyboardInterrupt

    def keep(km=None) -> None:
        if km is not None:
            kernels.append(km)
        if threading.current_thread() is threading.main_thread():
            default = original in (signal.default_int_handler, signal.SIG_DFL)
            signal.signal(signal.SIGINT, on_sigint if default else original)

    return keep


def _kernel_manager(log: Path, keep_sigint):
    """A kernel manager whose kernel logs to `log`, not to the terminal, and stops in a second.

    Ctrl-C stops `repro notebook run` with one line; without this the kernel, shut down in
    the middle of a cell, printed a traceback of its own (and took 15 s to be killed).
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Float

    log.parent.mkdir(parents=True, exist_ok=True)

    class ChapterKernelManager(AsyncKernelManager):
        shutdown_wait_time = Float(1.0)

        async def start_kernel(self, **kw):
            # the kernel's artifacts name the command that ran the chapter (`repro.io.provenance`)
            env = {"REPRO_COMMAND": json.dumps(list(sys.orig_argv)), **(kw.pop("env", None) or os.environ)}
            with open(log, "ab") as fh:  # the kernel keeps its own copy of the descriptor
                started = await super().start_kernel(stdout=fh, stderr=fh, env=env, **kw)
            keep_sigint(self)
            return started

    return ChapterKernelManager


def _section(nb, index: int) -> str:
    """The heading of the section holding cell `index` (what the progress bar shows)."""
    for cell in reversed(nb.cells[: index + 1]):
        if cell.cell_type == "markdown":
            heads = [line.lstrip("#").strip() for line in cell.source.splitlines() if line.startswith("#")]
            if heads:
                return heads[-1][:40]
    return ""


def _engine(keep_sigint) -> str:
    """papermill's nbclient engine, registered once as "repro" with the running cell on the bar:
    `00_overview: 45%|####  | 5/11 [00:30<00:40, cell 6: Update heatmaps]`."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ChapterEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            start = nb_man.cell_start

            def cell_start(cell, cell_index=None, **kw):
                keep_sigint()
                if nb_man.pbar is not None and cell_index is not None:
                    nb_man.pbar.set_postfix_str(f"cell {cell_index + 1}: {_section(nb_man.nb, cell_index)}")
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("repro", ChapterEngine)
    return "repro"


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")


def static_widget_outputs(nb) -> dict[str, int]:
    """What the static book needs of an executed notebook's widgets, and nothing more.

    * A widget output that carries its own static rendering (`text/html`, e.g. FeaturePages)
      keeps only that: the book shows it without a widget manager.
    * A progress bar (tqdm's HBox with a progress model) is dropped: finished, it says nothing.
    * With no widget output left, the saved widget state goes too, and with it the 3.6 MB
      widget runtime the book would load on the page before its first interaction.
    Returns the counts {"static": ..., "progress_bars": ..., "widgets_left": ...}.
    """
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def is_progress_bar(model_id: str) -> bool:
        model = state.get(model_id, {})
        children = model.get("state", {}).get("children", []) if model.get("model_name") == "HBoxModel" else []
        return any(state.get(str(c).removeprefix("IPY_MODEL_"), {}).get("model_name") in PROGRESS_MODELS
                   for c in children)

    counts = {"static": 0, "progress_bars": 0, "widgets_left": 0}
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                if "text/html" in data:
                    del data[WIDGET_VIEW]
                    counts["static"] += 1
                elif is_progress_bar(str(data[WIDGET_VIEW].get("model_id", ""))):
                    counts["progress_bars"] += 1
                    continue
                else:
                    counts["widgets_left"] += 1
            kept.append(out)
        if "outputs" in cell:
            cell["outputs"] = kept
    if counts["widgets_left"] == 0:
        nb.metadata.pop("widgets", None)
    return counts


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
    static_widget_outputs(nb)
    nb.metadata["repro"] = {
        "parameters": params,
        "seconds": round(seconds, 1),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cpus)",
        "git_commit": git_commit(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    nbformat.write(nb, path)
