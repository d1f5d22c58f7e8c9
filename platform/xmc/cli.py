"""Shared plumbing of the ``jobs/`` command-line tools: config flags and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from xmc.config import ConfigError, load_config
from xmc.data.errors import DataError

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--config", required=required, help="YAML config (may include dataset/method files)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set train.epochs=3")


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return load_config(cls, args.config, args.overrides)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a job's ``main``; bad input or config ends it with one line on stderr and exit status 2."""
    try:
        code = main()
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
