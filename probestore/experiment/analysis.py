"""``[analysis]``: the keys of ``probestore analyze``'s table, documented beside the other tables.

The table is validated by :class:`analyze.config.AnalysisConfig` (its fields are the
keys; this base package cannot import the analysis stage), so this registry is only
the documentation of those fields: ``tests/test_configuration_docs.py`` checks that
both name the same keys and that each example here is accepted by
``AnalysisConfig.from_dict``. Adding a field to ``AnalysisConfig`` means adding its
entry here (see :mod:`probestore.experiment.keys`).
"""

from __future__ import annotations

from probestore.experiment.keys import Key, KeyTable

__all__ = ["ANALYSIS_KEYS"]

_PATTERNS = "a list of names or globs, or one comma-separated string"

#: ``[analysis]`` (every key optional; command-line options win over it).
ANALYSIS_KEYS = KeyTable("[analysis]", "Read by `probestore analyze --config FILE` (this file, or a TOML holding "
                         "only this table); not part of the config hash. Every key is optional and the "
                         "command-line option of the same name wins.", {
    "Cs": Key("list of floats", "Inverse L2 strengths of the classifier probes (scikit-learn's C), chosen on "
              "valid. `--Cs`.", default="1e-4, 1e-3, ..., 100 (7 values)", allowed="> 0, distinct",
              example="[0.01, 0.1, 1, 10]"),
    "alphas": Key("list of floats", "Ridge penalties of the RCVs, chosen per concept on valid. `--alphas`.",
                  default="1e-3 .. 1e5 (15 log-spaced values)", allowed="> 0, distinct", example="[0.1, 1, 10]"),
    "control_seed": Key("integer", "Seed of the control task's labels (one random label per sample type). "
                        "`--control-seed`.", default="0", allowed=">= 0", example="1"),
    "max_iter": Key("integer", "Classifier solver iterations per C. `--max-iter`.", default="500 (the solver's)",
                    allowed=">= 1", example="500"),
    "tol": Key("float", "Classifier solver tolerance.", default="1e-6 (the solver's)", allowed="> 0", example="1e-6"),
    "probes": Key("list of strings", "Which probes and analyses to run. `--probes`.",
                  default='["classifier", "control", "rcv", "outputs"]',
                  allowed='"classifier" | "control" | "rcv" | "rcv_ols" | "outputs" | "mdl"',
                  example='["classifier", "mdl"]'),
    "mdl_C": Key("float", "Fixed inverse L2 strength of the MDL probes. `--mdl-C`.", default="1.0",
                 allowed="> 0", example="0.1"),
    "mdl_seed": Key("integer", "Seed of the MDL transmission order. `--mdl-seed`.", default="0", allowed=">= 0",
                    example="2"),
    "runs": Key("list of strings", "Runs to analyze. `--runs`.", default="all", allowed=_PATTERNS,
                example='["generalizing", "memorizing-*"]'),
    "checkpoints": Key("list of strings", "Checkpoints to analyze. `--checkpoints`.", default="all",
                       allowed=_PATTERNS, example='["epoch_0000", "epoch_0010"]'),
    "layers": Key("list of strings", "Feature layers to probe. `--layers`.", default="all", allowed=_PATTERNS,
                  example='["relu*", "input"]'),
    "targets": Key("list of strings", "Continuous concept targets of the RCVs. `--targets`.", default="all",
                   allowed=_PATTERNS, example='["area", "eccentricity"]'),
    "scheduler": Key("string", "Where the blocks run: an embedded local Dask cluster, in this process, or an "
                     "existing cluster. `--scheduler`.", default='"local"',
                     allowed='"local" | "none" | "tcp://HOST:PORT"', example='"none"'),
    "n_workers": Key("integer", "Local workers (0: in this process). `--workers`.",
                     default="sized to the machine's cores", allowed=">= 0", example="2"),
    "threads_per_worker": Key("integer", "BLAS threads of each worker. `--threads-per-worker`.",
                              default="sized to the machine's cores", allowed=">= 1", example="1"),
    "memory_limit": Key("string or integer", "Memory limit of each local worker. `--memory-limit`.",
                        default='"auto" (machine memory / workers)', allowed='"auto", a size such as "4GB", bytes',
                        example='"4GB"'),
    "host": Key("string", "Interface of the local cluster and dashboard; anything but 127.0.0.1 lets whoever "
                "reaches it run code as you. `--host`.", default='"127.0.0.1"', example='"127.0.0.1"'),
    "max_block_bytes": Key("string or integer", "Blocks larger than this are streamed in row chunks. "
                           "`--max-block-bytes`.", default='"1GiB"', allowed="a size or bytes > 0",
                           example='"512MiB"'),
    "results": Key("string (path)", "The results table. `-o` / `--results`.",
                   default="`<store>.results.parquet` beside the store", example='"results/mnist.parquet"',
                   path=True),
    "save_weights": Key("boolean", "Also save probe coefficients and RCV directions to "
                        "`<results>.weights.zarr`. `--save-weights`.", default="false", example="true"),
    "retry_failed": Key("boolean", "On a rerun, fit again the probes recorded as failed. `--retry-failed`.",
                        default="false", example="true"),
})
