"""Errors a user can act on. The CLI and stages print these as one line, without a traceback (with one after
it under `nanomorph --debug ...` or NANOMORPH_DEBUG=1, for a bug report)."""

import os
import sys
import traceback

DEBUG_ENV = "NANOMORPH_DEBUG"


class NanomorphError(Exception):
    """A user-facing problem: bad input, bad configuration, missing data."""


class ConfigError(NanomorphError):
    """params.yaml is missing a key, has a wrong type, or names an unknown profile."""


class ImageReadError(NanomorphError):
    """An image or mask file cannot be decoded; the message names the file and the problem."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class StageInterrupted(BaseException):
    """A stage stopped from outside (SIGTERM); like KeyboardInterrupt it is not an Exception, so no handler for
    errors swallows it."""


def print_error(prefix: str, exc: BaseException, lines: list[str] | None = None) -> None:
    """`prefix: <line>` on stderr for each line of `exc` (or `lines`), then, when debugging, its traceback."""
    for line in (str(exc).splitlines() if lines is None else lines) or [""]:
        print(f"{prefix}: {line}", file=sys.stderr)
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
