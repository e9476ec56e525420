"""Each notebook's headline numbers, written to `results/<notebook>.json` with provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repro.io import provenance, write_json_atomic
from repro.paths import results_dir


def records(frame) -> list[dict]:
    """A table as JSON-ready records (NaN -> None) for results/*.json; None -> []."""
    if frame is None:
        return []
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def write_results(notebook: str, numbers: dict[str, Any], folder: str | Path | None = None, **context: Any) -> Path:
    """Write `{"notebook", "numbers", "context", "provenance"}` atomically; returns the path.

    `context` records what the numbers were computed on (profile, model, device, counts);
    `resources` what the process has cost so far (`repro.meter`: wall time, images/s,
    SAE tokens/s, peak GPU and host memory).
    """
    from repro.meter import METER

    folder = Path(folder) if folder else results_dir()
    record = {"notebook": notebook, "numbers": numbers, "context": context,
              "resources": METER.snapshot(), "provenance": provenance()}
    return write_json_atomic(folder / f"{notebook}.json", record)
