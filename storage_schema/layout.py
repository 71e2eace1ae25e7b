"""Where each thing lives inside a store (both backends use the same node paths).

See SCHEMA.md §Layout. Names are validated here, at the single point where they
become paths.
"""

from __future__ import annotations

from storage_schema.names import validate_name

SAMPLES = "samples"
SAMPLE_ID = "samples/sample_id"
SAMPLE_LABEL = "samples/label"
SAMPLE_SPLIT = "samples/split"
SAMPLE_TYPE = "samples/type"  # schema 1.2, OPTIONAL: recurring input types of the control task
#: Schema 1.3 (SCHEMA.md §12), OPTIONAL, both or neither: token rows' sequence index and position.
SAMPLE_SEQUENCE = "samples/sequence"
SAMPLE_POSITION = "samples/position"
#: Values of the root ``dataset.unit`` (schema 1.3): what one row is.
UNITS = ("sequence", "token", "word")
#: The units whose rows are parts of sequences (they carry ``SAMPLE_SEQUENCE``/``SAMPLE_POSITION``).
TOKEN_UNITS = ("token", "word")
TARGETS = "targets"
RUNS = "runs"
ARCHITECTURES = "architectures"

OUTPUTS = "outputs"  # block name of the model outputs inside a checkpoint
FEATURES_ARRAY = "features"
LOGITS_ARRAY = "logits"
#: Schema 1.1 (§6.1), OPTIONAL: per-layer gradient of the own-class logit, beside ``features``.
GRAD_ARRAY = "grad_own_logit"

# Uncompressed bytes per chunk: whole-layer reads want few, large chunks; resumable
# writes want them small enough that a crash loses little. 4 MiB sits in the 1-16 MB
# range that zarr and HDF5 both handle well.
TARGET_CHUNK_BYTES = 4 * 1024 * 1024
MIN_CHUNK_ROWS = 64


def target_node(name: str) -> str:
    return f"{TARGETS}/{validate_name(name, 'target')}"


def run_node(run: str) -> str:
    return f"{RUNS}/{validate_name(run, 'run')}"


def checkpoint_node(run: str, checkpoint: str) -> str:
    return f"{run_node(run)}/checkpoints/{validate_name(checkpoint, 'checkpoint')}"


def block_node(run: str, checkpoint: str, block: str) -> str:
    """Group of one block: ``outputs`` or ``layers/<layer>``."""
    base = checkpoint_node(run, checkpoint)
    if block == OUTPUTS:
        return f"{base}/{OUTPUTS}"
    return f"{base}/layers/{validate_name(block, 'layer')}"


def block_array_node(run: str, checkpoint: str, block: str, array: str | None = None) -> str:
    if array is None:
        array = LOGITS_ARRAY if block == OUTPUTS else FEATURES_ARRAY
    return f"{block_node(run, checkpoint, block)}/{validate_name(array, 'array')}"


def indices_node(architecture: str, layer: str) -> str:
    return f"{ARCHITECTURES}/{validate_name(architecture, 'architecture')}/{validate_name(layer, 'layer')}"


def chunk_rows_for(n_features: int, itemsize: int, n_samples: int) -> int:
    """Rows per chunk so that one chunk holds about ``TARGET_CHUNK_BYTES``."""
    rows = TARGET_CHUNK_BYTES // max(1, n_features * itemsize)
    rows = max(MIN_CHUNK_ROWS, rows)
    return int(max(1, min(rows, n_samples)))
