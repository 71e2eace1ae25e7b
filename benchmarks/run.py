"""``make bench``: every benchmark, side by side against its baseline, figures to JSON.

Benchmarks are not tests: they measure and write numbers (``bench-output/*.json`` and a
summary ``bench-output/summary.md``) that ``BENCHMARKS.md`` reports. Each script times
probestore and the baseline a user would otherwise use (a forward-only loop, the best
scikit-learn usage) in one run, on the same data.

The analysis benchmark needs real layer features (real features are ill-conditioned and
make iterative solvers slow), so the demo's MLP store is built first when it is missing
(the demo's ``train`` and ``extract`` stages of experiments/fashion_mlp_memorization.toml).

Usage: ``python -m benchmarks.run [--out bench-output] [--only extract,probes,...]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLP_CONFIG = ROOT / "experiments" / "fashion_mlp_memorization.toml"
DEMO_STORE = ROOT / "demo-output" / "fashion_mlp.zarr"


def _probestore(*args: str) -> None:
    exe = Path(sys.executable).with_name("probestore")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "probestore"]
    subprocess.run([*cmd, *args], check=True, cwd=ROOT)


def ensure_real_store() -> Path:
    """The demo's MLP store (real Fashion-MNIST features), built if missing."""
    from storage_schema.store import open_store

    try:
        store = open_store(DEMO_STORE)
        if store.runs() and all(store.checkpoints(r) for r in store.runs()):
            return DEMO_STORE
    except Exception:  # missing or unusable: rebuild it through the real commands
        pass
    _probestore("train", str(MLP_CONFIG), "--quiet")
    _probestore("extract", str(MLP_CONFIG), "--no-progress")
    return DEMO_STORE


def benchmarks(out: Path, store: Path | None) -> dict[str, list[str]]:
    real = ["--store", str(store)] if store else []
    return {
        "extract": ["benchmarks/bench_extract.py", "--out", str(out / "extract.json")],
        "text_extract": ["benchmarks/bench_text_extract.py", "--out", str(out / "text_extract.json")],
        "probes": ["benchmarks/bench_probes.py", "--out", str(out / "probes.json")],
        "analyze": ["benchmarks/bench_analyze.py", *real, "--layers", "relu*", "--blocks", "2",
                    "--out", str(out / "analyze.json")],
        "cka": ["benchmarks/bench_cka.py", *real, "--workers", "0,1,2", "--out", str(out / "cka.json")],
        "tcav": ["benchmarks/bench_tcav.py", "--out", str(out / "tcav.json")],
        # Alain & Bengio's scale (1,000 classes, 1,000 features); --paper for N = 50,000 (issue 16)
        "paper": ["benchmarks/bench_paper_scale.py", "--sklearn-iters", "3", "--scaling",
                  "--out", str(out / "paper_scale.json")],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-output", help="folder for the JSON figures")
    parser.add_argument("--only", help="comma-separated subset of: extract, text_extract, probes, analyze, cka, tcav")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",") if args.only else None
    needs_store = wanted is None or {"analyze", "cka"} & set(wanted)
    store = ensure_real_store() if needs_store else None
    timings = {}
    for name, cmd in benchmarks(out, store).items():
        if wanted and name not in wanted:
            continue
        script = ROOT / cmd[0]
        if not script.exists():
            print(f"(skipping {name}: {cmd[0]} not present)")
            continue
        print(f"\n=== bench {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, *cmd], cwd=ROOT)
        timings[name] = {"seconds": round(time.perf_counter() - start, 1), "exit": result.returncode}
    (out / "summary.json").write_text(json.dumps(timings, indent=2))
    lines = ["# make bench summary", "", "| benchmark | seconds | exit |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['exit']} |" for k, v in timings.items()]
    lines += ["", "Figures: " + ", ".join(f"{k}.json" for k in timings)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return 0 if all(v["exit"] == 0 for v in timings.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
