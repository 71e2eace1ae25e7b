"""Extraction throughput against a forward-only loop, side by side in one run.

What the number means: a user who only ran their model over the data would pay the
*forward-only* time (same model, same DataLoader batches, same device, under
``torch.inference_mode``). ``probestore extract`` adds the layer hooks, on-device
reductions, the host copy, the background writer (compression, chunk files, progress
markers) and the completion marker. The ratio extraction / forward-only is the price
of extraction; the goal is at most 1.10.

The two loops run alternately ``--repeats`` times on the same batches, so that load
from other processes hits both; the table reports medians and the ratio of medians.
Real data: MNIST t10k (MLP) and all 1,200 DTD textures of ``dtd10`` (shallow CNN)
from ``../shared/data``. The models are the papers' (Graziani et al. 2019): the MLP
fc(4096)-fc(4096)-fc(10) and the shallow CNN with 200-channel 5x5 convolutions, at
32x32 pixels so that a CPU run stays short. Stored layers are those the papers probe:
the MLP's hidden ReLUs (flattened: 8,192 features per sample), the CNN's conv/pool
outputs (global-average-pooled) and fc ReLUs; ``--with-input`` adds the raw-pixel
baseline. What is stored per sample drives the cost: on a CPU whose cores all run
the forward pass, copying, checking and compressing features compete for the same
cores, so ``--compression none`` and ``--dtype float16`` show what each part costs.

A second table measures the writer alone (no model): the feature rate it sustains,
which bounds extraction on a GPU box, where the forward pass leaves the CPU idle.

Usage::

    python benchmarks/bench_extract.py --out bench-output/extract.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract.device import resolve_device
from extract.loading import batch_loader
from extract.pipeline import load_experiment
from extract.runner import extract_checkpoint, plan_extraction
from probestore.experiment import parse_config
from storage_schema.store import create_store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _config(data_root: Path, case: str, args: argparse.Namespace) -> dict:
    if case == "mlp":
        dataset = {"kind": "idx", "path": str(data_root / "mnist-t10k"), "subset": "test",
                   "max_samples": args.mlp_samples}
        model = {"name": "mlp", "options": {"depth": args.mlp_depth, "width": args.mlp_width}}
        layers = ["relu*"]
    else:
        dataset = {"kind": "imagefolder", "path": str(data_root / "dtd10"),
                   "image_size": args.cnn_size, "max_samples": args.cnn_samples}
        model = {"name": "shallow_cnn", "options": {"channels": args.cnn_channels}}
        layers = ["relu1", "pool1", "relu2", "pool2", "gap", "relu3", "relu4"]
    if args.with_input:
        layers = ["input", *layers]
    return {
        "experiment": {"name": f"bench-{case}", "store": "unused.zarr"},
        "dataset": dataset,
        "model": model,
        "runs": [{"name": "bench", "checkpoints": "unused"}],
        "extract": {"layers": layers, "batch_size": args.batch_size, "device": args.device,
                    "compression": args.compression, "dtype": args.dtype},
    }


def _forward_only(model, loader, device) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            model(x.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _extract_once(exp, model, tds, plan, options, device, workdir: Path, rep: int) -> tuple[float, int]:
    path = workdir / f"rep{rep}.zarr"
    ds = exp.dataset
    store = create_store(path, dataset_name=ds.name, sample_ids=ds.sample_ids, labels=ds.labels,
                         splits=exp.splits, class_names=ds.class_names)
    n = len(ds)
    store.add_run("bench", model=exp.spec.to_dict(), architecture=exp.architecture,
                  train_labels=ds.labels, corrupted=np.zeros(n, bool),
                  corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("bench", "epoch_0000", epoch=0)
    t0 = time.perf_counter()
    stats = extract_checkpoint(store, "bench", "epoch_0000", model, tds, plan, options,
                               device=device, progress=False)
    seconds = time.perf_counter() - t0
    store.close()
    shutil.rmtree(path)
    return seconds, stats


def writer_throughput(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """How fast the background writer alone stores features: the ceiling on a GPU box.

    On a GPU the forward pass costs the CPU almost nothing, so extraction runs at the
    pace of the slower of the GPU and the writer. This feeds the writer precomputed
    batches (ReLU of Gaussian features: half zeros, like the MLP's hidden layers) as
    fast as it takes them, for each compression, with one writing thread and with the
    default pool, and reports MB/s of features stored.
    """
    from extract.writer import CheckpointWriter

    rng = np.random.default_rng(0)
    n, widths, bs = args.writer_samples, (4096, 4096, 1024, 10), args.batch_size
    batches = [{f"l{i}": np.maximum(rng.standard_normal((min(bs, n - s), w), dtype=np.float32), 0)
                for i, w in enumerate(widths)} for s in range(0, n, bs)]
    total = n * sum(widths) * 4
    out = []
    for compression in ("fast", "small", "none"):
        for threads in (1, None):
            times = []
            for rep in range(args.repeats):
                path = workdir / f"writer-{compression}-{threads}-{rep}.zarr"
                store = create_store(path, dataset_name="w", sample_ids=[str(i) for i in range(n)],
                                     labels=np.zeros(n, int), splits=np.zeros(n, np.int8), class_names=["a"])
                store.add_run("r", model={"name": "synthetic"}, architecture="synthetic",
                              train_labels=np.zeros(n, int), corrupted=np.zeros(n, bool),
                              corruption={"fraction": 0.0, "mode": "none", "seed": 0})
                store.add_checkpoint("r", "c", epoch=0)
                metas = [store.create_block("r", "c", f"l{i}", n_features=w, compression=compression)
                         for i, w in enumerate(widths)]
                t0 = time.perf_counter()
                with CheckpointWriter(store, "r", "c", metas, [m.name for m in metas],
                                      write_threads=threads) as w:
                    for k, batch in enumerate(batches):
                        w.put(k * bs, batch)
                    w.finish()
                times.append(time.perf_counter() - t0)
                stored = sum(store.stored_bytes("r", "c", m.name) for m in metas)
                store.close()
                shutil.rmtree(path)
            best = statistics.median(times)
            out.append({"compression": compression, "write_threads": threads or "auto",
                        "features_mb": total / 1e6, "stored_mb": stored / 1e6, "seconds": times,
                        "mb_per_s": total / 1e6 / best, "samples_per_s": n / best})
    return out


def bench_case(case: str, args: argparse.Namespace, workdir: Path) -> dict:
    cfg = parse_config(_config(args.data, case, args), source=f"bench {case}")
    exp = load_experiment(cfg)
    device = resolve_device(cfg.extract.device)
    model = exp.build_model(0).to(device).eval()
    plan = plan_extraction(model, exp.spec.input_shape, cfg.extract, device=device)
    tds = exp.dataset.torch_dataset()
    n = len(tds)
    for x, _ in batch_loader(tds, 0, cfg.extract.batch_size, device=device):  # warm-up, decode cache
        with torch.inference_mode():
            model(x.to(device))
    fwd, ext, loop, stats = [], [], [], None
    for rep in range(args.repeats):
        loader = batch_loader(tds, 0, cfg.extract.batch_size, device=device,
                              num_workers=cfg.extract.num_workers)
        fwd.append(_forward_only(model, loader, device))
        seconds, stats = _extract_once(exp, model, tds, plan, cfg.extract, device, workdir, rep)
        ext.append(seconds)
        loop.append(seconds - stats.setup_seconds - stats.finish_seconds)
    f, e = statistics.median(fwd), statistics.median(ext)
    stored = stats.bytes_stored
    return {
        "case": case,
        "model": exp.spec.to_dict(),
        "dataset": exp.dataset.name,
        "n_samples": n,
        "batch_size": cfg.extract.batch_size,
        "layers": plan.layers,
        "features_per_sample": plan.n_features(),
        "stored_mib": stored / 2**20,
        "forward_s": fwd,
        "extract_s": ext,
        "forward_samples_per_s": n / f,
        "extract_samples_per_s": n / e,
        "loop_s": loop,
        "fixed_s": [x - y for x, y in zip(ext, loop)],
        "ratio": e / f,
        "ratio_best": min(ext) / min(fwd),
        "ratio_loop": statistics.median(loop) / f,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--data", type=Path, default=DATA, help="folder holding mnist-t10k/ and dtd10/")
    p.add_argument("--cases", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compression", default="fast", choices=("fast", "small", "none"),
                   help="[extract] compression of the stored blocks (default fast, as extraction)")
    p.add_argument("--mlp-samples", type=int, default=6000)
    p.add_argument("--mlp-depth", type=int, default=2)
    p.add_argument("--mlp-width", type=int, default=4096)
    p.add_argument("--cnn-samples", type=int, default=1200)
    p.add_argument("--cnn-size", type=int, default=32)
    p.add_argument("--cnn-channels", type=int, default=200)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="[extract] dtype of the stored features (default float32)")
    p.add_argument("--writer-samples", type=int, default=4096,
                   help="samples of the writer-alone measurement (0: skip it)")
    p.add_argument("--with-input", action="store_true",
                   help="also store the network input (the raw-pixel probe baseline)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            results.append(bench_case(case, args, Path(tmp)))
    header = f"{'case':<5} {'samples':>7} {'feat/sample':>11} {'stored MiB':>10} " \
             f"{'forward/s':>10} {'extract/s':>10} {'ratio':>6} {'best':>6} {'fixed s':>7} {'loop':>6}"
    print(header)
    for r in results:
        print(f"{r['case']:<5} {r['n_samples']:>7} {r['features_per_sample']:>11} {r['stored_mib']:>10.1f} "
              f"{r['forward_samples_per_s']:>10.0f} {r['extract_samples_per_s']:>10.0f} "
              f"{r['ratio']:>6.2f} {r['ratio_best']:>6.2f} {statistics.median(r['fixed_s']):>7.2f} "
              f"{r['ratio_loop']:>6.2f}")
    print("ratio = median extraction time / median forward-only time (goal <= 1.10); best = ratio of\n"
          "minima; fixed s = per-checkpoint setup + completion; loop = ratio without them")
    writer = []
    if args.writer_samples > 0:
        with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
            writer = writer_throughput(args, Path(tmp))
        print(f"\nwriter alone ({args.writer_samples} samples x 9226 features, ReLU-like float32):")
        print(f"{'compression':<12} {'threads':>7} {'MB/s':>7} {'samples/s':>9} {'ratio':>6}")
        for r in writer:
            print(f"{r['compression']:<12} {r['write_threads']!s:>7} {r['mb_per_s']:>7.0f} "
                  f"{r['samples_per_s']:>9.0f} {r['features_mb'] / r['stored_mb']:>6.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.machine(), "processor": platform.processor(),
                "python": platform.python_version()}
        args.out.write_text(json.dumps({"benchmark": "extract", "meta": meta, "results": results,
                                        "writer": writer}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
