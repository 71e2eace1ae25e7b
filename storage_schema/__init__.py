"""The on-disk contract between probestore's extract and analyze stages.

See ``SCHEMA.md`` beside this file for the normative specification. This package
depends on numpy, zarr, h5py and dask only: never on torch.
"""
