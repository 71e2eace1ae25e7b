"""``make demo``: the papers' experiments end to end on real data, timed per stage.

Runs exactly what a user would type — ``probestore train``, ``extract``, ``analyze``,
``similarity``, (``tcav``,) ``report`` — for each experiment file, so the demo exercises
the real command line.
Every stage is resumable, so re-running ``make demo`` after an interruption picks up
where it stopped; a complete re-run only recomputes the CKA and TCAV tables (seconds:
they are deterministic) and re-draws the report.

Usage: ``python experiments/demo.py [--out demo-output] [--only mlp|dtd|convnet|lm]`` (``lm``,
the language model, needs ``make demo-lm-data`` first; ``make demo`` does it)
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from probestore.experiment.document import read_experiment_table

HERE = Path(__file__).resolve().parent
EXPERIMENTS = {
    "mlp": HERE / "fashion_mlp_memorization.toml",
    "dtd": HERE / "dtd_cnn_concepts.toml",
    "convnet": HERE / "mnist_convnet_probes.toml",
    # data and model folder: `make demo-lm-data` (a prerequisite of `make demo`)
    "lm": HERE / "minilm_wordnet_pos.toml",
}
#: What `make demo` runs: all four (the language model adds about a minute on 2 cores;
#: `make demo-lm` runs it alone).
DEFAULT_EXPERIMENTS = ("mlp", "dtd", "convnet", "lm")

#: ``probestore similarity`` options per experiment (CKA heatmaps in the report). Every
#: pair kind (layers, checkpoints, runs). The MLP store holds 75 blocks of 6,000 samples:
#: CKA over its 900 test samples takes ~26 s on 2 busy cores instead of ~50 s over all;
#: the DTD store (1,200 samples, pooled features) takes ~8 s over all samples.
SIMILARITY_ARGS: dict[str, list[str]] = {
    "mlp": ["--samples", "test"],
    "dtd": [],
}

#: ``probestore tcav`` options of the experiments with a TCAV example (the concept and
#: random sets are declared in the experiment's [concepts] table; ``--repeats 20`` uses
#: its 21 stored random sets: 20 counterexample sets plus the null reference).
TCAV_ARGS: dict[str, list[str]] = {
    "dtd": ["--concepts", "banded", "--classes", "chequered", "--repeats", "20"],
}


def probestore_command() -> list[str]:
    exe = Path(sys.executable).with_name("probestore")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "probestore"]


def run_stage(label: str, args: list[str], timings: list[tuple[str, float]]) -> None:
    print(f"\n=== {label}: probestore {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([*probestore_command(), *args])
    seconds = time.perf_counter() - start
    timings.append((label, seconds))
    if result.returncode != 0:
        print(f"\nmake demo: stage '{label}' failed (exit {result.returncode}) after {seconds:.0f} s.", file=sys.stderr)
        print("Fix the problem it names and run `make demo` again: finished stages are kept.", file=sys.stderr)
        sys.exit(result.returncode)
    print(f"=== {label}: {seconds:.1f} s", flush=True)


# Extra analysis passes per experiment (CLI filters override the file's [analysis] table).
BASELINE_ARGS = {"mlp": ["--layers", "input", "--checkpoints", "epoch_0000", "--probes", "classifier,control"]}


def run_experiment(key: str, out: Path, timings: list[tuple[str, float]]) -> Path:
    config_path = EXPERIMENTS[key]
    store = str(read_experiment_table(config_path).store)  # the path `probestore extract` would use
    if not store.startswith(str(out)):
        # keep every output under --out
        store = str(out / Path(store).name)
    stem = str(Path(store).with_suffix(""))
    results = stem + "_results.parquet"
    report = out / f"report-{key}"
    common = [str(config_path)]
    run_stage(f"{key}: train", ["train", *common], timings)
    run_stage(f"{key}: extract", ["extract", *common, "--store", store], timings)
    run_stage(f"{key}: analyze", ["analyze", store, "--config", str(config_path), "-o", results], timings)
    if key in BASELINE_ARGS:
        # The raw pixels are the same at every checkpoint: probe them once (the baseline of
        # Alain & Bengio's "random features beat raw pixels" comparison) and append the
        # rows to the same, resumable results table.
        run_stage(f"{key}: analyze input", ["analyze", store, "--config", str(config_path), "-o", results,
                                            *BASELINE_ARGS[key]], timings)
    extra: list[str] = []
    if key in SIMILARITY_ARGS:
        cka = stem + "_cka.parquet"
        run_stage(f"{key}: similarity", ["similarity", store, "-o", cka, *SIMILARITY_ARGS[key]], timings)
        extra += ["--similarity", cka]
    if key in TCAV_ARGS:
        tcav = stem + "_tcav.parquet"
        run_stage(f"{key}: tcav", ["tcav", store, "-o", tcav, *TCAV_ARGS[key]], timings)
        extra += ["--tcav", tcav]
    run_stage(f"{key}: report", ["report", results, "--store", store, "-o", str(report), *extra], timings)
    return report / "index.html"


def write_index(out: Path, reports: dict[str, Path], timings: list[tuple[str, float]]) -> Path:
    titles = {
        "mlp": "Depth and memorization: MLP on Fashion-MNIST (Alain & Bengio; Graziani et al. §4-5)",
        "dtd": "Colour and texture concepts: shallow CNN on DTD (Graziani et al. §3)",
        "convnet": "Alain & Bengio's own setting: their MNIST convnet, every layer from random init "
                   "through training (Alain & Bengio §3.5, Fig. 3)",
        "lm": "A pretrained language model: part of speech of WordNet's headwords at every MiniLM layer, "
              "pretrained vs random init, with control tasks (Hewitt & Liang)",
    }
    # Keep the reports of the experiments not run this time (`--only`): the index lists all there are.
    for key in EXPERIMENTS:
        if key not in reports and (out / f"report-{key}" / "index.html").exists():
            reports[key] = out / f"report-{key}" / "index.html"
    reports = {k: reports[k] for k in EXPERIMENTS if k in reports}
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{s:.1f}</td></tr>" for k, s in timings)
    links = "".join(
        f'<li><a href="{html.escape(str(p.relative_to(out)))}">{html.escape(titles[k])}</a></li>'
        for k, p in reports.items()
    )
    page = (
        "<!doctype html><meta charset='utf-8'><title>probestore demo</title>"
        "<h1>probestore demo</h1><ul>" + links + "</ul>"
        "<h2>Timings</h2><table border=1 cellpadding=4><tr><th>stage</th><th>seconds</th></tr>" + rows + "</table>"
    )
    index = out / "index.html"
    index.write_text(page)
    return index


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    parser.add_argument("--only", choices=sorted(EXPERIMENTS), help="run one experiment")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if shutil.which("nproc"):
        print(f"make demo on {os.cpu_count()} cores; outputs in {out}/", flush=True)
    timings: list[tuple[str, float]] = []
    reports = {}
    start = time.perf_counter()
    for key in [args.only] if args.only else list(DEFAULT_EXPERIMENTS):
        reports[key] = run_experiment(key, out, timings)
    total = time.perf_counter() - start
    timings.append(("total", total))
    index = write_index(out, reports, timings)
    print("\n=== timings per stage")
    for label, seconds in timings:
        print(f"  {label:<20} {seconds:8.1f} s")
    print("\nReports:")
    for key, path in reports.items():
        print(f"  {key}: {path}  (summary: {path.with_name('report.md')})")
    print(f"Open {index} for all of them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
