"""Token rows in the store (schema 1.3, SCHEMA.md §12): round trips on both backends, the
writer's and the validator's rules (leakage above all), ``inspect``, old readers, and the
analyses that partition rows (MDL blocks, inner selection splits) keeping sentences whole."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probestore.cli import main
from probestore.errors import ConfigError, DataError, NotFoundError
from storage_schema import layout
from storage_schema.store import create_store, open_store
from storage_schema.validate import validate_store

# 4 sentences of 3, 2, 4 and 3 labelled words; splits drawn by sentence
SEQ = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
POS = np.array([1, 2, 5, 1, 3, 1, 2, 3, 7, 2, 4, 6])
SPLITS = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 2, 2, 2])
TOKENIZATION = {"tokenizer": {"folder": "models/minilm", "name": "BertTokenizerFast"}, "max_length": 32,
                "truncation": True, "alignment": "first", "padding": "right, never stored"}


def token_store(path, *, seq=SEQ, pos=POS, splits=SPLITS, unit="word", features=True):
    n = len(seq)
    store = create_store(path, dataset_name="pos", sample_ids=[f"wn{s}:t{p}" for s, p in zip(seq, pos)],
                         labels=np.arange(n) % 2, splits=splits, class_names=["noun", "verb"], unit=unit,
                         sequence=seq, position=pos, tokenization=TOKENIZATION)
    if features:
        store.add_run("pretrained", model={"name": "hf:minilm", "num_classes": 2}, architecture="bert",
                      train_labels=store.labels(), corrupted=np.zeros(n, bool),
                      corruption={"fraction": 0.0, "mode": "none", "seed": 0})
        store.add_checkpoint("pretrained", "pretrained", epoch=None)
        for block, width in (("embeddings", 4), ("encoder.layer.2", 5), (layout.OUTPUTS, 2)):
            store.create_block("pretrained", "pretrained", block, n_features=width)
            store.write_rows("pretrained", "pretrained", block, 0,
                             np.random.default_rng(0).normal(size=(n, width)).astype("float32"))
            store.mark_block_complete("pretrained", "pretrained", block)
        store.mark_checkpoint_complete("pretrained", "pretrained")
    store.close()
    return path


# ---------------------------------------------------------------------------- round trips


def test_token_rows_round_trip(tmp_path, suffix):
    path = token_store(tmp_path / f"tok{suffix}")
    with open_store(path) as s:
        assert s.schema_version == (1, 3) and s.unit == "word" and s.n_sequences == 4
        assert s.has_sequences()
        np.testing.assert_array_equal(s.sequence(), SEQ)
        np.testing.assert_array_equal(s.position(), POS)
        assert s.sequence().dtype == np.int64 and s.position().dtype == np.int32
        np.testing.assert_array_equal(s.row_groups(), SEQ)
        assert s.dataset.tokenization == TOKENIZATION
        assert s.read_layer("pretrained", "pretrained", "encoder.layer.2").shape == (len(SEQ), 5)
        assert s.sample_ids()[3] == "wn1:t1"
    assert validate_store(path) == []


def test_inspect_shows_the_unit_and_sequences(tmp_path, suffix, capsys):
    path = token_store(tmp_path / f"tok{suffix}")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("rows: words of 4 sequences (splits drawn by sequence); tokenizer BertTokenizerFast models/minilm, "
            "max_length 32, truncation True, alignment first\n") in out


def test_sequence_rows_and_images_have_no_token_arrays(tmp_path, suffix):
    path = tmp_path / f"seq{suffix}"
    create_store(path, dataset_name="sst", sample_ids=["a", "b", "c"], labels=[0, 1, 0], splits=[0, 1, 2],
                 class_names=["neg", "pos"], unit="sequence", tokenization={"tokenizer": "t", "max_length": 8}).close()
    with open_store(path) as s:
        assert s.unit == "sequence" and s.n_sequences is None and not s.has_sequences()
        np.testing.assert_array_equal(s.row_groups(), [0, 1, 2])
        with pytest.raises(NotFoundError, match="its rows are sequence, not tokens or words"):
            s.sequence()
    assert validate_store(path) == []
    img = tmp_path / f"img{suffix}"
    create_store(img, dataset_name="i", sample_ids=["a", "b"], labels=[0, 1], splits=[0, 2],
                 class_names=["x", "y"]).close()
    with open_store(img) as s:
        assert s.unit is None and "unit" not in s.root_attrs["dataset"]
        with pytest.raises(NotFoundError, match="its rows are inputs"):
            s.position()


def test_an_old_reader_reads_a_token_store(tmp_path, suffix, monkeypatch):
    """SCHEMA.md §12.3: to a 1.2 reader the new nodes are a newer minor version's, ignored."""
    path = token_store(tmp_path / f"tok{suffix}")
    import storage_schema.store as store_module
    import storage_schema.validate as validate_module

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", "1.2")
    monkeypatch.setattr(validate_module, "SCHEMA_VERSION", "1.2")
    with open_store(path) as s:  # unknown dataset keys are tolerated in a newer minor version
        assert s.n_samples == len(SEQ) and s.splits().tolist() == SPLITS.tolist()
        assert s.read_logits("pretrained", "pretrained").shape == (len(SEQ), 2)
    assert validate_store(path) == []


