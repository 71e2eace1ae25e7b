"""Helpers shared by several test files, so that no test file imports another.

One small module per kind of thing a test needs built:

- :mod:`.stores`: stores written directly through the store API (a complete synthetic
  store for the analysis stage, a bare dataset-only store for the contract tests, raw
  Zarr array dumps).
- :mod:`.analysis`: the probe grids and analysis settings the engine tests share.
- :mod:`.tcav`: a store with a planted concept direction and its gradients.
- :mod:`.report_table`: a synthetic results table whose numbers follow closed forms.
- :mod:`.experiments`: experiment files (TOML) and the checkpoints they point at.
- :mod:`.torch_data`: torch datasets (imports torch: only tests that need torch use it).

Fixtures that many files use (the backend ``suffix``) and the test-data resolver live in
``tests/conftest.py``.
"""
