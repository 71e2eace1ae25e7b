"""probestore's extraction stage (PyTorch): models, datasets, reductions, concepts, writing.

Importing this package does not import torch; the modules that need it do.
"""
