"""Shared by the CLI tests: run `repro` in-process and demand exit 2 with one error line."""

from repro.cli import main

TINY = ["--model", "tiny-random", "--device", "cpu"]


def fails(capsys, *argv: str) -> str:
    """Run the CLI in-process; assert exit 2 with exactly one error line and no traceback; return it.
    Progress-bar redraws (lines holding a carriage return) are not error lines."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("repro: error: "), err
    return lines[0]
