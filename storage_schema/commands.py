"""``probestore inspect``, ``validate``, ``delete`` and ``export``: look at, check and edit a store."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from probestore.errors import ConfigError, ProbestoreError
from storage_schema.export import CSV_MAX_VALUES


def register(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect",
        help="print what a store holds: the full tree, or one line per run (--runs) or a summary (--summary)",
        description="Print runs, checkpoints, layers (shape, dtype, reduction, completeness, bytes on disk); "
                    "--runs or --summary for a short listing.",
    )
    inspect.add_argument("store", help="path to a .zarr directory or .h5 file")
    short = inspect.add_mutually_exclusive_group()
    short.add_argument("--runs", action="store_true",
                       help="one line per run: architecture, corruption, complete/total checkpoints, layers "
                            "(off by default: the full tree)")
    short.add_argument("--summary", action="store_true",
                       help="a few lines: dataset, samples, splits, classes, runs, checkpoints, layers, size, schema "
                            "(off by default: the full tree)")
    inspect.add_argument("--complete-only", action="store_true",
                         help="hide incomplete checkpoints (full tree only; off by default: they are shown)")
    inspect.set_defaults(func=_inspect)

    validate = subparsers.add_parser(
        "validate",
        help="check a store against the schema (exit 1 listing every violation)",
        description="Check a store against storage_schema/SCHEMA.md; exit 0 if valid, 1 with every violation listed. "
                    "Valid/test splits lacking classes present in train are printed as warnings (exit 0).",
    )
    validate.add_argument("store", help="path to a .zarr directory or .h5 file")
    validate.set_defaults(func=_validate)

    delete = subparsers.add_parser(
        "delete",
        help="remove runs, checkpoints or layers from a store (atomically, leaving a valid store)",
        description="Remove what each TARGET names: a run (with its checkpoints; its architecture's shared "
                    "random indices too when no run of that architecture is left), a checkpoint, or one "
                    "layer of a checkpoint. Each part is an exact name or a glob ('*/epoch_0000', "
                    "'gen/*/relu*'). Lists what goes and asks before deleting; without a terminal, --yes is "
                    "required. Refused while `probestore extract` writes the store. An HDF5 file keeps its "
                    "size (HDF5 does not return freed space; h5repack writes a compact copy).",
    )
    delete.add_argument("store", help="path to a .zarr directory or .h5 file")
    delete.add_argument("targets", nargs="+", metavar="RUN[/CHECKPOINT[/LAYER]]",
                        help="what to delete; names or globs, as `probestore inspect STORE` lists them")
    delete.add_argument("--yes", "-y", action="store_true",
                        help="delete without asking (required when stdin is not a terminal; default: ask)")
    delete.add_argument("--dry-run", action="store_true",
                        help="list what would be deleted, change nothing (off by default)")
    delete.set_defaults(func=_delete)

    export = subparsers.add_parser(
        "export",
        help="write one checkpoint's features, labels, splits and ids to a .npz or .csv file",
        description="Write the chosen layers of one checkpoint with everything needed to use them without "
                    "probestore: features per layer, labels, splits (codes and names), sample ids, class "
                    "names, targets and the run's training labels. The suffix of -o picks the format: .npz "
                    "(numpy.load(FILE, allow_pickle=False); any size) or .csv (one row per sample; small "
                    "blocks only). Incomplete blocks are refused.",
    )
    export.add_argument("store", help="path to a .zarr directory or .h5 file")
    export.add_argument("--run", required=True, help="the run (a name, or a glob matching one run)")
    export.add_argument("--checkpoint", required=True, help="the checkpoint (a name, or a glob matching one)")
    export.add_argument("--layers", default=None,
                        help="comma-separated names or globs of the layers ('outputs' for the logits); "
                             "default: every layer and the outputs")
    export.add_argument("-o", "--output", required=True, type=Path, help="FILE.npz or FILE.csv")
    export.add_argument("--max-csv-values", type=int, default=CSV_MAX_VALUES,
                        help=f"largest .csv export, in feature values (samples x features; default {CSV_MAX_VALUES:,})")
    export.set_defaults(func=_export)


def _inspect(args: argparse.Namespace) -> int:
    from storage_schema.inspect_tree import render_runs, render_summary, render_tree
    from storage_schema.store import open_store

    with open_store(args.store, "r") as store:
        if args.runs:
            print(render_runs(store))
        elif args.summary:
            print(render_summary(store))
        else:
            print(render_tree(store, show_incomplete=not args.complete_only))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from probestore.progress import format_bytes
    from storage_schema.edit import apply_delete, delete_lock, plan_delete
    from storage_schema.store import open_store

    with open_store(args.store, "r" if args.dry_run else "a") as store:
        plan = plan_delete(store, args.targets)
        verb = "deleting" if args.yes and not args.dry_run else "would delete"
        print(f"{args.store}: {verb} {len(plan.items)} item(s), {format_bytes(plan.nbytes)} on disk:")
        for item in plan.items:
            print(f"  {item.kind:<10} {item.path}  ({item.detail}, {format_bytes(item.nbytes)})")
        for arch in plan.architectures:
            print(f"  {'indices':<10} architectures/{arch}  (no run of architecture {arch!r} is left)")
        if args.dry_run:
            return 0
        if not args.yes and not _confirmed(args.store, len(plan.items)):
            print("nothing deleted")
            return 1
        with _os_errors("cannot change the store", store.path,
                        "make it writable for this user (or run as its owner) and rerun the same command; "
                        "what is already deleted stays deleted, the store stays valid"), \
                delete_lock(store.path, plan.checkpoints(store)):
            apply_delete(store, plan)
        note = "; the .h5 file keeps its size (h5repack writes a compact copy)" if store.format == "hdf5" else ""
        print(f"{args.store}: deleted {len(plan.items)} item(s), recorded in the store's history{note}")
    return 0


def _confirmed(store: str, n_items: int) -> bool:
    """Ask on a terminal; refuse without one (a script must say --yes)."""
    if not sys.stdin.isatty():
        raise ConfigError("delete asks for confirmation, but stdin is not a terminal", where="probestore delete",
                          expected="--yes (or a terminal to answer on)", got="no terminal",
                          fix="rerun with --yes to delete what is listed above, or --dry-run to only list it")
    answer = input(f"delete these {n_items} item(s) from {store}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _export(args: argparse.Namespace) -> int:
    from probestore.progress import format_bytes
    from probestore.selectors import parse_patterns
    from storage_schema.export import export
    from storage_schema.store import open_store

    limit = args.max_csv_values
    if limit < 1:
        raise ConfigError("--max-csv-values must be at least 1", where="probestore export --max-csv-values",
                          expected="a positive number of values", got=str(limit),
                          fix=f"leave it out (default {CSV_MAX_VALUES:,})")
    with open_store(args.store, "r") as store, \
            _os_errors("cannot write the export", args.output,
                       "choose a writable file path that is not a folder (-o FILE.npz) and rerun"):
        plan, out = export(store, args.run, args.checkpoint, parse_patterns(args.layers), args.output,
                           max_csv_values=limit)
        print(f"{out}: {plan.run}/{plan.checkpoint}, {store.n_samples} samples, "
              f"{len(plan.blocks)} block(s) ({', '.join(plan.blocks)}), {format_bytes(out.stat().st_size)}")
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


@contextlib.contextmanager
def _os_errors(what: str, path: Path | str, fix: str) -> Iterator[None]:
    """An OS error (permission, disk full, a folder where a file goes) as one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ProbestoreError(f"{what} ({reason})", where=str(path) + (f" ({exc.filename})" if exc.filename else ""),
                              got=f"{type(exc).__name__} errno {exc.errno}", fix=fix) from exc
