"""The ``probestore`` command: one entry point, subcommands registered by each stage.

The CLI sits on top of the stages and imports them statically (the stages never
import the CLI). Each stage has a ``commands`` module with ``register(subparsers)``;
those modules import nothing heavy at import time (torch only inside the functions
that run a command), so ``probestore --help`` and the analysis commands work on a
machine without the ``extract`` extra. Every ``ProbestoreError`` becomes one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import analyze.commands
import analyze.tcav_commands
import extract.commands
import storage_schema.commands
from probestore.errors import ProbestoreError
from storage_schema.store import probestore_version

# In the order their subcommands appear in ``probestore --help``.
COMMAND_MODULES = (storage_schema.commands, extract.commands, analyze.commands, analyze.tcav_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probestore",
        description=(
            "Offline activation store and linear-probe analysis: extract features once "
            "(probestore extract), probe them many times (probestore analyze)."
        ),
        epilog="The experiment file (train, extract, analyze --config), every table and key: "
               "docs/configuration.md. Examples: experiments/*.toml. `probestore COMMAND --help` "
               "for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"probestore {probestore_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def _line_buffered(stream) -> None:
    """Flush ``stream`` at every newline even when it is a file or a pipe.

    A batch job's stdout is a log file, where Python buffers whole blocks: lines printed
    as work finishes would show up minutes later, and be lost on SIGKILL. Progress and
    messages go to stderr through :mod:`probestore.progress`, which flushes each line;
    this covers what the commands print on stdout.
    """
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)
        except (ValueError, OSError):  # detached or closed: leave it as it is
            pass


def main(argv: Sequence[str] | None = None) -> int:
    _line_buffered(sys.stdout)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ProbestoreError as exc:
        print(f"probestore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"probestore {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
