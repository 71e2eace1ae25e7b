"""``probestore analyze`` and ``probestore report``.

Imports nothing heavy at module level (no Dask, no scikit-learn, never torch), so that
``probestore --help`` stays instant; the handlers import what they need.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probestore.errors import ConfigError


def register(subparsers) -> None:
    """Add the analysis stage's subcommands to the ``probestore`` parser."""
    _register_analyze(subparsers)
    _register_similarity(subparsers)
    _register_report(subparsers)


def _register_analyze(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="fit classifier, control and RCV probes on every stored block; write a results table",
        description=(
            "Fit linear probes on a store: per (run, checkpoint, layer) block the classifier probe on the "
            "true labels (and on the training labels of corrupted runs), the control probe, and one RCV "
            "per continuous concept target; plus the model-output accuracies per checkpoint. Blocks run "
            "in parallel on a local Dask cluster (127.0.0.1 only) or on --scheduler ADDRESS. Results go "
            "to a Parquet table (+ CSV); rerunning the same command resumes and skips finished probes."
        ),
    )
    p.add_argument("store", nargs="?", help="the store (default: [experiment].store of --config)")
    p.add_argument("--config", metavar="TOML",
                   help="experiment or analysis TOML with an [analysis] table, whose keys are the defaults of "
                        "the options below (docs/configuration.md; default: none)")
    p.add_argument("-o", "--results", metavar="PATH",
                   help="results table (.parquet; default: <store>.results.parquet beside the store)")
    g = p.add_argument_group("what to fit (comma-separated names or globs, e.g. 'fc*')")
    g.add_argument("--runs", metavar="PATTERNS", help="runs (default: all)")
    g.add_argument("--checkpoints", metavar="PATTERNS", help="checkpoints (default: all)")
    g.add_argument("--layers", metavar="PATTERNS", help="feature layers, e.g. 'fc*,input' (default: all)")
    g.add_argument("--targets", metavar="PATTERNS",
                   help="continuous concept targets for RCVs (default: all)")
    g.add_argument("--probes", metavar="KINDS",
                   help="subset of classifier,control,rcv,rcv_ols,outputs,mdl (default: all but mdl and rcv_ols)")
    g.add_argument("--retry-failed", action="store_true", default=None,
                   help="fit again the probes recorded as failed (off by default: a rerun skips them)")
    h = p.add_argument_group("probe settings")
    h.add_argument("--Cs", metavar="LIST",
                   help="classifier inverse L2 strengths, e.g. 1e-3,1e-2,0.1,1 (default 1e-4,1e-3,...,100: 7 "
                        "values); widen it when the summary warns that probes chose its edge")
    h.add_argument("--alphas", metavar="LIST",
                   help="RCV ridge penalties, e.g. 0.1,1,10,100 (default 1e-3 .. 1e5, 15 log-spaced values); "
                        "widen it when the summary warns that probes chose its edge")
    h.add_argument("--control-seed", type=int, metavar="N",
                   help="seed of the control task's random labels, one per sample type (default 0)")
    h.add_argument("--max-iter", type=int, metavar="N", help="classifier solver iterations per C (default 500)")
    h.add_argument("--mdl-C", type=float, metavar="C", dest="mdl_C", help="fixed C of the MDL probes (default 1)")
    h.add_argument("--mdl-seed", type=int, metavar="N", help="seed of the MDL transmission order (default 0)")
    h.add_argument("--save-weights", action="store_true", default=None,
                   help="also save coefficients and RCV directions to <results>.weights.zarr (off by default)")
    r = p.add_argument_group("execution")
    r.add_argument("--scheduler", metavar="ADDR",
                   help="'local' (default: embedded cluster), 'none' (in-process) or tcp://HOST:PORT")
    r.add_argument("--workers", type=int, metavar="N", dest="n_workers",
                   help="local workers (default: sized to the cores; 0 = in-process)")
    r.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="BLAS threads per worker (default: sized to the cores)")
    r.add_argument("--memory-limit", metavar="SIZE", help="per local worker, e.g. 4GB (default: auto)")
    r.add_argument("--max-block-bytes", metavar="SIZE", help="stream blocks larger than this (default 1GiB)")
    r.add_argument("--host", metavar="IP",
                   help="interface of the local cluster and dashboard (default 127.0.0.1; anything else "
                        "lets whoever reaches it run code as you)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (blocks, probes, bytes) and exit (off by default)")
    p.add_argument("--deadline", metavar="DURATION",
                   help="with --dry-run: how many workers finish by then, e.g. 8h, 90m, 1h30m (default: none)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on a terminal and no timestamped per-block lines elsewhere (off by default)")
    p.set_defaults(func=analyze_command)


