"""``probestore tcav``: concept sensitivity (TCAV, RCV sensitivity, ConExp) of a store.

Registered like the other stages' commands (``register(subparsers)``); imports nothing
heavy at module level, so ``probestore --help`` stays instant. The (run, checkpoint,
layer) tasks run where ``probestore similarity`` runs its blocks: ``--scheduler local``
(default, an embedded Dask cluster on 127.0.0.1), ``none`` / ``--workers 0``
(in-process) or a scheduler address; the table is the same in every mode.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from probestore.progress import Log

__all__ = ["register", "tcav_command"]


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def register(subparsers) -> None:
    """Add ``probestore tcav`` to the ``probestore`` parser."""
    p = subparsers.add_parser(
        "tcav",
        help="concept sensitivity from stored gradients: TCAV with its t-test, RCV sensitivity, ConExp",
        description=(
            "TCAV (Kim et al. 2018) from the store, without the network: per (run, checkpoint, layer) "
            "R CAVs of each concept against R random sets and R random-vs-random CAVs, the TCAV score of "
            "every class (fraction of its samples with a positive derivative along the CAV), a two-sided "
            "t-test, Cohen's d and significance. Also the derivative along RCV directions of continuous "
            "concepts (Graziani et al.) and ConExp of binary concepts from the stored logits. Needs a "
            "store extracted with [extract] gradients = true (ConExp needs only logits). Seeded and "
            "deterministic: the same command gives the same table, whatever --scheduler and --workers."),
    )
    p.add_argument("store", help="the store (.zarr or .h5)")
    p.add_argument("-o", "--output", metavar="PATH", help="table (.parquet; default: <store>.tcav.parquet)")
    p.add_argument("--concepts", metavar="NAMES", help="comma-separated concept sets / binary targets (default: all)")
    p.add_argument("--classes", metavar="NAMES", help="comma-separated class names (default: all)")
    p.add_argument("--layers", metavar="PATTERNS",
                   help="comma-separated layer names or globs (default: all with gradients)")
    p.add_argument("--runs", metavar="PATTERNS", help="comma-separated run names or globs (default: all)")
    p.add_argument("--checkpoints", metavar="PATTERNS",
                   help="comma-separated checkpoint names or globs (default: all)")
    p.add_argument("--repeats", type=int, default=50, metavar="R", help="CAVs per concept and null CAVs (default 50)")
    p.add_argument("--random-size", type=int, default=50, metavar="N", help="examples per random set (default 50)")
    p.add_argument("--split", default="test", help="samples scored (default: test)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of the two-sided t-test of each TCAV score (default %(default)s)")
    p.add_argument("--bonferroni", action=argparse.BooleanOptionalAction, default=True,
                   help="divide alpha by the number of TCAV tests in the table (default: on; "
                        "--no-bonferroni tests each at alpha)")
    p.add_argument("--holdout", type=float, default=1 / 3, metavar="FRACTION",
                   help="share of each CAV's examples held out for cav_heldout_accuracy (default 1/3, as Kim et al.)")
    p.add_argument("--C", type=float, default=1.0,
                   help="inverse L2 strength of the CAV classifiers (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random sets, CAV splits and classifiers (default %(default)s)")
    p.add_argument("--no-rcv", action="store_true", help="skip RCV sensitivity (off by default)")
    p.add_argument("--rcv-targets", metavar="NAMES", help="continuous targets for RCV sensitivity (default: all)")
    p.add_argument("--no-conexp", action="store_true", help="skip ConExp (off by default)")
    p.add_argument("--conexp-score", choices=("logit", "prob"), default="logit",
                   help="ConExp on the class logit or its softmax probability (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per task (default 1; see TCAVOptions)")
    r = p.add_argument_group("execution (one task per run, checkpoint and layer)")
    r.add_argument("--scheduler", metavar="ADDR", help="'local' (default), 'none' (in-process) or tcp://HOST:PORT")
    r.add_argument("--workers", type=int, metavar="N", dest="n_workers",
                   help="local workers (default: cores / --threads; 0 = in-process)")
    p.set_defaults(func=tcav_command)


def tcav_command(args: argparse.Namespace) -> int:
    from analyze.config import ExecutionSettings
    from analyze.tcav import TCAVOptions, run_tcav, write_table

    opts = TCAVOptions(
        concepts=_names(args.concepts), repeats=args.repeats, random_size=args.random_size, split=args.split,
        alpha=args.alpha, bonferroni=args.bonferroni, holdout=args.holdout, C=args.C, seed=args.seed, classes=_names(args.classes),
        layers=_names(args.layers), runs=_names(args.runs), checkpoints=_names(args.checkpoints),
        rcv=not args.no_rcv, rcv_targets=_names(args.rcv_targets), conexp=not args.no_conexp,
        conexp_score=args.conexp_score, threads=args.threads)
    overrides = {k: getattr(args, k) for k in ("scheduler", "n_workers") if getattr(args, k, None) is not None}
    if overrides.get("n_workers") == 0:
        overrides.setdefault("scheduler", "none")
    config = ExecutionSettings().replace(**overrides)
    store = Path(args.store)
    out = Path(args.output) if args.output else store.with_name(store.name + ".tcav.parquet")
    t0 = time.perf_counter()
    log = Log("tcav")  # every stderr line of the command: "tcav: ...", timestamped in a log file
    rows = run_tcav(store, opts, config=config, log=log)
    write_table(rows, out, opts)
    n_sig = sum(1 for r in rows if r["method"] == "tcav" and r.get("significant"))
    n_tests = sum(1 for r in rows if r["method"] == "tcav")
    level = (f"alpha {opts.alpha:g}/{n_tests} per test (Bonferroni)" if opts.bonferroni and n_tests > 1
             else f"alpha {opts.alpha:g}" + ("" if opts.bonferroni else ", no multiple-testing correction"))
    failed = [r for r in rows if r.get("status", "ok") != "ok"]
    print(f"{len(rows)} rows ({n_tests} TCAV tests, {n_sig} significant at {level}) in "
          f"{time.perf_counter() - t0:.1f} s -> {out}")
    if failed:
        log(f"WARNING: {len(failed)} row(s) failed (status 'failed'; e.g. {failed[0]['concept']} at "
            f"{failed[0]['run']}/{failed[0]['checkpoint']}/{failed[0]['layer']}: {failed[0]['message']})")
    return 0
