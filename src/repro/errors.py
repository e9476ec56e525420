"""The one exception type that reaches users as a single line.

Anything the user can fix (a missing model, an unknown block, a bad parameter) raises
`ReproError` with a message that says what is wrong and how to fix it. The CLI and the
notebook runner print it as one line and exit non-zero; everything else is a bug and
keeps its traceback.
"""


class ReproError(Exception):
    """A user-facing error: its message is one sentence saying what is wrong and what to do."""


def choices_hint(valid) -> str:
    """Format a list of valid choices for an error message: "one of: a, b, c"."""
    valid = list(valid)
    if len(valid) > 24:
        shown = ", ".join(map(str, valid[:24])) + f", ... ({len(valid)} in all)"
    else:
        shown = ", ".join(map(str, valid))
    return f"one of: {shown}"
