"""Part-of-speech data from WordNet's example sentences (the language-model demo's data).

WordNet 3.0 glosses hold about 33,000 quoted example sentences, each written for one
sense (synset) whose part of speech is known: ``"the dog barked all night"`` illustrates
a noun, ``"the dog barked"`` from a verb synset would illustrate ``bark`` as a verb. The
word the example illustrates, the *headword*, is therefore labelled with its part of
speech in context; many headwords take several parts of speech in different examples
("a quick run" / "run to the store"), so a probe must read the context, not only the
word. This module turns Debian's ``wordnet-base`` files into a JSONL file of word-level
labelled sentences for ``probestore`` (torch-free, standard library and numpy only):

* one line per example sentence: its words (pre-split: letters and digits with inner
  hyphens or apostrophes form a word, every other non-space character is a word of its
  own), a label on the headword occurrence(s) only (``noun``, ``verb``, ``adjective``,
  ``adverb``; WordNet's adjective satellites are adjectives) and ``null`` elsewhere;
* the headword is a single-word lemma of the example's synset found in the sentence
  under WordNet's own morphology (the ``<pos>.exc`` exception lists, then the suffix
  rules of WordNet's ``morphy``, with doubled consonants undone: "running" -> "run").
  Multi-word lemmas ("take_a_breath") are not matched: a part of speech of a phrase is
  not a word's. Examples whose headword cannot be found are skipped and counted;
* ``headword``: the lemma the label belongs to. The word type of Hewitt & Liang's
  control task is the lower-cased word itself (``probestore extract`` makes it from
  ``words``), so "run" and "runs" are two types, as in their paper;
* ``log_frequency``: a continuous property of the headword for an RCV, ``ln(1 + c)``
  where ``c`` is the lemma's count of sense-tagged occurrences in WordNet's
  ``cntlist.rev`` (SemCor and the other tagged texts; all senses and parts of speech
  summed); ``null`` on unlabelled words. Most WordNet lemmas were never tagged (c = 0),
  so the property has a mass at 0 and a long tail: frequent words ("make", "good") are
  the ones whose representations are known to differ most.

The sentences are deduplicated (the same text under two synsets is kept once: it would
otherwise sit in two splits with two labels) and balanced deterministically: each part of
speech contributes the same number of sentences (``size / 4``, or all it has), drawn with
``numpy.random.default_rng(seed)``. The draw prefers *ambiguous* headwords: first
sentences whose headword takes several parts of speech among all examples ("break" is a
verb 65 times and a noun 11 times), then sentences whose headword recurs, then the rest.
Drawn uniformly, 4,000 sentences would hold ~3,300 word types, few seen twice: Hewitt &
Liang's control task (one random label per type) needs types that recur between train
and test, and a part-of-speech probe is only interesting where the word alone does not
give the answer. The report says which tiers the sentences came from.

Usage: ``python experiments/wordnet_pos.py -o demo-output/data/wordnet_pos.jsonl
[--size 4000] [--seed 0]``. WordNet is looked for in ``$PROBESTORE_WORDNET``, then
``/usr/share/wordnet`` (Debian: ``apt-get install wordnet-base``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probestore.atomic import atomic_write
from probestore.errors import ConfigError, NotFoundError

#: Environment variable naming a folder with WordNet's ``data.*`` files.
WORDNET_ENV = "PROBESTORE_WORDNET"
#: Where Debian's ``wordnet-base`` package installs WordNet 3.0.
DEBIAN_WORDNET = Path("/usr/share/wordnet")
#: File suffix -> part-of-speech class (WordNet's ss_type letters in the data lines).
FILES = ("noun", "verb", "adj", "adv")
POS_CLASSES = ("noun", "verb", "adjective", "adverb")
SS_TYPE = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
#: WordNet's morphy suffix rules (``morph.c``), per part of speech: (inflected ending, base ending).
SUFFIX_RULES = {
    "noun": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
             ("men", "man"), ("ies", "y")),
    "verb": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
             ("ing", "")),
    "adjective": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "adverb": (),
}
EXC_FILE = {"noun": "noun.exc", "verb": "verb.exc", "adjective": "adj.exc", "adverb": "adv.exc"}
WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
EXAMPLE_RE = re.compile(r'"([^"]+)"')
DEFAULT_SIZE = 4000


@dataclass(frozen=True)
class Example:
    """One quoted example sentence of a synset, before its headword is looked for."""

    synset: str          # "<offset>-<ss_type>", e.g. "01926311-v"
    index: int           # the example's place in its gloss (0, 1, ...)
    pos: str             # one of POS_CLASSES
    lemmas: tuple[str, ...]
    text: str


@dataclass
class BuildStats:
    """What the builder kept and why it dropped the rest (printed and written beside the JSONL)."""

    examples: int = 0
    no_headword: int = 0
    duplicates: int = 0
    kept_by_pos: dict[str, int] = field(default_factory=dict)
    available_by_pos: dict[str, int] = field(default_factory=dict)
    #: Kept sentences per tier: "ambiguous" (headword with several parts of speech), "recurring", "other".
    kept_by_tier: dict[str, int] = field(default_factory=dict)


TIERS = ("ambiguous", "recurring", "other")


def _tiers(pool: list[dict], headword_pos: dict[str, Counter]) -> np.ndarray:
    """0 for an ambiguous headword, 1 for a recurring one, 2 otherwise (see the module docstring)."""
    return np.array([0 if len(headword_pos[r["headword"]]) > 1 else 1 if sum(headword_pos[r["headword"]].values()) > 1
                     else 2 for r in pool], dtype=np.int64)


def find_wordnet() -> Path:
    """The WordNet folder: ``$PROBESTORE_WORDNET``, else Debian's; an error naming both otherwise."""
    tried = []
    env = os.environ.get(WORDNET_ENV)
    for folder in ([Path(env)] if env else []) + [DEBIAN_WORDNET]:
        tried.append(str(folder))
        if all((folder / f"data.{name}").is_file() for name in FILES):
            return folder
    raise NotFoundError(
        "WordNet 3.0 data files (data.noun, data.verb, data.adj, data.adv) not found",
        where=", ".join(tried) + (f" (set ${WORDNET_ENV} to another folder)" if not env else ""),
        fix=f"install Debian's WordNet: `apt-get install wordnet-base` (as root; `make demo-lm` does it), "
            f"or set {WORDNET_ENV} to a folder holding WordNet 3.0's data.* files",
    )


