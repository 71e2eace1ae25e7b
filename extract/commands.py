"""``probestore layers``, ``probestore train`` and ``probestore extract``.

Registered by :mod:`probestore.cli`. Nothing heavy is imported here at module
level (torch in particular is imported inside the handlers), so ``probestore --help``
and the analysis commands work on a machine without the ``extract`` extra; there the
handlers fail with one line saying how to install it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from probestore.errors import ConfigError

__all__ = ["register"]

_CONFIG_HELP = "experiment TOML file (see `probestore.experiment` for its tables)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the extraction-stage subcommands to the ``probestore`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "layers", formatter_class=fmt,
        help="list the hookable layers of a model (name, type, output shape, features)",
        description="List every hookable layer of a model with its output shape and feature\n"
                    "count, from one dry forward pass on a dummy batch. Either give a model on\n"
                    "the command line, or an experiment file (its model, dataset shape, and the\n"
                    "layers / reductions it selects).\n\n"
                    "examples:\n"
                    "  probestore layers --model mlp --input-shape 1,28,28 --num-classes 10 "
                    "--option depth=4 --option width=256\n"
                    "  probestore layers --model torchvision:resnet18 --input-shape 3,64,64\n"
                    "  probestore layers experiments/mnist_mlp.toml")
    p.add_argument("config", nargs="?", help=_CONFIG_HELP + " (instead of --model)")
    p.add_argument("--model", help="mlp | shallow_cnn | ab_mnist_convnet | torchvision:<arch> | factory:pkg.module:function")
    p.add_argument("--input-shape", help="one sample's shape C,H,W (e.g. 1,28,28)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, repeatable; VALUE is read as JSON when it parses "
                        "(depth=4, hidden=[64,32]), else as a string")
    p.add_argument("--device", default="cpu", help="device of the dry pass (default cpu)")
    p.set_defaults(func=_layers)

    p = subparsers.add_parser(
        "train", formatter_class=fmt,
        help="train the experiment's runs (generalizing / N-memorizing) and save checkpoints",
        description="For each [[runs]] entry without `checkpoints =`: corrupt the given fraction of\n"
                    "training labels, train the model and save checkpoints (epoch 0 = the random\n"
                    "network) plus a manifest into checkpoints_dir/<run>/. Runs whose manifest is\n"
                    "complete for the same inputs are skipped.\n\n"
                    "example:\n  probestore train experiments/mnist_mlp.toml --runs generalizing")
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("--runs", help="comma-separated run names or globs (default: all)")
    p.add_argument("--device", help="auto | cpu | cuda (overrides [training] device)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (overrides the config)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "extract", formatter_class=fmt,
        help="extract reduced layer features and logits of every checkpoint into the store",
        description="Create the store if missing (samples, splits, config, class and concept\n"
                    "targets, runs), then for every checkpoint of every run: one forward pass over\n"
                    "all samples, collecting every selected layer (reduced on the device) and the\n"
                    "logits. Resumable: rerun the same command after a crash or kill; complete\n"
                    "checkpoints are skipped and an interrupted one continues. A store written with\n"
                    "a different config is refused unless --overwrite. A damaged store (a chunk\n"
                    "lost or truncated in a copy): --repair re-extracts exactly the damaged\n"
                    "checkpoints. One process writes a checkpoint at a time (a lock beside the\n"
                    "store); a second extraction of the same store does the other checkpoints first\n"
                    "and then waits for the ones being written.\n\n"
                    "examples:\n"
                    "  probestore extract experiments/mnist_mlp.toml\n"
                    "  probestore extract exp.toml --shard 0/2 &  probestore extract exp.toml --shard 1/2\n"
                    "  probestore extract exp.toml --repair")
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("--store", help="store path (.zarr or .h5), overrides [experiment] store")
    p.add_argument("--runs", help="comma-separated run names or globs (default: all; give shards the same list)")
    p.add_argument("--layers", help="comma-separated layer names / globs, overrides [extract] layers")
    p.add_argument("--device", help="auto | cpu | cuda, overrides [extract] device")
    p.add_argument("--batch-size", type=int, help="overrides [extract] batch_size (changes the config hash)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers, overrides [extract] num_workers")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast, overrides [extract] amp")
    p.add_argument("--compression", choices=("fast", "small", "none"),
                   help="fast (lz4/lzf, default) | small (zstd/gzip) | none: disk against CPU time; "
                        "overrides [extract] compression (not hashed: readers never need to know)")
    p.add_argument("--shard", metavar="I/N",
                   help="process every N-th checkpoint starting at I (0-based) so that N jobs "
                        "fill one store concurrently")
    p.add_argument("--overwrite", action="store_true",
                   help="delete and re-create a store written with another config (with --shard: "
                        "only a store of a different config, so shards agree)")
    p.add_argument("--repair", action="store_true",
                   help="read back every chunk of the store's checkpoints and re-extract exactly the "
                        "damaged ones (missing / truncated chunks, missing arrays); then go on as usual")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the layers, reductions, checkpoints and bytes; write nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_extract)


# --------------------------------------------------------------------------- helpers


def _require_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ConfigError("PyTorch is not installed", where=f"probestore {command}",
                          expected="the extract extra (torch, torchvision)",
                          fix="pip install 'probestore[extract]' (or `make setup`)") from None


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError("empty list", where="command line", got=repr(text),
                          expected="comma-separated names")
    return items


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError("bad --option", where="--option", expected="KEY=VALUE", got=repr(text))
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _parse_shape(text: str | None) -> tuple[int, int, int]:
    if not text:
        raise ConfigError("--input-shape is required with --model", where="--input-shape",
                          expected="C,H,W such as 1,28,28")
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError("bad --input-shape", where="--input-shape", expected="C,H,W such as 1,28,28",
                          got=repr(text)) from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError("bad --input-shape", where="--input-shape", expected="3 positive integers C,H,W",
                          got=repr(text))
    return shape[0], shape[1], shape[2]


def _load(args: argparse.Namespace, **overrides: Any):
    from probestore.experiment import load_config

    return load_config(args.config, overrides=overrides)


# --------------------------------------------------------------------------- handlers


def _layers(args: argparse.Namespace) -> int:
    _require_torch("layers")
    from extract.device import resolve_device
    from extract.layers import list_layers
    from extract.models import ModelSpec, build_model

    if (args.config is None) == (args.model is None):
        raise ConfigError("give either an experiment file or --model", where="probestore layers",
                          fix="probestore layers --model mlp --input-shape 1,28,28, "
                              "or probestore layers CONFIG.toml")
    device = resolve_device(args.device, where="--device")
    selected: dict[str, str] = {}
    if args.config is not None:
        from extract.pipeline import load_experiment
        from extract.runner import plan_extraction

        exp = load_experiment(_load(args))
        spec = exp.spec
        model = exp.build_model(exp.config.seed).to(device)
        plan = plan_extraction(model, spec.input_shape, exp.config.extract, device=device)
        for name, p in plan.reductions.items():
            k = f":{p.params['k']}" if "k" in p.params else ""
            selected[name] = f"{p.kind}{k} -> {p.n_features}"
    else:
        options = dict(_parse_option(o) for o in args.option)
        spec = ModelSpec(name=args.model, num_classes=args.num_classes,
                         input_shape=_parse_shape(args.input_shape), options=options)
        model = build_model(spec, seed=0).to(device)
    rows = [("input", "(input)", tuple(spec.input_shape), _prod(spec.input_shape), 1)]
    for d in list_layers(model, spec.input_shape, device=device):
        rows.append((d.name, d.module_type, d.output_shape, d.n_features, d.n_calls))
        if d.n_calls > 1:  # only its calls can be stored: list them by their store names
            rows += [(f"{d.name}#{k}", f"{d.module_type} (call {k})", s, _prod(s), 1)
                     for k, s in enumerate(d.call_shapes)]
    header: tuple[str, ...] = ("name", "type", "output shape", "n_features")
    if selected:
        header += ("stored (reduction -> features)",)
    table = []
    for name, typ, shape, nf, calls in rows:
        row: tuple[str, ...] = (name, typ + (f" (x{calls} per forward)" if calls > 1 else ""),
               "x".join(map(str, shape)), str(nf))
        if selected:
            row += (selected.get(name, ""),)
        table.append(row)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(f"# {spec.name} {'x'.join(map(str, spec.input_shape))} -> {spec.num_classes} classes; "
          f"'input' is the network input itself")
    print(line.format(*header).rstrip())
    for row in table:
        print(line.format(*row).rstrip())
    return 0


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _train(args: argparse.Namespace) -> int:
    _require_torch("train")
    from extract.pipeline import load_experiment, train_runs

    config = _load(args, device=args.device, num_workers=args.num_workers)
    runs = config.select_runs(_split(args.runs))
    exp = load_experiment(config)
    manifests = train_runs(exp, runs, progress=not args.quiet)
    print(f"{len(manifests)} run(s) trained or already complete in {config.checkpoints_dir}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    _require_torch("extract")
    from extract.pipeline import parse_shard, run_extraction

    shard = parse_shard(args.shard)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("bad --batch-size", where="--batch-size", expected=">= 1", got=args.batch_size)
    config = _load(args, store=args.store, device=args.device, batch_size=args.batch_size,
                   layers=_split(args.layers), num_workers=args.num_workers, amp=args.amp,
                   compression=args.compression)
    runs = _split(args.runs)
    if args.repair and args.overwrite:
        raise ConfigError("--repair and --overwrite exclude each other", where="probestore extract",
                          fix="--repair keeps the store and redoes its damaged checkpoints; "
                              "--overwrite deletes it: pass one")
    if args.dry_run:
        return _dry_run(config, runs, shard)
    summary = run_extraction(config, runs=runs, shard=shard, overwrite=args.overwrite,
                             progress=not args.no_progress, repair=args.repair)
    for line in summary.lines():
        print(line)
    return 0


def _dry_run(config, runs, shard) -> int:
    from extract.pipeline import global_order, load_experiment
    from extract.runner import describe_plan, expected_bytes, plan_extraction

    exp = load_experiment(config)
    plan = plan_extraction(exp.build_model(config.seed), exp.spec.input_shape, config.extract)
    order = global_order(exp, config.select_runs(runs))
    i, n = shard
    mine = [f"{r.name}/{ref.name}" for k, (r, ref) in enumerate(order) if k % n == i]
    per = expected_bytes(plan, len(exp.dataset), config.extract.dtype)
    print(f"store {config.store}: {len(exp.dataset)} samples, architecture {exp.architecture}")
    print(f"{'block':<24} {'source shape':>14} {'reduction':>14} {'features':>8}")
    for line in describe_plan(plan):
        print(line)
    print(f"{len(mine)} of {len(order)} checkpoint(s) for shard {i}/{n}: " + ", ".join(mine))
    print(f"about {per / 2**20:.1f} MiB per checkpoint uncompressed, "
          f"{per * len(mine) / 2**20:.1f} MiB in all")
    sys.stdout.flush()
    return 0
