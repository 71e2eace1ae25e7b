"""A dataset fingerprint: the hash of the sample ids and labels, in order.

Features, targets and training labels are all row-aligned with the samples. If two
stores (or a store and a concept CSV) list different samples, or the same samples in a
different order, combining them silently produces wrong numbers; comparing
fingerprints makes that impossible.
"""

from __future__ import annotations

import hashlib

import numpy as np


def dataset_fingerprint(sample_ids: np.ndarray, labels: np.ndarray) -> str:
    """``"sha256:<hex>"`` of the UTF-8 sample ids (NUL-separated) and int64 labels."""
    digest = hashlib.sha256()
    for sample_id in np.asarray(sample_ids).tolist():
        digest.update(str(sample_id).encode("utf-8"))
        digest.update(b"\x00")
    digest.update(np.ascontiguousarray(np.asarray(labels, dtype="<i8")).tobytes())
    return "sha256:" + digest.hexdigest()
