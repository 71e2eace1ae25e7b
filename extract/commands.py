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

_CONFIG_HELP = "experiment TOML file (every table and key: docs/configuration.md)"
#: Where every extraction-stage command points for the experiment file (also in each description).
_CONFIG_REFERENCE = "\n\nThe experiment file, every table and key: docs/configuration.md"


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
                    "  probestore layers --model timm:vit_tiny_patch16_224 --input-shape 3,32,32 "
                    "--option img_size=32 --option patch_size=8\n"
                    "  probestore layers --model hf:path/to/bert-folder --input-shape 16   "
                    "# a text model: 16 tokens\n"
                    "  probestore layers experiments/fashion_mlp_memorization.toml" + _CONFIG_REFERENCE)
    p.add_argument("config", nargs="?", help=_CONFIG_HELP + "; instead of --model (default: none)")
    p.add_argument("--model", help="mlp | shallow_cnn | ab_mnist_convnet | torchvision:<arch> | timm:<name> | "
                                    "hf:<folder> | factory:pkg.module:function (default: none; required without "
                                    "CONFIG)")
    p.add_argument("--input-shape", help="one sample's shape C,H,W (e.g. 1,28,28); for a text model (hf:) the "
                                         "number of tokens T (default 8)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, repeatable; VALUE is read as JSON when it parses "
                        "(depth=4, hidden=[64,32]), else as a string (default: none, the model's defaults)")
    p.add_argument("--device", default="cpu", help="device of the dry pass (default cpu)")
    p.set_defaults(func=_layers)

    p = subparsers.add_parser(
        "train", formatter_class=fmt,
        help="train the experiment's runs (generalizing / N-memorizing) and save checkpoints",
        description="For each [[runs]] entry without `checkpoints =`: corrupt the given fraction of\n"
                    "training labels, train the model and save checkpoints (epoch 0 = the random\n"
                    "network) plus a manifest into checkpoints_dir/<run>/. Runs whose manifest is\n"
                    "complete for the same inputs are skipped.\n\n"
                    "example:\n  probestore train experiments/fashion_mlp_memorization.toml --runs generalizing"
                    + _CONFIG_REFERENCE)
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("--runs", help="comma-separated run names or globs (default: all)")
    p.add_argument("--device", help="auto | cpu | cuda (default: [training] device of the file, else auto)")
    p.add_argument("--num-workers", type=int,
                   help="DataLoader workers (default: [training] num_workers of the file, else 0)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines (off by default)")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "extract", formatter_class=fmt,
        help="extract reduced layer features and logits of every checkpoint into the store",
        description="Create the store if missing (samples, splits, config, class and concept\n"
                    "targets, runs), then for every checkpoint of every run: one forward pass over\n"
                    "all samples, collecting every selected layer (reduced on the device) and the\n"
                    "logits. Resumable: rerun the same command after a crash or kill; complete\n"
                    "checkpoints are skipped and an interrupted one continues. A store written with\n"
                    "a different config is grown when the config only adds (runs, epochs, layers,\n"
                    "gradients, concepts: only what is new is extracted) and refused otherwise,\n"
                    "naming the keys, unless --overwrite. A damaged store (a chunk\n"
                    "lost or truncated in a copy): --repair re-extracts exactly the damaged\n"
                    "checkpoints. One process writes a checkpoint at a time (a lock beside the\n"
                    "store); a second extraction of the same store does the other checkpoints first\n"
                    "and then waits for the ones being written.\n\n"
                    "examples:\n"
                    "  probestore extract experiments/fashion_mlp_memorization.toml\n"
                    "  probestore extract exp.toml --shard 0/2 &  probestore extract exp.toml --shard 1/2\n"
                    "  probestore extract exp.toml --repair" + _CONFIG_REFERENCE)
    p.add_argument("config", help=_CONFIG_HELP)
    p.add_argument("--store", help="store path (.zarr or .h5), relative to the current directory "
                                    "(default: [experiment] store, relative to the file's folder)")
    p.add_argument("--runs", help="comma-separated run names or globs (default: all; give shards the same list)")
    p.add_argument("--layers", help="comma-separated layer names / globs (default: [extract] layers)")
    p.add_argument("--device", help="auto | cpu | cuda (default: [extract] device, else auto)")
    p.add_argument("--batch-size", type=int,
                   help="samples per forward pass; changes the config hash (default: [extract] batch_size, else 256)")
    p.add_argument("--num-workers", type=int,
                   help="DataLoader workers (default: [extract] num_workers, else 0)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"),
                   help="autocast of the forward pass (default: [extract] amp, else none)")
    p.add_argument("--compression", choices=("fast", "small", "none"),
                   help="fast (lz4/lzf) | small (zstd/gzip) | none: disk against CPU time; not hashed: "
                        "readers never need to know (default: [extract] compression, else fast)")
    p.add_argument("--shard", metavar="I/N",
                   help="process every N-th checkpoint starting at I (0-based) so that N jobs "
                        "fill one store concurrently (default: 0/1, every checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete and re-create a store written with another config (with --shard: "
                        "only a store of a different config, so shards agree; off by default)")
    p.add_argument("--repair", action="store_true",
                   help="read back every chunk of the store's checkpoints and re-extract exactly the "
                        "damaged ones (missing / truncated chunks, missing arrays); then go on as usual "
                        "(off by default)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the layers, reductions, checkpoints and bytes; write nothing "
                        "(off by default)")
    p.add_argument("--no-progress", action="store_true",
                   help="no per-sample progress (a bar on a terminal, a timestamped line a minute "
                        "elsewhere); the line per checkpoint remains (off by default)")
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


