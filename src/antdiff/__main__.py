"""The `antdiff` process: Ctrl-C (SIGTERM) is one line and exit status 130 (143) from the first
instant, also while the CLI imports torch (seconds), before `cli.main` takes over."""

import os
import signal
import sys


def _interrupted(signum: int, frame: object) -> None:
    """While importing there is nothing to save: say so in one line and leave at once."""
    word = b"terminated" if signum == signal.SIGTERM else b"interrupted"
    os.write(2, b"antdiff: error: " + word + b"\n")
    os._exit(128 + signum)


def main() -> int:
    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    from antdiff.cli import main as cli_main

    for sig, handler in previous.items():
        signal.signal(sig, handler)
    try:
        return cli_main()
    except KeyboardInterrupt:  # between the imports and the command's own handling
        print("antdiff: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
