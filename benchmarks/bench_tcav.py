"""TCAV with 50 random repetitions on a store: seconds, CAVs/s, and a determinism check.

What is timed is :func:`analyze.tcav.run_tcav` (reading the blocks and gradients, fitting
every CAV of a (checkpoint, layer) in one batched solve, scoring, the t-tests, RCV
sensitivity and ConExp), then the same call again to check that the table is
bit-identical, then (``--workers N``, default 2; 0 skips it) the same call on a local
Dask cluster of N single-threaded workers on 127.0.0.1, one task per (run, checkpoint,
layer): its seconds beside the in-process ones (the cluster's start is timed
separately) and whether its table is bit-identical to the in-process one.

``--store`` takes a store extracted with ``[extract] gradients = true``. Without it, a
store is extracted first (not timed in the TCAV figure, reported separately) from the
DTD demo data: the demo experiment's shallow CNN (32 channels, fc 128-64) at 32x32, the
demo's layers with ``gap``, ``--checkpoints`` seeded random-init checkpoints (the
"random network" of Graziani et al.; TCAV costs the same on trained weights), the
concept "banded" (40 train images of that class) and 51 stored random sets of 40 train
images.

Examples
--------
python benchmarks/bench_tcav.py --out bench-output/tcav.json
python benchmarks/bench_tcav.py --store demo-output/dtd_cnn.zarr --repeats 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

DTD_CANDIDATES = [os.path.expandvars("$PROBESTORE_DATA/dtd10"), "../shared/data/dtd10", "/work/shared/data/dtd10"]


def build_store(folder: Path, n_checkpoints: int, repeats: int) -> tuple[Path, float]:
    """Extract the DTD demo architecture with gradients and concept sets; return (store, seconds)."""
    import torch

    from extract.models import build_model
    from extract.pipeline import load_experiment, run_extraction
    from probestore.experiment import parse_config

    data = next((p for p in DTD_CANDIDATES if Path(p).is_dir()), None)
    if data is None:
        sys.exit("DTD data not found (set PROBESTORE_DATA or pass --store)")

    def config(runs):
        return parse_config({
            "experiment": {"name": "bench-tcav", "store": str(folder / "dtd_tcav.zarr"), "seed": 0},
            "dataset": {"kind": "imagefolder", "path": data, "name": "dtd10", "image_size": 32, "channels": 3},
            "splits": {"train": 0.7, "valid": 0.15, "test": 0.15},
            "model": {"name": "shallow_cnn", "options": {"channels": 32, "fc": [128, 64]}},
            "runs": runs,
            "extract": {"layers": ["relu1", "relu2", "gap", "relu3", "relu4"], "reduction": "auto",
                        "batch_size": 128, "gradients": True},
            "concepts": {"sets": {"banded": {"random": 40, "class": "banded"}},
                         "random_sets": {"count": repeats + 1, "size": 40}},
        }, source="bench_tcav")

    exp = load_experiment(config([{"name": "x", "checkpoints": "."}]))
    ck = folder / "checkpoints"
    ck.mkdir()
    for e in range(n_checkpoints):
        torch.save(build_model(exp.spec, seed=e).state_dict(), ck / f"epoch_{e:03d}.pt")
    t0 = time.perf_counter()
    run_extraction(config([{"name": "random-init", "checkpoints": str(ck)}]), progress=False)
    return folder / "dtd_tcav.zarr", time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="a store with gradients (default: extract the DTD demo one)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--checkpoints", type=int, default=2, help="checkpoints of the generated store")
    p.add_argument("--classes", help="comma-separated classes (default: all)")
    p.add_argument("--workers", type=int, default=2, help="local Dask workers to compare with (0: skip)")
    p.add_argument("--out", help="JSON with the numbers")
    args = p.parse_args(argv)

    from analyze.tcav import TCAVOptions, run_tcav

    tmp = None
    extract_s = None
    if args.store:
        store = Path(args.store)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_tcav_")
        store, extract_s = build_store(Path(tmp.name), args.checkpoints, args.repeats)
    classes = tuple(args.classes.split(",")) if args.classes else None
    opts = TCAVOptions(repeats=args.repeats, classes=classes)
    t0 = time.perf_counter()
    rows = run_tcav(store, opts)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = run_tcav(store, opts)
    second = time.perf_counter() - t0
    identical = json.dumps(rows, sort_keys=True, default=str) == json.dumps(again, sort_keys=True, default=str)
    dask: dict[str, object] = {}
    if args.workers > 0:
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            start_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            on_dask = run_tcav(store, opts, client=client)
            dask_s = time.perf_counter() - t0
        same = json.dumps(rows, sort_keys=True, default=str) == json.dumps(on_dask, sort_keys=True, default=str)
        dask = {"dask_workers": args.workers, "seconds_dask": round(dask_s, 3),
                "dask_cluster_start_seconds": round(start_s, 2), "dask_identical": same}
    tcav = [r for r in rows if r["method"] == "tcav"]
    blocks = {(r["run"], r["checkpoint"], r["layer"]) for r in tcav}
    concepts = {r["concept"] for r in tcav}
    n_cavs = len(blocks) * (len(concepts) + 1) * args.repeats
    result = {
        "store": str(store), "repeats": args.repeats, "blocks": len(blocks), "concepts": sorted(concepts),
        "cavs": n_cavs, "rows": len(rows), "tcav_tests": len(tcav),
        "significant": sum(bool(r["significant"]) for r in tcav),
        "seconds": round(first, 3), "seconds_rerun": round(second, 3),
        "cavs_per_s": round(n_cavs / first, 1), "rerun_identical": identical, **dask,
        "extract_seconds": None if extract_s is None else round(extract_s, 2),
        "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "machine": platform.machine(),
        "random_source": sorted({r["random_source"] for r in tcav}),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if identical and dask.get("dask_identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