def test_schema_section_8_token_recipe_runs_as_written(tmp_path, monkeypatch):
    import re

    from tests.test_schema_recipes import SCHEMA

    text = SCHEMA.read_text(encoding="utf-8")
    section = text[text.index("## 8. Reading a store without probestore"):text.index("## 9. ")]
    (recipe,) = [c for c in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "samples/sequence" in c]
    token_store(tmp_path / "demo-output" / "minilm_wordnet_pos.zarr")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(recipe, "SCHEMA.md §8 token recipe", "exec"), ns)
    with open_store(tmp_path / "demo-output" / "minilm_wordnet_pos.zarr") as s:
        X = s.read_layer("pretrained", "pretrained", "encoder.layer.2")
    assert ns["unit"] == "word" and ns["n_sentences"] == 4 and len(ns["per_sentence"]) == 4
    assert [len(a) for a in ns["per_sentence"]] == np.bincount(SEQ).tolist()
    np.testing.assert_array_equal(np.concatenate(ns["per_sentence"]), X)
    np.testing.assert_array_equal(ns["pos"], POS)
    assert ns["sentence_split"].tolist() == [0, 1, 0, 2]


# ---------------------------------------------------------------------------- the writer refuses


@pytest.mark.parametrize("kwargs, message", [
    ({"splits": np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 2, 2, 2])},
     "invalid token rows: samples/split: sequence 0 has rows in 2 splits (leakage), expected every row of a "
     "sequence in one split (splits drawn by sequence), got train and valid; 1 sequence(s) leak"),
    ({"seq": np.array([0, 0, 0, 2, 2, 3, 3, 3, 3, 4, 4, 4])},
     "samples/sequence: ids are not 0..n_sequences-1 with each sequence's rows together, expected 0 first and "
     "steps of 0 or 1 from row to row, got 0 then 2 at rows 2, 3"),
    ({"seq": np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 1])},
     "got 3 then 1 at rows 10, 11"),
    ({"pos": np.array([1, 2, 5, 1, 3, 1, 2, 3, 7, 2, 4, -1])},
     "samples/position: negative position, expected >= 0, got -1 at row 11"),
    ({"pos": np.array([1, 5, 2, 1, 3, 1, 2, 3, 7, 2, 4, 6])},
     "samples/position: positions do not increase within sequence 0, expected increasing positions, got 5 then 2 "
     "at rows 1, 2"),
])
def test_create_store_refuses_bad_token_rows(tmp_path, kwargs, message):
    with pytest.raises(DataError) as err:
        token_store(tmp_path / "bad.zarr", features=False, **kwargs)
    assert message in str(err.value)
    assert "fix: number sequences 0..n_sequences-1" in str(err.value)
    assert not (tmp_path / "bad.zarr").exists()


def test_create_store_refuses_half_or_mislabelled_token_rows(tmp_path):
    common = dict(dataset_name="t", sample_ids=["a", "b"], labels=[0, 1], splits=[0, 0], class_names=["x", "y"])
    with pytest.raises(DataError, match=r"token rows need both sequence and position.*got only sequence="):
        create_store(tmp_path / "a.zarr", sequence=[0, 0], **common)
    with pytest.raises(DataError, match=r"word rows need their sequence and position"):
        create_store(tmp_path / "b.zarr", unit="word", **common)
    with pytest.raises(DataError, match=r"rows of unit 'sequence' have no sequence and position"):
        create_store(tmp_path / "c.zarr", unit="sequence", sequence=[0, 0], position=[0, 1], **common)
    with pytest.raises(ConfigError, match=r"unknown row unit.*got 'tokens'.*did you mean 'token'"):
        create_store(tmp_path / "d.zarr", unit="tokens", sequence=[0, 0], position=[0, 1], **common)
    with create_store(tmp_path / "e.zarr", sequence=[0, 0], position=[0, 1], **common) as s:
        assert s.unit == "token"  # the default unit of rows with a sequence


