"""Property-based fuzz of every parser that reads user- or stranger-supplied settings.

The promise: whatever a config file or a store's metadata holds, the parsers either
accept it or raise one of the documented :class:`ProbestoreError` subclasses (one
readable line); never a ``KeyError``, ``TypeError``, ``AttributeError`` or a crash
deep inside numpy. Inputs are *mutations of valid documents* (a value replaced, a key
deleted or added, a table replaced by a scalar) as well as arbitrary JSON, because a
random document is rejected at the first key and never reaches the deeper checks.
Plain example-based tests of the messages (did-you-mean, field names) live in
``test_extract_config.py`` and ``test_jobs.py``; this file only hunts for crashes.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyze.config import AnalysisConfig
from probestore.errors import ProbestoreError
from probestore.experiment import parse_config
from storage_schema.metadata import FIELDS, check_fields, require_fields
from storage_schema.store import ActivationStore, create_store
from tests.helpers.experiments import EXAMPLE

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# JSON / TOML-like leaves and documents
_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", "..", "../x", "/abs", "a/b", "relu*", "1e9", "-1", "nan"]),
)
_JSON = st.recursive(_LEAF, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=4),
                     max_leaves=12)
# Same without None and NaN: what a TOML file can hold (TOML has no null)
_TOML_LEAF = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                       st.text(max_size=12), st.sampled_from(["", "..", "../x", "/abs", "a/b", "*"]))
_TOML = st.recursive(_TOML_LEAF, lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=10)


def _paths(doc, prefix=()):
    """Every (path-to-container, key) pair of a nested dict/list document."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw, base, values):
    """``base`` with 1-3 random edits: replace a value, delete a key, add a key."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        spots = _paths(doc)
        if not spots:
            break
        parent_path, key = draw(st.sampled_from(spots))
        parent = _get(doc, parent_path)
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
        else:
            parent.append(draw(values))
    return doc


def _expect_only_documented(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ProbestoreError as exc:
        text = str(exc)
        assert text and "\n" not in text.strip(), text  # one line for the CLI
        return exc
    return None


# ---------------------------------------------------------------------------- experiment config

_BASE_EXPERIMENT = tomllib.loads(EXAMPLE)


@FUZZ
@given(doc=mutated(_BASE_EXPERIMENT, _TOML))
def test_experiment_config_mutations_raise_only_documented_errors(doc):
    _expect_only_documented(parse_config, doc, source="fuzz.toml")


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["experiment", "dataset", "model", "extract", "runs", "splits",
                                            "training", "concepts", "analysis", "extra"]), _TOML, max_size=6))
def test_experiment_config_random_tables_raise_only_documented_errors(doc):
    assert _expect_only_documented(parse_config, doc, source="fuzz.toml") is not None


def test_the_unmutated_example_parses():  # the fuzz base must be valid, else it tests nothing
    assert parse_config(copy.deepcopy(_BASE_EXPERIMENT), source="fuzz.toml").runs


# ---------------------------------------------------------------------------- analysis config

_ANALYSIS_KEYS = [f for f in AnalysisConfig.__dataclass_fields__ if f != "extra"]
_ANALYSIS_VALUES = st.one_of(
    _JSON, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    st.sampled_from(["local", "none", "tcp://127.0.0.1:1", "2MiB", "lots", "classifier,rcv", "fc*,input",
                     "auto", "0", "-1 GB"]),
    st.integers(-3, 10**12),
)


@FUZZ
@given(doc=st.dictionaries(st.one_of(st.sampled_from(_ANALYSIS_KEYS), st.text(max_size=10)), _ANALYSIS_VALUES,
                           max_size=5))
def test_analysis_config_raises_only_documented_errors(doc):
    try:
        cfg = AnalysisConfig.from_dict(doc)
    except ProbestoreError:
        return
    # accepted: normalised and usable
    assert all(c > 0 for c in cfg.Cs) and all(a > 0 for a in cfg.alphas)
    assert cfg.replace(results=None) == cfg.replace(results=None)
    cfg.to_dict()
    cfg.probe_settings()


# ---------------------------------------------------------------------------- store metadata

_EXAMPLE_OF = {str: "x", int: 1, float: 0.5, dict: {}, list: [], bool: True, type(None): None}


def _valid(kind: str) -> dict:
    """A minimal valid document of ``kind``, built from ``FIELDS`` (so new kinds are fuzzed too)."""
    return {key: copy.deepcopy(_EXAMPLE_OF[types[0]]) for key, (types, _required) in FIELDS[kind].items()}


def test_the_fuzz_bases_are_valid_metadata():
    for kind in FIELDS:
        assert check_fields(kind, _valid(kind), kind) == [], kind


@FUZZ
@given(kind=st.sampled_from(sorted(FIELDS)), data=st.data(), allow_extra=st.booleans())
def test_metadata_field_checks_raise_only_store_format_errors(kind, data, allow_extra):
    attrs = data.draw(st.one_of(mutated(_valid(kind), _JSON), _JSON))
    problems = check_fields(kind, attrs, f"fuzz/{kind}", allow_extra=allow_extra)
    assert all(isinstance(p, str) and p.startswith(f"fuzz/{kind}") for p in problems)
    try:
        out = require_fields(kind, attrs, f"fuzz/{kind}", allow_extra=allow_extra)
    except ProbestoreError as exc:
        assert problems and type(exc).__name__ == "StoreFormatError"
        return
    assert not problems and out is attrs


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzzstore") / "s.zarr"
    create_store(path, dataset_name="fuzz", sample_ids=[f"s{i}" for i in range(6)], labels=np.arange(6) % 2,
                 splits=np.arange(6) % 3, class_names=["a", "b"], source={"kind": "test"},
                 config={"seed": 0}).close()
    return path


@FUZZ
@given(data=st.data())
def test_opening_a_store_with_fuzzed_root_attributes(good_store: Path, data):
    meta_file = good_store / "zarr.json"
    original = meta_file.read_text()
    node = json.loads(original)
    attrs = data.draw(st.one_of(mutated(node["attributes"], _JSON),
                                st.dictionaries(st.text(max_size=8), _JSON, max_size=5)))
    try:
        meta_file.write_text(json.dumps({**node, "attributes": attrs}))
        try:
            store = ActivationStore.open(good_store, "r")
        except ProbestoreError as exc:
            assert "\n" not in str(exc).strip()
            return
        # opened: the typed views it promises hold the right types
        assert isinstance(store.dataset.name, str) and isinstance(store.dataset.n_samples, int)
        assert isinstance(store.dataset.class_names, list)
        _expect_only_documented(store.runs)
        _expect_only_documented(lambda: store.config_hash)
        store.close()
    finally:
        meta_file.write_text(original)
