"""The one yes/no question the commands that write to devices ask first."""

from __future__ import annotations

import sys


def confirm(question: str, *, yes: bool, action: str) -> bool:
    """True to go ahead: ``--yes`` answers for the operator, else a "y" or "yes" on the terminal.

    Without a terminal (a script, a pipe) the answer is no, and stderr says what was refused
    (``action``: "write", "act") and that ``--yes`` goes ahead.
    """
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"refusing to {action} without a terminal to confirm on; pass --yes", file=sys.stderr)
        return False
    return input(question).strip().lower() in ("y", "yes")
