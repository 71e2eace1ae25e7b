"""A store with a planted concept direction ``U`` and the gradients TCAV reads.

Class 0's logit grows along ``U``, class 1's shrinks, class 2 is indifferent; the
``striped`` samples are shifted along ``U`` in layer ``fc``. TCAV, RCV sensitivity and
ConExp must all find that, which makes their numbers checkable by hand.
"""

from __future__ import annotations

import numpy as np

from storage_schema.concept_sets import set_extra_attrs
from storage_schema.store import create_store

GRAD = "grad_own_logit"

N, F = 240, 6
U = np.array([1.0, 0.5, -1.0, 0.0, 0.0, 0.0]) / np.sqrt(2.25)


def planted_store(path):
    """Class 0's logit grows along the concept direction U, class 1's shrinks, class 2 is indifferent."""
    rng = np.random.default_rng(0)
    labels = np.arange(N) % 3
    splits = (np.arange(N) // 3 % 2).astype(np.int8) * 2  # train / test alternating
    splits[::15] = 1  # some valid rows for the RCV
    striped = rng.random(N) < 0.25
    X = rng.standard_normal((N, F)) + 4 * striped[:, None] * U
    grads = rng.standard_normal((N, F)) * 0.3
    grads[labels == 0] += 2 * U
    grads[labels == 1] -= 2 * U
    logits = rng.standard_normal((N, 3))
    logits[:, 0] += 2 * striped
    store = create_store(path, dataset_name="toy", sample_ids=[f"s{i:03d}" for i in range(N)], labels=labels,
                         splits=splits, class_names=["zero", "one", "two"])
    store.add_target("striped", striped, "binary")
    store.add_target("stripiness", X @ U + 0.1 * rng.standard_normal(N), "continuous")
    store.add_run("r", model={"name": "m"}, architecture="m-0", train_labels=labels, corrupted=np.zeros(N, bool),
                  corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("r", "e1", epoch=1)
    store.create_block("r", "e1", "fc", n_features=F)
    store.create_block("r", "e1", "outputs", n_features=3)
    store.write_rows("r", "e1", "fc", 0, X.astype(np.float32))
    store.write_rows("r", "e1", "outputs", 0, logits.astype(np.float32))
    for b in ("fc", "outputs"):
        store.mark_block_complete("r", "e1", b)
    store.mark_checkpoint_complete("r", "e1")
    store.write_extra("r", "e1", "fc", GRAD, grads.astype(np.float32))
    set_extra_attrs(store, "r", "e1", "fc", GRAD, {"kind": "gradient", "of": "own_class_logit",
                                                   "reduction": {"kind": "none"}, "lift_scale": 1.0,
                                                   "complete": True, "rows_done": N})
    return store, dict(X=X, grads=grads, labels=labels, splits=splits, striped=striped, logits=logits)