def _parse_shape(text: str | None, model: str = "") -> tuple[int, ...]:
    if not text and model.startswith("hf:"):
        from extract.layers import DUMMY_TOKENS

        return (DUMMY_TOKENS,)  # checked against the model once built (a vision model needs C,H,W)
    if not text:
        raise ConfigError("--input-shape is required with --model", where="--input-shape",
                          expected="C,H,W such as 1,28,28")
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError("bad --input-shape", where="--input-shape", expected="C,H,W such as 1,28,28",
                          got=repr(text)) from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ConfigError("bad --input-shape", where="--input-shape",
                          expected="3 positive integers C,H,W (an image) or 1, the tokens T (a text model)",
                          got=repr(text))
    return shape


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
        from extract.pipeline import dropped_head, load_experiment
        from extract.runner import plan_extraction
        from probestore.experiment.extraction import split_view

        exp = load_experiment(_load(args))
        spec = exp.spec
        model = exp.build_model(exp.config.seed).to(device)
        plan = _plan(exp, model, device, plan_extraction, dropped_head)
        for name, p in plan.reductions.items():
            k = f":{p.params['k']}" if "k" in p.params else ""
            layer, view = split_view(name)  # views (blocks.3=cls, blocks.3=mean) share their module's row
            text = f"{'=' if view else ''}{p.kind}{k} -> {p.n_features}"
            selected[layer] = f"{selected[layer]}; {text}" if layer in selected else text
    else:
        options = dict(_parse_option(o) for o in args.option)
        spec = ModelSpec(name=args.model, num_classes=args.num_classes,
                         input_shape=_parse_shape(args.input_shape, args.model), options=options)
        model = build_model(spec, seed=0).to(device)
        _check_input_kind(model, spec.input_shape)
    from extract.hf_models import is_text_model

    text_model = is_text_model(model)
    head = None if text_model else _find_head(model, spec.input_shape, device)
    rows = [("input", "(input)", tuple(spec.input_shape), _prod(spec.input_shape), 1)]
    for d in list_layers(model, spec.input_shape, device=device):
        note = f" (output: {d.output_note})" if d.output_note else ""
        note += _head_mark(d.name, head)
        rows.append((d.name, d.module_type + note, d.output_shape, d.n_features, d.n_calls))
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
    print(_TEXT_HEAD_NOTE if text_model else _head_note(head))
    return 0


