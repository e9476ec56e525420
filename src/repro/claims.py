"""The paper's claims, each measured by a chapter, and one rule that turns a measurement into a verdict.

A chapter records what it measured for a claim as a `Claim` in its results JSON
(`numbers["claims"]`); `claims_table` gathers them from every chapter's file and applies `verdict`:

* **reproduces**: the measurement beats its control (`beats_control`, decided by the chapter's
  stated test: an interval above the control's, or a paired test at p < 0.05);
* **does not reproduce**: it does not, and the same test at the same n detects a planted true
  effect (`power` >= `POWER`), or the claim is a direct measurement that needs no planted effect
  (`power` None) whose intervals decide;
* **undecidable**: it does not, and the test's power on its positive control is below `POWER`
  (or was not measured), or a direct measurement's intervals cannot decide (`inconclusive`): a
  true effect could have been missed. The reason is stated.

The table's numbers are the chapters' own (formatted there), never retyped.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from repro.errors import ReproError

POWER = 0.8
"""Detection power a positive control must reach before a negative result counts as one."""


@dataclass
class Claim:
    """One claim of the paper as one chapter measured it."""

    claim: str
    """The paper's claim, in a few words."""
    chapter: str
    """The chapter that measured it (its results file)."""
    measure: str
    """What was measured, and the test that compares it with its control."""
    result: str
    """The measurement with its interval, formatted by the chapter."""
    control: str
    """The control and its value."""
    beats_control: bool
    """Whether the measurement beats its control under the stated test."""
    positive_control: str = ""
    """The planted true effect the same test ran on, and what it found ("" for a direct measurement)."""
    power: float | None = None
    """Share of planted effects the test detected at the n used (None: a direct measurement)."""
    n: str = ""
    """The sample the verdict rests on (e.g. "48 scenes x 8 features")."""
    note: str = ""
    """Where the toy's analogy to the paper breaks, if it matters for this claim."""
    inconclusive: str = ""
    """Why a direct measurement that does not beat its control cannot decide either (e.g. its intervals
    include no difference); "" when it decides."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def verdict(c: Claim) -> tuple[str, str]:
    """(verdict, why) for one claim under the module's rule."""
    if c.beats_control:
        return "reproduces", f"beats its control ({c.measure})"
    if c.power is None and c.inconclusive:
        return "undecidable", f"a direct measurement that cannot decide at this n: {c.inconclusive}"
    if c.power is None:
        return "does not reproduce", "a direct measurement that does not beat its control"
    if c.power >= POWER:
        return "does not reproduce", f"the same test detects {c.power:.0%} of known true effects at this n"
    return "undecidable", (f"the same test detects only {c.power:.0%} of known true effects at this n "
                           f"(needs {POWER:.0%}): a true effect could have been missed")


def claims_table(results_dir: str | Path) -> pd.DataFrame:
    """Every chapter's recorded claims (`numbers.claims` of results/*.json) with their verdicts."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            numbers, context = record.get("numbers") or {}, record.get("context") or {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ReproError(f"cannot read chapter results {path}: {exc}; rerun that chapter") from exc
        for raw in numbers.get("claims") or []:
            known = {f.name for f in dataclasses.fields(Claim)}
            c = Claim(**{k: v for k, v in raw.items() if k in known})
            v, why = verdict(c)
            rows.append({"claim": c.claim, "chapter": c.chapter, "toy result": c.result, "control": c.control,
                         "positive control": c.positive_control or "not needed (direct measurement)",
                         "n": c.n, "profile": context.get("profile", "?"), "verdict": v, "why": why + (f"; {c.note}" if c.note else "")})
    return pd.DataFrame(rows)


__all__ = ["Claim", "POWER", "claims_table", "verdict"]
