"""probestore: the command line and the neutral base every stage uses.

The architecture lives in three top-level packages: ``extract`` (PyTorch: models,
datasets, writing activations), ``storage_schema`` (the on-disk contract only) and
``analyze`` (numpy/scikit-learn/Dask probes). This small package sits beside them:

* the base modules every stage may import (:mod:`probestore.errors`,
  :mod:`probestore.fields`, :mod:`probestore.paths`, :mod:`probestore.atomic`,
  :mod:`probestore.locking`, :mod:`probestore.selectors`), which import nothing of the
  project, so no stage depends on another through them;
* the ``probestore`` command (:mod:`probestore.cli`), which sits on top and imports the
  stages, never the other way round.

Importing this package imports nothing (no torch, no stage).
"""
