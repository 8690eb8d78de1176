"""Errors a user can act on. The CLI and stages print these as one line, without a traceback."""


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
