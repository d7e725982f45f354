"""The one owner of the command line's consoles (rich): every command prints through these.

On a terminal rich fits its width. Anywhere else (a file, a pipe, a cluster log) a console is as
wide as its widest line needs, so no table is cut at 80 columns: every cell and every column of a
ranking, a query result or a status table stays complete.
"""

from __future__ import annotations

import sys

from rich.console import Console

UNBOUNDED = 10_000  # characters: wider than any table we print, so nothing is folded or cut


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): terminal width on a terminal, unbounded elsewhere."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        terminal = False
    return Console(stderr=stderr) if terminal else Console(stderr=stderr, width=UNBOUNDED)