# ---------------------------------------------------------------------------- the validator lists


def _edit(path, fn):
    with open_store(path, "a") as s:
        fn(s.backend)


def test_validate_reports_a_leaked_sequence(tmp_path, suffix):
    path = token_store(tmp_path / f"tok{suffix}")
    _edit(path, lambda b: b.write(layout.SAMPLE_SPLIT, np.array([0, 0, 0, 1, 1, 0, 0, 2, 2, 2, 2, 2], "int8")))
    assert validate_store(path) == [
        "samples/split: sequence 2 has rows in 2 splits (leakage), expected every row of a sequence in one split "
        "(splits drawn by sequence), got train and test; 1 sequence(s) leak"]
    assert main(["validate", str(path)]) == 1


def test_validate_reports_a_missing_position_array(tmp_path, suffix):
    path = token_store(tmp_path / f"tok{suffix}")
    _edit(path, lambda b: b.delete(layout.SAMPLE_POSITION))
    assert validate_store(path) == [
        "samples/position: missing, expected samples/sequence and samples/position together (SCHEMA.md §12), "
        "got only samples/sequence"]


def test_validate_reports_token_rows_without_their_unit(tmp_path, suffix):
    path = token_store(tmp_path / f"tok{suffix}")

    def drop_unit(b):
        attrs = b.get_attrs("")
        b.update_attrs("", {"dataset": {k: v for k, v in attrs["dataset"].items() if k != "unit"}})

    _edit(path, drop_unit)
    assert validate_store(path) == [
        "/: dataset.unit, expected one of ('token', 'word') for rows with samples/sequence, got None"]


def test_validate_reports_a_word_unit_without_arrays_and_a_wrong_count(tmp_path, suffix):
    path = token_store(tmp_path / f"tok{suffix}")

    def recount(b):
        attrs = b.get_attrs("")
        b.update_attrs("", {"dataset": {**attrs["dataset"], "n_sequences": 7}})

    _edit(path, recount)
    assert validate_store(path) == ["/: dataset.n_sequences, expected 4 (1 + the largest sequence id), got 7"]

    def drop_both(b):
        b.delete(layout.SAMPLE_POSITION)
        b.delete(layout.SAMPLE_SEQUENCE)

    _edit(path, drop_both)
    assert validate_store(path) == [
        "samples: word rows without samples/sequence and samples/position, expected both arrays "
        "(dataset.unit 'word'), got neither",
        "/: dataset.n_sequences without token rows, expected it only beside samples/sequence, got 7"]


def test_validate_reports_unordered_rows_and_an_old_version(tmp_path, suffix):
    path = token_store(tmp_path / f"tok{suffix}")
    _edit(path, lambda b: b.write(layout.SAMPLE_SEQUENCE, np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 1])))
    _edit(path, lambda b: b.update_attrs("", {"schema_version": "1.2"}))
    problems = validate_store(path)
    assert problems[0] == "/: schema_version '1.2' with samples/sequence, expected '1.3' (SCHEMA.md §2), got an " \
                          "older version"
    assert any(p.startswith("samples/sequence: ids are not 0..n_sequences-1") and p.endswith("got 3 then 1 at rows "
                                                                                             "10, 11")
               for p in problems)


# ---------------------------------------------------------------------------- analyses keep sentences whole


def sentence_problem(n_seq=80, per=8, F=48, seed=0):
    """Tokens that carry only their sentence: a random vector and a random label per sentence.

    Nothing generalizes to an unseen sentence, so an honest online code cannot compress
    the labels; one that sends a sentence's tokens in two blocks compresses them a lot.
    """
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_seq), per)
    X = 3.0 * rng.normal(size=(n_seq, F))[groups] + 0.1 * rng.normal(size=(n_seq * per, F))
    y = rng.integers(0, 4, n_seq)[groups]
    return X, y, groups


def test_mdl_blocks_never_split_a_sentence():
    from analyze.mdl import _group_blocks, block_ends, online_codelength

    X, y, groups = sentence_problem()
    order, ends = _group_blocks(groups, block_ends(len(y)), seed=0)
    assert sorted(order.tolist()) == list(range(len(y)))
    ordered = groups[order]
    starts = np.r_[0, ends[:-1]]
    for a, b in zip(starts, ends):  # no sentence on both sides of any boundary
        assert not set(ordered[a:b]) & set(ordered[b:])
    honest = online_codelength(X, {"y": y}, n_classes=4, C=1.0, groups=groups)["y"]
    leaky = online_codelength(X, {"y": y}, n_classes=4, C=1.0)["y"]
    # by sentence nothing carries over; by row the tokens of a sentence teach each other its label
    assert honest.compression < 1.0 < 1.5 < leaky.compression


