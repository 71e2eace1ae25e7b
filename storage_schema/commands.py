"""``probestore inspect`` and ``probestore validate``: look at and check a store."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect",
        help="print a readable tree of a store",
        description="Print runs, checkpoints, layers (shape, dtype, reduction, completeness, bytes on disk).",
    )
    inspect.add_argument("store", help="path to a .zarr directory or .h5 file")
    inspect.add_argument("--complete-only", action="store_true", help="hide incomplete checkpoints")
    inspect.set_defaults(func=_inspect)

    validate = subparsers.add_parser(
        "validate",
        help="check a store against the schema (exit 1 listing every violation)",
        description="Check a store against storage_schema/SCHEMA.md; exit 0 if valid, 1 with every violation listed. "
                    "Valid/test splits lacking classes present in train are printed as warnings (exit 0).",
    )
    validate.add_argument("store", help="path to a .zarr directory or .h5 file")
    validate.set_defaults(func=_validate)


def _inspect(args: argparse.Namespace) -> int:
    from storage_schema.inspect_tree import render_tree
    from storage_schema.store import open_store

    with open_store(args.store, "r") as store:
        print(render_tree(store, show_incomplete=not args.complete_only))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from storage_schema.validate import validate_store

    warnings: list[str] = []
    problems = validate_store(args.store, warnings=warnings)
    for warning in warnings:  # not violations: results from such splits would mislead
        print(f"{args.store}: warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{args.store}: {len(problems)} violation(s) of the probestore schema:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{args.store}: valid")
    return 0
