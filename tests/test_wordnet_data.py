"""The language-model demo's data: WordNet's example sentences with the headword's part of speech.

Runs on Debian's real ``wordnet-base`` files (WordNet 3.0, fixed since 2006, so the counts
are pinned); like every real-data test it fails when they are missing unless
``PROBESTORE_ALLOW_MISSING_DATA=1`` (tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from probestore.errors import ConfigError, NotFoundError
from tests.conftest import REPO, needs_data

sys.path.insert(0, str(REPO / "experiments"))
import wordnet_pos as wn  # noqa: E402

WORDNET = Path(os.environ.get(wn.WORDNET_ENV) or wn.DEBIAN_WORDNET)
pytestmark = needs_data(WORDNET / "data.noun")


@pytest.fixture(scope="module")
def exceptions():
    return wn.read_exceptions(wn.find_wordnet())


@pytest.fixture(scope="module")
def pool():
    """Every labelled example, read once for the module (the slow part of a build)."""
    return wn.read_pool(wn.find_wordnet())


KNOWN = ("00001740-v", "00341560-v", "00003553-s")


@pytest.fixture(scope="module")
def known():
    out: dict[str, list[wn.Example]] = {}
    for e in wn.read_examples(wn.find_wordnet()):
        if e.synset in KNOWN:
            out.setdefault(e.synset, []).append(e)
    return out


def test_known_examples_are_labelled_on_the_headword_only(exceptions, known):
    breathe = known["00001740-v"]  # {breathe, take_a_breath, respire, suspire}
    assert [e.text for e in breathe] == ["I can breathe better when the air is clean", "The patient is respiring"]
    first, second = (wn.label_example(e, exceptions) for e in breathe)
    assert first["words"] == ["I", "can", "breathe", "better", "when", "the", "air", "is", "clean"]
    assert first["labels"] == [None, None, "verb", None, None, None, None, None, None]
    assert first["headword"] == "breathe" and first["id"] == "wn:00001740-v:0"
    assert second["labels"] == [None, None, None, "verb"] and second["headword"] == "respire"  # respiring
    went = wn.label_example(known["00341560-v"][0], exceptions)  # {proceed, go}: an irregular form
    assert went["text"] == "The inauguration went well" and went["labels"][2] == "verb"
    satellite = wn.label_example(known["00003553-s"][0], exceptions)  # adjective satellite
    assert satellite["words"] == ["an", "emergent", "republic"] and satellite["labels"][1] == "adjective"


def test_morphology_finds_inflections(exceptions):
    assert "run" in wn.base_forms("Running", "verb", exceptions)
    assert "go" in wn.base_forms("went", "verb", exceptions)
    assert "church" in wn.base_forms("churches", "noun", exceptions)
    assert "big" in wn.base_forms("bigger", "adjective", exceptions)
    assert wn.base_forms("quickly", "adverb", exceptions) == {"quickly"}
    phrase = wn.Example("x-v", 0, "verb", ("take_a_breath",), "take a breath now")
    assert wn.label_example(phrase, exceptions) is None  # multi-word lemmas are not matched: skipped


def test_build_is_balanced_deterministic_and_counts_what_it_skips(pool):
    records, stats = wn.draw(pool, size=400, seed=0)
    assert stats.examples == 48339 and stats.no_headword == 3862 and stats.duplicates == 95
    assert Counter(r["pos"] for r in records) == {"noun": 100, "verb": 100, "adjective": 100, "adverb": 100}
    assert sum(stats.kept_by_tier.values()) == 400 and stats.kept_by_tier["ambiguous"] == 400
    again, _ = wn.draw(pool, size=400, seed=0)
    assert again == records
    other, _ = wn.draw(pool, size=400, seed=1)
    assert other != records
    assert len({" ".join(r["words"]).lower() for r in records}) == 400  # no sentence twice
    for r in records:
        labelled = [i for i, label in enumerate(r["labels"]) if label is not None]
        assert labelled and all(r["labels"][i] == r["pos"] for i in labelled)
        assert [i for i, f in enumerate(r["log_frequency"]) if f is not None] == labelled
        assert len(r["words"]) == len(r["labels"]) == len(r["log_frequency"])


def test_log_frequency_is_the_lemmas_tagged_count(pool):
    counts = pool.counts
    assert counts["breathe"] > 0 and counts["respire"] == 0
    assert counts["make"] > counts["breathe"]
    records, _ = wn.draw(pool, size=4000, seed=0)
    for r in records[:50]:
        value = next(f for f in r["log_frequency"] if f is not None)
        assert value == pytest.approx(math.log1p(counts[r["headword"]]))


def test_cli_writes_the_jsonl(tmp_path, capsys, pool, monkeypatch):
    monkeypatch.setattr(wn, "read_pool", lambda folder: pool)  # read once for the module
    out = tmp_path / "d" / "pos.jsonl"
    assert wn.main(["-o", str(out), "--size", "40"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["words"]
    printed = capsys.readouterr().out
    assert "40 sentences (noun 10 of 10358, verb 10 of 11025, adjective 10 of 19309, adverb 10 of 3690" in printed
    assert "skipped 3862 without a findable single-word headword and 95 duplicates" in printed
    with pytest.raises(ConfigError, match="size must be an integer >= 4"):
        wn.build(wn.find_wordnet(), size=3)  # refused before the files are read


def test_missing_wordnet_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(wn.WORDNET_ENV, str(tmp_path))
    monkeypatch.setattr(wn, "DEBIAN_WORDNET", tmp_path / "absent")
    with pytest.raises(NotFoundError) as err:
        wn.find_wordnet()
    assert str(tmp_path) in str(err.value) and "apt-get install wordnet-base" in str(err.value)
    assert wn.main(["-o", str(tmp_path / "x.jsonl")]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("wordnet_pos: WordNet 3.0 data files") and "\n" not in message
    assert not (tmp_path / "x.jsonl").exists()
