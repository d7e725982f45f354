"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input from the user (arguments, spec files, paths). The message is the whole story."""


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