#: A text model's head (SCHEMA.md §12): its logits, when its output has any; no layer is refused.
_TEXT_HEAD_NOTE = ('# a text model: its head is its output\'s logits (a bare encoder has none); [model] head = "drop" '
                   "stores no outputs block and refuses no layer")


def _plan(exp, model, device, plan_extraction, dropped_head):
    """The experiment's extraction plan: token-axis reductions for a text model, else image ones."""
    from extract.text_experiment import is_text, text_plan

    if is_text(exp):
        return text_plan(exp, model, device)
    return plan_extraction(model, exp.spec.input_shape, exp.config.extract, device=device,
                           head=dropped_head(exp))


def _find_head(model, input_shape, device):
    """The model's head (:func:`extract.models.find_head`), or None when none is found or the pass fails."""
    from extract.models import find_head

    try:
        return find_head(model, input_shape, device=device)
    except Exception:  # noqa: BLE001 - the listing itself runs its own pass and reports its errors
        return None


def _head_mark(name: str, head) -> str:
    if head is None:
        return ""
    if name == head.name:
        return " (head)"
    return " (after head)" if name in head.after else ""


def _head_note(head) -> str:
    """Which layers ``[model] head = "drop"`` leaves out (SCHEMA.md §4.3)."""
    if head is None:
        return ('# no head found (no nn.Linear runs in the forward pass): [model] head = "drop" would be '
                "refused; the model's outputs are stored as they are")
    refused = ", ".join([head.name, *head.after])
    return (f"# head {head.name!r} ({head.out_features} outputs, the last nn.Linear of the forward pass); "
            f'[model] head = "drop" would refuse these layers: {refused}')


def _check_input_kind(model, shape: tuple[int, ...]) -> None:
    """Token ids (one number, T) for a text model, C,H,W for every other model."""
    from extract.hf_models import is_text_model

    text = is_text_model(model)
    if text != (len(shape) == 1):
        raise ConfigError("--input-shape does not fit the model", where="--input-shape",
                          expected="T, the number of tokens (a text model)" if text
                          else "C,H,W such as 3,224,224 (not a text model)",
                          got=",".join(map(str, shape)),
                          fix="--input-shape 16" if text else "--input-shape 3,224,224")


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
    from extract.pipeline import check_head_plan, dropped_head, global_order, load_experiment
    from extract.runner import describe_plan, expected_bytes, plan_extraction

    exp = load_experiment(config)
    check_head_plan(exp)
    growth_lines = _growth_preview(exp)  # a change the real run refuses is refused here, same line
    plan = _plan(exp, exp.build_model(config.seed), "cpu", plan_extraction, dropped_head)
    order = global_order(exp, config.select_runs(runs))
    i, n = shard
    mine = [f"{r.name}/{ref.name}" for k, (r, ref) in enumerate(order) if k % n == i]
    per = expected_bytes(plan, len(exp.dataset), config.extract.dtype)
    print(f"store {config.store}: {len(exp.dataset)} samples, architecture {exp.architecture}")
    for line in growth_lines:
        print(line)
    print(f"{'block':<24} {'source shape':>14} {'reduction':>14} {'features':>8}")
    for line in describe_plan(plan):
        print(line)
    print(f"{len(mine)} of {len(order)} checkpoint(s) for shard {i}/{n}: " + ", ".join(mine))
    print(f"about {per / 2**20:.1f} MiB per checkpoint uncompressed, "
          f"{per * len(mine) / 2**20:.1f} MiB in all")
    sys.stdout.flush()
    return 0


def _growth_preview(exp) -> list[str]:
    """What the extraction would do to the store: create it, resume it, or grow it (and by what)."""
    from extract.pipeline import preview_growth

    kind, growth = preview_growth(exp)
    if kind == "create":
        return ["the store does not exist: it would be created"]
    if kind == "same":
        return ["the store records this config: complete checkpoints would be skipped, the rest extracted"]
    if not growth.added and not growth.changed:
        return ["the file leaves out things the store holds (they stay in it): nothing would be added"]
    return ["the store would be grown (only what is new is extracted):",
            *(f"  add {item}" for item in growth.added),
            *(f"  change {item}" for item in growth.changed)]
