"""The command line's flags: the parser, and one flag per TrainConfig field (its help from the
field's metadata), so flags never drift from the config."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Sequence

from antdiff.config import FIELDS, TrainConfig
from antdiff.errors import AntError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.endswith("expected one argument"):  # e.g. --lr -1e-3
            message += " (a value starting with '-' goes as --flag=VALUE)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def json_object(text: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise AntError(f"--{name.replace('_', '-')} must be a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise AntError(f"--{name.replace('_', '-')} must be a JSON object, got {text!r}")
    return value


def add_config_flags(p: argparse.ArgumentParser, names: Sequence[str] = tuple(FIELDS)) -> None:
    """One flag per TrainConfig field (--batch-size, ...); unset flags keep preset/file values."""
    hints = typing.get_type_hints(TrainConfig)
    for name in names:
        f = FIELDS[name]
        flag = "--" + name.replace("_", "-")
        kind = hints[name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        text = f"{f.metadata['help']} (default {default})".replace("%", "%%")
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            conv = str if base is dict or typing.get_origin(base) is dict else base
            p.add_argument(flag, type=conv, default=None, dest=name, help=text)
