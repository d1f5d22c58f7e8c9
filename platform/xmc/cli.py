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
    parser.add_argument("--config", required=required, action="append", metavar="FILE.yaml",
                        help="YAML config (may include dataset/method files); repeat to merge several in "
                             "order, e.g. --config configs/datasets/reuters-21578.yaml "
                             "--config configs/methods/prime.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set train.epochs=3")


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return load_config(cls, args.config or [], args.overrides)


def config_name(args: argparse.Namespace, default: str = "run") -> str:
    """A run name from the config files' stems (``demo``; ``reuters-21578-prime`` for two files)."""
    from pathlib import Path

    return "-".join(Path(path).stem for path in args.config) if args.config else default


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
