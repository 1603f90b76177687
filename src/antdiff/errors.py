"""Exceptions for what a user can fix: the CLI prints the message on one line and exits 2."""


class AntError(ValueError):
    """Invalid input from a user (file, flag, config); never a bug in antdiff itself."""


class NonFiniteError(AntError):
    """A training step produced a non-finite loss or gradient (lower the learning rate)."""