def test_inner_selection_split_holds_out_whole_sentences():
    from analyze.solvers.logistic import inner_split

    _, y, groups = sentence_problem()
    held = inner_split(y, 0.2, seed=0, groups=groups)
    assert not set(groups[held]) & set(groups[~held])
    assert 0.18 <= held.mean() <= 0.3
    np.testing.assert_array_equal(held, inner_split(y, 0.2, seed=0, groups=groups))  # seeded


def test_the_engine_codes_token_rows_by_sentence(tmp_path, suffix):
    from analyze.config import AnalysisConfig
    from analyze.engine import run_analysis
    from analyze.mdl import online_codelength
    from analyze.results import read_table

    X, y, groups = sentence_problem(n_seq=60, per=5)
    splits = np.where(groups % 5 == 4, 2, np.where(groups % 5 == 3, 1, 0))
    pos = np.tile(np.arange(1, 6), 60)
    path = tmp_path / f"tok{suffix}"
    s = create_store(path, dataset_name="t", sample_ids=[f"{g}:t{p}" for g, p in zip(groups, pos)], labels=y,
                     splits=splits, class_names=list("abcd"), unit="token", sequence=groups, position=pos)
    s.add_run("r", model={"name": "m"}, architecture="a", train_labels=y, corrupted=np.zeros(len(y), bool),
              corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    s.add_checkpoint("r", "c", epoch=0)
    for block, values in (("l", X.astype("float32")), (layout.OUTPUTS, np.eye(4, dtype="float32")[y])):
        s.create_block("r", "c", block, n_features=values.shape[1])
        s.write_rows("r", "c", block, 0, values)
        s.mark_block_complete("r", "c", block)
    s.mark_checkpoint_complete("r", "c")
    s.close()
    cfg = AnalysisConfig(scheduler="none", Cs=(0.1, 1.0), probes=("mdl",), mdl_C=1.0,
                         results=str(tmp_path / "r.parquet"))
    df = read_table(run_analysis(path, cfg, progress=False, log=lambda m: None).results)
    row = df[(df["probe"] == "mdl") & (df["layer"] == "l")].iloc[0]
    train = splits == 0
    want = online_codelength(X[train].astype("float32"), {"y": y[train]}, n_classes=4, C=1.0,
                             groups=groups[train])["y"]
    assert row["status"] == "ok"
    assert row["mdl_compression"] == pytest.approx(want.compression, rel=1e-9)
    assert row["mdl_compression"] < 1.0


def test_tcav_refuses_token_rows(tmp_path, capsys):
    path = token_store(tmp_path / "tok.zarr")
    assert main(["tcav", str(path), "-o", str(tmp_path / "t.parquet"), "--concepts", "x", "--classes", "noun"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probestore tcav: error: TCAV is not defined on token or word rows") and "\n" not in err
    assert "got word rows of 4 sequences" in err and not (tmp_path / "t.parquet").exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=12), st.data())
def test_token_rule_accepts_every_layout_by_sentence_and_finds_any_leak(lengths, data):
    """Any sentences of any lengths with increasing positions and a split per sentence pass;
    moving one row of a multi-row sentence to another split is always reported, naming it."""
    from storage_schema.store import token_row_problem

    seq = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.concatenate([np.sort(data.draw(st.lists(st.integers(0, 60), min_size=k, max_size=k, unique=True)))
                          for k in lengths])
    sentence_split = np.array(data.draw(st.lists(st.integers(0, 2), min_size=len(lengths), max_size=len(lengths))))
    splits = sentence_split[seq]
    assert token_row_problem(seq, pos, splits) is None
    multi = [s for s, k in enumerate(lengths) if k > 1]
    if multi:
        s = data.draw(st.sampled_from(multi))
        row = data.draw(st.sampled_from(np.flatnonzero(seq == s).tolist()))
        leaked = splits.copy()
        leaked[row] = (leaked[row] + data.draw(st.integers(1, 2))) % 3
        problem = token_row_problem(seq, pos, leaked)
        assert problem is not None and problem.startswith(f"samples/split: sequence {s} has rows in 2 splits")
