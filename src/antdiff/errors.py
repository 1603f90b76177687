"""One exception type for bad user input: the CLI prints its message on one line and exits 2."""


class AntError(ValueError):
    """Invalid input from a user (file, flag, config); never a bug in antdiff itself."""
