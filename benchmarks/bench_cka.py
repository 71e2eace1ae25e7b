"""Linear CKA over every pair of blocks of a store: ``probestore similarity`` timed on this machine.

Runs :func:`analyze.similarity.run_similarity` (all pair kinds: layer × layer within
each checkpoint, checkpoint × checkpoint per layer, run × run) in-process and on a
local Dask cluster with 1 and 2 workers, and, as the reference a user would write, a
loop of in-memory :func:`~analyze.similarity.linear_cka` over the same pairs with every
block already read (reading not charged). Reports seconds, pairs/s and the largest
difference between the streamed and the in-memory CKA values.

``--store`` takes a store written by ``probestore extract``; without it the generated
store of ``benchmarks/bench_analyze.py`` is built (MNIST t10k through random ReLU MLPs
in numpy: 2 runs x 2 checkpoints x 3 layers of 784 / 512 / 256 features).

Examples
--------
python benchmarks/bench_cka.py --out bench-output/cka.json
python benchmarks/bench_cka.py --store demo-output/mnist_mlp.zarr --out bench-output/cka.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from analyze.config import AnalysisConfig
from analyze.similarity import linear_cka, plan_pairs, run_similarity
from storage_schema.store import open_store


def _timed(store_path: str, config: AnalysisConfig, samples: str):
    t0 = time.perf_counter()
    df = run_similarity(store_path, None, samples=samples, config=config, log=lambda m: None)
    return df, time.perf_counter() - t0


def in_memory(store_path: str, samples: str) -> tuple[dict, float, float]:
    """The reference: every block in memory, one ``linear_cka`` call per pair."""
    t0 = time.perf_counter()
    with open_store(store_path) as s:
        blocks, pairs = plan_pairs(s)
        rows = s.split_indices("test") if samples == "test" else slice(None)
        data = {b.key: np.asarray(s.read_layer(b.run, b.checkpoint, b.layer), dtype=np.float32)[rows]
                for b in blocks}
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    values = {(blocks[i].key, blocks[j].key): linear_cka(data[blocks[i].key], data[blocks[j].key]) for i, j in pairs}
    return values, time.perf_counter() - t0, read_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="a store written by `probestore extract` (default: generate one)")
    p.add_argument("--n", type=int, default=3000, help="samples of the generated store")
    p.add_argument("--samples", choices=("all", "test"), default="all")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (0 = in-process)")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_cka_"))
    try:
        if a.store:
            store_path, source = str(Path(a.store).resolve()), a.store
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, like its siblings
            from benchmarks.bench_analyze import generate_store

            store_path = str(generate_store(workdir / "generated.zarr", a.n))
            source = f"generated: MNIST t10k ({a.n} images) through random ReLU MLPs (numpy)"
        with open_store(store_path) as s:
            blocks, pairs = plan_pairs(s)
            n = s.n_samples if a.samples == "all" else int(s.split_indices("test").size)
        widths = sorted({b.n_features for b in blocks})
        print(f"store: {source}: {len(blocks)} blocks (features {widths}), {len(pairs)} pairs, {n} samples",
              flush=True)
        ref, ref_s, read_s = in_memory(store_path, a.samples)
        report = {
            "data": {"source": source, "blocks": len(blocks), "pairs": len(pairs), "n_samples": n,
                     "feature_widths": widths},
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": os.cpu_count(), "numpy": np.__version__},
            "in_memory_reference": {"seconds": ref_s, "read_seconds": read_s, "pairs_per_s": len(pairs) / ref_s},
            "runs": [],
        }
        print(f"in-memory linear_cka loop: {ref_s:.2f} s ({len(pairs) / ref_s:.1f} pairs/s; reading {read_s:.2f} s)")
        for w in (int(x) for x in a.workers.split(",")):
            config = AnalysisConfig(scheduler="none") if w == 0 else AnalysisConfig(n_workers=w, threads_per_worker=1)
            df, seconds = _timed(store_path, config, a.samples)
            got = {((r.run_a, r.checkpoint_a, r.layer_a), (r.run_b, r.checkpoint_b, r.layer_b)): r.cka
                   for r in df.itertuples()}
            diff = max(abs(got[k] - v) for k, v in ref.items())
            label = "in-process" if w == 0 else f"{w} worker(s) x 1 thread"
            report["runs"].append({"executor": label, "workers": w, "seconds": seconds,
                                   "pairs_per_s": len(pairs) / seconds, "max_abs_diff_vs_in_memory": diff})
            print(f"probestore similarity, {label}: {seconds:.2f} s ({len(pairs) / seconds:.1f} pairs/s, "
                  f"reading included); max |CKA - in-memory| = {diff:.1e}", flush=True)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(report, indent=2, default=float))
            print(f"wrote {a.out}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