def read_examples(folder: Path) -> Iterator[Example]:
    """Every quoted example of every synset, in file order (noun, verb, adjective, adverb)."""
    for name in FILES:
        with open(folder / f"data.{name}", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("  ") or "|" not in line:  # the licence header
                    continue
                head, gloss = line.split("|", 1)
                fields = head.split()
                offset, ss_type, w_cnt = fields[0], fields[2], int(fields[3], 16)
                lemmas = tuple(re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower() for i in range(w_cnt))
                for i, text in enumerate(EXAMPLE_RE.findall(gloss)):
                    yield Example(f"{offset}-{ss_type}", i, SS_TYPE[ss_type], lemmas, text.strip())


def read_exceptions(folder: Path) -> dict[str, dict[str, set[str]]]:
    """WordNet's irregular forms per part of speech: inflected form -> base forms ("went" -> {"go"})."""
    out: dict[str, dict[str, set[str]]] = {}
    for pos, file in EXC_FILE.items():
        table: dict[str, set[str]] = {}
        path = folder / file
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    table.setdefault(parts[0], set()).update(parts[1:])
        out[pos] = table
    return out


def base_forms(word: str, pos: str, exceptions: dict[str, dict[str, set[str]]]) -> set[str]:
    """The lower-cased word and every base form WordNet's morphology gives it as ``pos``.

    Over-generation is harmless here: a candidate only counts when it is a lemma of the
    example's own synset.
    """
    word = word.lower()
    forms = {word} | exceptions.get(pos, {}).get(word, set())
    for ending, base in SUFFIX_RULES[pos]:
        if word.endswith(ending) and len(word) > len(ending) + 1:
            stem = word[: len(word) - len(ending)] + base
            forms.add(stem)
            # running -> runn -> run, stopped -> stopp -> stop (morphy leaves these to the exception list)
            if base == "" and len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "aeiou":
                forms.add(stem[:-1])
    return forms


def label_example(example: Example, exceptions) -> dict | None:
    """The example as a JSONL record, or ``None`` when no single-word lemma occurs in it."""
    words = WORD_RE.findall(example.text)
    lemmas = {lemma for lemma in example.lemmas if "_" not in lemma}
    heads: dict[int, str] = {}
    for i, word in enumerate(words):
        found = base_forms(word, example.pos, exceptions) & lemmas
        if found:
            heads[i] = min(found)
    if not heads:
        return None
    headword = Counter(heads.values()).most_common(1)[0][0]
    return {
        "id": f"wn:{example.synset}:{example.index}",
        "text": example.text,
        "words": words,
        "labels": [example.pos if i in heads else None for i in range(len(words))],
        "headword": headword,
        "pos": example.pos,
    }


def lemma_counts(folder: Path) -> Counter:
    """Sense-tagged occurrences per lemma, summed over senses and parts of speech (``cntlist.rev``)."""
    counts: Counter = Counter()
    path = folder / "cntlist.rev"
    if not path.is_file():
        raise NotFoundError("WordNet's cntlist.rev (sense-tagged counts) not found", where=str(path),
                            fix="install Debian's complete `wordnet-base` package (apt-get install wordnet-base)")
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and "%" in parts[0] and parts[2].isdigit():
            counts[parts[0].split("%", 1)[0].lower()] += int(parts[2])
    return counts


@dataclass
class Pool:
    """Every labelled, deduplicated example per part of speech, and the lemma counts (read once)."""

    by_pos: dict[str, list[dict]]
    counts: Counter
    examples: int
    no_headword: int
    duplicates: int


def read_pool(folder: Path) -> Pool:
    """Label every example of the WordNet files in ``folder`` (the slow part: a few seconds)."""
    exceptions = read_exceptions(folder)
    pool = Pool({pos: [] for pos in POS_CLASSES}, lemma_counts(folder), 0, 0, 0)
    seen: set[str] = set()
    for example in read_examples(folder):
        pool.examples += 1
        record = label_example(example, exceptions)
        if record is None:
            pool.no_headword += 1
            continue
        key = " ".join(record["words"]).lower()
        if key in seen:
            pool.duplicates += 1
            continue
        seen.add(key)
        pool.by_pos[record["pos"]].append(record)
    return pool


def draw(pool: Pool, size: int = DEFAULT_SIZE, seed: int = 0) -> tuple[list[dict], BuildStats]:
    """The balanced draw of ``size`` sentences (module docstring), each with its ``log_frequency``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < len(POS_CLASSES):
        raise ConfigError("size must be an integer >= 4 (sentences, balanced over 4 parts of speech)",
                          where="wordnet_pos --size", got=repr(size))
    stats = BuildStats(examples=pool.examples, no_headword=pool.no_headword, duplicates=pool.duplicates)
    headword_pos: dict[str, Counter] = {}
    for records in pool.by_pos.values():
        for r in records:
            headword_pos.setdefault(r["headword"], Counter())[r["pos"]] += 1
    rng = np.random.default_rng(seed)
    per_class = size // len(POS_CLASSES)
    chosen: list[dict] = []
    stats.kept_by_tier = dict.fromkeys(TIERS, 0)
    for pos in POS_CLASSES:
        records = pool.by_pos[pos]
        stats.available_by_pos[pos] = len(records)
        tiers = _tiers(records, headword_pos)
        order = rng.permutation(len(records))
        order = order[np.argsort(tiers[order], kind="stable")]  # random within a tier, tiers in order
        take = np.sort(order[:per_class])
        stats.kept_by_pos[pos] = int(take.size)
        for tier, count in zip(*np.unique(tiers[take], return_counts=True)):
            stats.kept_by_tier[TIERS[tier]] += int(count)
        for i in take:
            record = dict(records[i])
            freq = math.log1p(pool.counts.get(record["headword"], 0))
            record["log_frequency"] = [freq if label is not None else None for label in record["labels"]]
            chosen.append(record)
    return chosen, stats


def build(folder: Path, size: int = DEFAULT_SIZE, seed: int = 0) -> tuple[list[dict], BuildStats]:
    """The balanced, deduplicated, labelled sentences and the counts of what was dropped."""
    if isinstance(size, bool) or not isinstance(size, int) or size < len(POS_CLASSES):  # before the slow part
        draw(Pool({}, Counter(), 0, 0, 0), size)
    return draw(read_pool(folder), size, seed)


def write_jsonl(records: list[dict], path: Path) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    atomic_write(path, text)


def describe(stats: BuildStats, path: Path) -> str:
    kept = sum(stats.kept_by_pos.values())
    per = ", ".join(f"{pos} {stats.kept_by_pos[pos]} of {stats.available_by_pos[pos]}" for pos in POS_CLASSES)
    tiers = ", ".join(f"{stats.kept_by_tier.get(t, 0)} {t}" for t in TIERS)
    return (f"{path}: {kept} sentences ({per}; headwords: {tiers}) from {stats.examples} WordNet examples; "
            f"skipped {stats.no_headword} without a findable single-word headword and {stats.duplicates} duplicates")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", required=True, help="JSONL file to write")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"sentences (default {DEFAULT_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the balanced draw (default 0)")
    args = parser.parse_args(argv)
    try:
        records, stats = build(find_wordnet(), args.size, args.seed)
    except (NotFoundError, ConfigError) as exc:
        print(f"wordnet_pos: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, out)
    print(describe(stats, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
