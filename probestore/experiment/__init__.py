"""The experiment file: one TOML that says what to train, what to extract, and where.

The same file drives ``probestore layers``, ``probestore train``, ``probestore
extract`` and ``probestore analyze --config``, and it is read by this one parser: a path
such as ``store = "$DATA/x.zarr"`` means the same to every command. Parsing needs
neither torch nor the data of the other stages (the reduction grammar is
:mod:`storage_schema.reductions`, plain data), so a CPU-only analysis machine reads the
file too. Its *content* (everything that changes a stored number) is written
into the store and hashed: a later run with a file that only adds (runs, epochs,
layers, gradients, concepts) grows the store, and any other change is refused instead
of mixing features of two experiments in one store (:mod:`~probestore.experiment.growth`
classifies every key). Everything is validated here, before
any data is read or any network is built, with the shared validators of
:mod:`probestore.fields` (unknown keys get a did-you-mean).

The reference of every table and key (type, default, allowed values, example) is
``docs/configuration.md``, generated from the key registries next to each table's parser
(:mod:`probestore.experiment.keys`; ``make docs``). Shape of the file (every table but
``[experiment]``, ``[dataset]``, ``[model]`` and ``[extract].layers`` is optional)::

    [experiment]
    name = "mnist-mlp-memorization"
    store = "../demo-output/mnist_mlp.zarr"     # .zarr or .h5; relative to this file's folder
    checkpoints_dir = "../demo-output/checkpoints/mnist_mlp"   # training output, one folder per run
    seed = 0                                    # default seed of everything below

    [dataset]                                   # probestore.experiment.dataset.DatasetSpec, plus path candidates
    kind = "idx"
    path = ["$PROBESTORE_DATA/fashion-mnist", "/usr/share/datasets/fashion-mnist"]
    max_samples = 6000

    [splits]                                    # fractions of extract.splits.assign_splits
    train = 0.7
    valid = 0.15
    test = 0.15
    predefined = false                          # true: keep the dataset's own train/test files

    [model]                                     # extract.models.ModelSpec without the data sizes
    name = "mlp"
    options = { depth = 4, width = 256 }
    # num_classes = 1000                        # the head's own width (a pretrained network); default:
    # class_names = "imagenet_classes.txt"      #   the dataset's class count; class_map = { "0" = 3 }
    # head = "keep"                             #   for model-output analyses; "drop": hidden layers only

    [training]                                  # probestore.experiment.training.TrainConfig
    epochs = 10
    save_epochs = [0, 1, 2, 4, 10]

    [[runs]]                                    # trained by `probestore train`
    name = "memorizing-0.5"
    corruption = 0.5                            # fraction of train labels corrupted
    mode = "shuffle"                            # or "uniform" (extract.corruption)
    training = { epochs = 20 }                  # optional per-run override of [training]
    [[runs]]                                    # imported: existing checkpoints, no training
    name = "imported"
    checkpoints = "path/to/manifest.json"       # or a folder of *.pt, or a glob

    [extract]
    layers = ["input", "relu*"]                 # names / globs; "input" = the network input
                                                # (its "auto" keeps every pixel when they fit);
                                                # a module run twice per forward (a ResNet
                                                # block's relu) only per call: "layer4.1.relu#1"
    reduction = "auto"                          # gap | gmp | flatten | random:K | project:K | auto
    reductions = { conv1 = "random:1000" }      # per-layer overrides (names or globs)
    reduction_seed = 0
    dtype = "float32"                           # or "float16" (stored features)
    batch_size = 256
    device = "auto"                             # auto | cpu | cuda
    amp = "none"                                # none | bf16 | fp16
    num_workers = 0                             # DataLoader worker processes
    max_flatten_features = 65536
    chunk_rows = "auto"                         # rows per stored chunk (resume granularity), >= 64
    compression = "fast"                        # fast (lz4/lzf) | small (zstd/gzip) | none

    [analysis]                                  # read by `probestore analyze`, ignored here

    [concepts]
    families = ["shape"]                        # colour, texture, shape (extract.concepts)
    preset = "graziani2019"                     # the authors' formulas (default), or
                                                # "probestore_v1" (docs/science.md §6); hashed
    csv = ["my_concepts.csv"]                   # user concepts: sample_id + one column each
    folders = { striped = "examples/striped" }  # binary concepts from example images
    n_jobs = 1
    # texture_levels = 32                       # GLCM grey levels, with "probestore_v1" only
    types = "auto"                              # sample types of the control task: k-means clusters of
                                                # the raw inputs, "auto" or a count (extract.sample_types)

Paths (``store``, ``checkpoints_dir``, ``dataset.path``, ``runs.checkpoints``,
``concepts.csv`` / ``folders``) expand ``~`` and environment variables
(:func:`probestore.paths.expand_path`: an unset variable is an error naming it) and are
relative to the folder of the experiment file (a config built from a dict, with no file,
keeps them relative to the current directory); ``--store`` on the command line is
relative to the current directory. ``dataset.path`` may be a list of candidates: the first that
exists is used, and when none does the error lists every path tried (an unset variable
is named) and how to get the data. There is never a fallback to other data.

What is hashed: :meth:`ExperimentConfig.content` leaves out where things live and how
fast they run (``store``, ``checkpoints_dir``, ``device``, ``num_workers``,
``chunk_rows``, ``compression``, ``n_jobs``), and records ``dataset.path`` as written (the candidates),
so moving the data or the store, or resuming on another machine, is not a "different
experiment". ``batch_size`` and ``amp`` *are* hashed: they change the floats.

Modules, one per concern: :mod:`~probestore.experiment.document` (reading the file,
command-line overrides, ``[experiment]``, the ``[analysis]`` table for ``probestore
analyze``), :mod:`~probestore.experiment.dataset`, :mod:`~probestore.experiment.training`,
:mod:`~probestore.experiment.model` (``[model]``: the head's width and classes),
:mod:`~probestore.experiment.runs`, :mod:`~probestore.experiment.extraction`,
:mod:`~probestore.experiment.concepts` and :mod:`~probestore.experiment.config` (the
whole file, and what of it is hashed). This package imports only :mod:`probestore`'s
base modules and :mod:`storage_schema`, so that both stages can use it.
"""

from probestore.experiment.analysis import ANALYSIS_KEYS
from probestore.experiment.concepts import (
    CONCEPT_FAMILY_NAMES,
    CONCEPT_PRESETS,
    ConceptOptions,
    ConceptSetSpec,
)
from probestore.experiment.config import ExperimentConfig, load_config, parse_config
from probestore.experiment.dataset import DatasetSpec, resolve_data_path
from probestore.experiment.document import apply_overrides, read_analysis
from probestore.experiment.extraction import INPUT_LAYER, ExtractOptions
from probestore.experiment.runs import CORRUPTION_MODES, RunSpec
from probestore.experiment.training import TrainConfig

__all__ = [
    "ANALYSIS_KEYS",
    "CONCEPT_FAMILY_NAMES",
    "CONCEPT_PRESETS",
    "CORRUPTION_MODES",
    "INPUT_LAYER",
    "ConceptOptions",
    "ConceptSetSpec",
    "DatasetSpec",
    "ExperimentConfig",
    "ExtractOptions",
    "RunSpec",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "read_analysis",
    "resolve_data_path",
]
