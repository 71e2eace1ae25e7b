"""probestore's analysis stage: probes fitted from a stored activation dataset.

numpy, scikit-learn and Dask only: this package must never import torch, so that
analyses re-run on CPU-only machines without a 5 GB install.
"""
