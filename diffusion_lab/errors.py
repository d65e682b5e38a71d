"""Errors that mean the user asked for something invalid; entry points print them as one line."""


class DiffusionLabError(Exception):
    """Base class: a problem with the user's input, not a bug."""


class ConfigError(DiffusionLabError, ValueError):
    """An argument or config key outside what is allowed; the message names the key and the range."""


class DataError(DiffusionLabError, FileNotFoundError):
    """A data set cannot be found or read; the message names the files and where to put them."""


class CheckpointError(DiffusionLabError):
    """A checkpoint is missing, corrupt or belongs to another model."""


class NonFiniteError(DiffusionLabError, FloatingPointError):
    """Training produced a non-finite loss or gradient; raised before the optimizer step."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """err's message as one line of at most `limit` characters (its type's name when it has no message)."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__