def _register_similarity(subparsers) -> None:
    p = subparsers.add_parser(
        "similarity",
        help="linear CKA between stored blocks: layers, checkpoints, runs; write a table",
        description=(
            "Linear CKA (Kornblith et al. 2019) between (run, checkpoint, layer) blocks of a store over the "
            "same samples: every two layers within a checkpoint, every two checkpoints of a layer across "
            "training, and the same checkpoint and layer across runs. Blocks are streamed in row chunks "
            "(feature Gram matrices when samples outnumber features) and computed in parallel like "
            "`probestore analyze`. Writes a tidy table (.parquet, or .csv by suffix)."
        ),
    )
    p.add_argument("store", help="the store")
    p.add_argument("-o", "--out", required=True, metavar="PATH", help="CKA table (.parquet or .csv)")
    p.add_argument("--runs", metavar="PATTERNS", help="runs, names or globs (default: all)")
    p.add_argument("--checkpoints", metavar="PATTERNS", help="checkpoints, names or globs (default: all)")
    p.add_argument("--layers", metavar="PATTERNS", help="feature layers, e.g. 'fc*,conv2' (default: all)")
    p.add_argument("--pairs", default="all", metavar="KINDS",
                   help="all (default) or a comma-separated subset of within-checkpoint, across-checkpoints, "
                        "across-runs")
    p.add_argument("--samples", default="all", choices=("all", "test"),
                   help="compare over all samples (default) or the test split")
    r = p.add_argument_group("execution")
    r.add_argument("--scheduler", metavar="ADDR", help="'local' (default), 'none' (in-process) or tcp://HOST:PORT")
    r.add_argument("--workers", type=int, metavar="N", dest="n_workers",
                   help="local workers (0 = in-process; default: sized to the cores)")
    r.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="BLAS threads per worker (default: sized to the cores)")
    r.add_argument("--memory-limit", metavar="SIZE", help="per local worker, e.g. 4GB (default: auto)")
    r.add_argument("--max-block-bytes", metavar="SIZE", help="row-chunk budget per task (default 1GiB)")
    r.add_argument("--host", metavar="IP", help="interface of the local cluster (default 127.0.0.1)")
    p.set_defaults(func=similarity_command)


def similarity_command(args: argparse.Namespace) -> int:
    from analyze.config import AnalysisConfig

    keys = ("scheduler", "n_workers", "threads_per_worker", "memory_limit", "max_block_bytes", "host")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if overrides.get("n_workers") == 0:
        overrides.setdefault("scheduler", "none")
    config = AnalysisConfig().replace(**overrides)
    filters = {}
    for key in ("runs", "checkpoints", "layers"):
        value = getattr(args, key)
        filters[key] = None if value is None else [v.strip() for v in value.split(",") if v.strip()] or None
    from analyze.similarity import run_similarity

    run_similarity(args.store, args.out, pairs=args.pairs, samples=args.samples, config=config, **filters)
    return 0


def _register_report(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="figures, an HTML page and a Markdown summary from a results table",
        description="Turn a results table written by `probestore analyze` into figures (PNG), one HTML page "
                    "and a Markdown summary that states whether the papers' headline findings hold.",
    )
    p.add_argument("results", help="results table (.parquet or .csv)")
    p.add_argument("--store", help="the store it came from: dataset name, layer order, embeddings "
                                    "(default: none; names and order from the table)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--similarity", metavar="CKA_TABLE",
                   help="CKA table from `probestore similarity`, for heatmaps (default: none)")
    p.add_argument("--tcav", metavar="TCAV_TABLE",
                   help="table from `probestore tcav`: TCAV significance, RCV sensitivity, ConExp (default: none)")
    p.add_argument("--embedding", default="pca", choices=("pca", "tsne"),
                   help="method of the feature embeddings (need --store; default pca)")
    p.add_argument("--embedding-layer", metavar="LAYER", help="layer to embed (default: the last hidden layer)")
    p.add_argument("--embedding-checkpoints", metavar="NAMES",
                   help="checkpoints to embed, comma-separated (default: each run's first and last)")
    p.set_defaults(func=report_command)


def _overrides(args: argparse.Namespace) -> dict:
    keys = ("results", "runs", "checkpoints", "layers", "targets", "probes", "retry_failed", "Cs", "alphas",
            "control_seed", "max_iter", "mdl_C", "mdl_seed", "save_weights", "scheduler", "n_workers", "threads_per_worker",
            "memory_limit", "max_block_bytes", "host")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if out.get("n_workers") == 0:
        out.setdefault("scheduler", "none")
    return out


def analyze_command(args: argparse.Namespace) -> int:
    from analyze.config import load_config

    config, store_from_config = load_config(args.config, **_overrides(args))
    store = args.store or store_from_config
    if not store:
        raise ConfigError("no store given", where="probestore analyze",
                          fix="pass STORE, or --config with an [experiment] store = ... entry")
    from analyze.cost_model import parse_duration
    from analyze.engine import dry_run, run_analysis

    deadline = parse_duration(args.deadline) if args.deadline is not None else None
    if deadline is not None and not args.dry_run:
        raise ConfigError("--deadline only sizes a plan", where="probestore analyze --deadline",
                          expected="--dry-run with it", got=f"--deadline {args.deadline} without --dry-run",
                          fix=f"probestore analyze {store} --dry-run --deadline {args.deadline}")
    if args.dry_run:
        print(dry_run(store, config, deadline_s=deadline))
        return 0
    summary = run_analysis(store, config, progress=not args.no_progress)
    return 0 if summary.complete else 1


def report_command(args: argparse.Namespace) -> int:
    from analyze.report import build_report  # matplotlib: imported only by this command

    if not Path(args.results).exists():
        from probestore.errors import NotFoundError

        raise NotFoundError("no results table here", where=args.results,
                            fix="run `probestore analyze STORE -o RESULTS` first")
    path = build_report(args.results, args.store, args.out, similarity_path=args.similarity,
                        embedding_method=args.embedding, embedding_layer=args.embedding_layer,
                        embedding_checkpoints=args.embedding_checkpoints, tcav_path=args.tcav, log=print)
    print(f"report: {path}")
    return 0
