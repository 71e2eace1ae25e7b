"""Linear CKA (Kornblith et al. 2019) between stored blocks: layers, checkpoints, runs.

Linear centered kernel alignment of two representations ``X`` (n × F) and ``Y``
(n × G) of the same samples, both centered over the samples::

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F · ||Yc^T Yc||_F)

It is invariant to orthogonal transforms and isotropic scaling of either side (so two
layers that differ by a rotation are "the same"), but not to general invertible linear
maps (which is what makes it tell layers apart where CCA cannot). The same three
numbers can be written with sample Gram matrices ``K = Xc Xc^T`` (n × n), since
``||Yc^T Xc||_F^2 = <Kx, Ky>_F`` and ``||Xc^T Xc||_F = ||Kx||_F``: we use the
feature-space form (``F × G`` products) when samples outnumber features and the
sample-space form otherwise, whichever is smaller, always accumulating in float64.

Memory: a store block need never be in memory whole. :func:`block_moments` streams a
block in row chunks and keeps its column mean and the Frobenius norm of its centered
Gram (``F × F`` float64 when ``n > F``, ``n × n`` otherwise); a pair then needs only its
cross term, streamed over row chunks of both blocks (:func:`cross_term`). That is
what the parallel ``probestore similarity`` does (:func:`run_similarity`): one Dask
task per block for its moments, then one task per block and its partners for the cross
terms (a sample Gram, when used, is built once per task), combined by the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from analyze.tables import CKA
from probestore.errors import DataError

#: A reader of a block's rows ``[start, stop)`` of the chosen samples, as float64.
ChunkReader = Callable[[int, int], np.ndarray]


def _check_pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    for name, A in (("X", X), ("Y", Y)):
        if A.ndim != 2:
            raise DataError("features must be 2-D", where=f"linear_cka {name}",
                            expected="(n_samples, n_features)", got=f"shape {A.shape}")
        if not np.all(np.isfinite(A)):
            raise DataError("features contain NaN or Inf", where=f"linear_cka {name}",
                            expected="finite values", fix="check the extraction of this block")
    if X.shape[0] != Y.shape[0]:
        raise DataError("X and Y hold different numbers of samples", where="linear_cka",
                        expected=f"{X.shape[0]} rows in both", got=f"{X.shape[0]} and {Y.shape[0]}",
                        fix="compare representations of the same samples")
    if X.shape[0] < 2:
        raise DataError("CKA needs at least 2 samples", where="linear_cka", got=f"{X.shape[0]} sample(s)")
    return X, Y


def _ratio(cross: float, norm_x: float, norm_y: float) -> float:
    """CKA from its three terms; NaN when a side is constant (zero centered Gram)."""
    if norm_x <= 0 or norm_y <= 0:
        return float("nan")
    return float(cross / (norm_x * norm_y))


def use_sample_space(n: int, f: int, g: int) -> bool:
    """Whether the ``n × n`` form is cheaper than the ``F × G`` one for this pair.

    Feature space costs ``n (FG + F² + G²)`` flops, sample space ``n² (F + G)``.
    """
    return n * (f + g) < f * g + f * f + g * g


def linear_cka(X, Y) -> float:
    """Linear CKA of two in-memory representations of the same samples.

    Parameters
    ----------
    X : array (n, F)
    Y : array (n, G)

    Returns
    -------
    float
        In [0, 1]; NaN when either side is constant over the samples.

    Raises
    ------
    DataError
        Not 2-D, NaN/Inf, different sample counts, fewer than 2 samples.
    """
    X, Y = _check_pair(X, Y)
    Xc = X - X.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    n, f = Xc.shape
    g = Yc.shape[1]
    if use_sample_space(n, f, g):
        Kx = Xc @ Xc.T
        Ky = Yc @ Yc.T
        return _ratio(float(np.vdot(Kx, Ky)), float(np.linalg.norm(Kx)), float(np.linalg.norm(Ky)))
    cross = float(np.linalg.norm(Yc.T @ Xc) ** 2)
    return _ratio(cross, float(np.linalg.norm(Xc.T @ Xc)), float(np.linalg.norm(Yc.T @ Yc)))


# ---------------------------------------------------------------------------- streaming


def _chunks(read: ChunkReader, n: int, step: int) -> Iterator[tuple[int, int, np.ndarray]]:
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield start, stop, np.asarray(read(start, stop), dtype=np.float64)


@dataclass(frozen=True)
class BlockMoments:
    """What CKA needs of one block alone: sample count, column mean, ``||Xc^T Xc||_F``."""

    n: int
    mean: np.ndarray
    norm: float

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])


def sample_gram(read: ChunkReader, n: int, step: int, mean: np.ndarray) -> np.ndarray:
    """The centered ``n × n`` Gram ``Xc Xc^T``, from row chunks (pairs of chunks).

    Used when features outnumber samples: memory is ``8n²`` plus two chunks; the block
    is read ``ceil(n / step)`` times over (fine for the blocks this path is for, where
    ``n`` is small next to ``F``).
    """
    K = np.empty((n, n))
    for i0, i1, Xi in _chunks(read, n, step):
        Xi = Xi - mean
        for j0 in range(i0, n, step):
            j1 = min(n, j0 + step)
            Xj = Xi if j0 == i0 else np.asarray(read(j0, j1), dtype=np.float64) - mean
            Kij = Xi @ Xj.T
            K[i0:i1, j0:j1] = Kij
            K[j0:j1, i0:i1] = Kij.T
    return K


def block_moments(read: ChunkReader, n: int, n_features: int, step: int) -> BlockMoments:
    """Mean and centered-Gram norm of a block, streamed over row chunks.

    Feature space (``n > F``): one pass accumulating ``Σ (x - s)(x - s)^T`` with ``s``
    the first chunk's mean (a shift that keeps the float64 sums well conditioned), then
    ``Xc^T Xc = S - n (m - s)(m - s)^T``. Sample space: a mean pass, then
    :func:`sample_gram`.

    Raises
    ------
    DataError
        NaN/Inf in the block, fewer than 2 samples.
    """
    if n < 2:
        raise DataError("CKA needs at least 2 samples", where="block_moments", got=f"{n} sample(s)")
    F = int(n_features)
    total = np.zeros(F)
    shift = None
    S = np.zeros((F, F)) if F <= n else None
    for start, _, X in _chunks(read, n, step):
        if not np.all(np.isfinite(X)):
            raise DataError("features contain NaN or Inf", where=f"block rows from {start}",
                            expected="finite activations", fix="check the extraction of this block")
        if shift is None:
            shift = X.mean(axis=0)
        total += X.sum(axis=0)
        if S is not None:
            D = X - shift
            S += D.T @ D
    mean = total / n
    if S is not None:
        assert shift is not None, "n >= 2 rows give at least one chunk"
        d = mean - shift
        S -= n * np.outer(d, d)
        return BlockMoments(n, mean, float(np.linalg.norm(S)))
    return BlockMoments(n, mean, float(np.linalg.norm(sample_gram(read, n, step, mean))))


def cross_term(read_x: ChunkReader, mx: BlockMoments, read_y: ChunkReader, my: BlockMoments, step: int,
               *, gram_x: np.ndarray | None = None, gram_y: np.ndarray | None = None) -> float:
    """``||Yc^T Xc||_F^2`` streamed over row chunks of both blocks.

    Feature space accumulates ``Σ (y - my)(x - mx)^T`` (``G × F`` float64). When a side
    has more features than samples its centered sample Gram is used instead (pass it
    as ``gram_x`` / ``gram_y`` to reuse one across partners): ``<Kx, Ky>`` when both
    are given, else ``tr(Xc^T Ky Xc)`` streamed over ``X`` in two passes.
    """
    n = mx.n
    if my.n != n:
        raise DataError("blocks hold different numbers of samples", where="cross_term",
                        expected=f"{n}", got=f"{my.n}")
    if gram_x is None and mx.n_features > n:
        gram_x = sample_gram(read_x, n, step, mx.mean)
    if gram_y is None and my.n_features > n:
        gram_y = sample_gram(read_y, n, step, my.mean)
    if gram_x is not None and gram_y is not None:
        return float(np.vdot(gram_x, gram_y))
    if gram_x is not None or gram_y is not None:
        K, read, m = (gram_x, read_y, my) if gram_x is not None else (gram_y, read_x, mx)
        assert K is not None, "one of the two Grams is given in this branch"
        M = np.zeros((n, m.n_features))
        for start, stop, Z in _chunks(read, n, step):
            M += K[:, start:stop] @ (Z - m.mean)
        return float(sum(np.vdot(Z - m.mean, M[start:stop]) for start, stop, Z in _chunks(read, n, step)))
    C = np.zeros((my.n_features, mx.n_features))
    for (_, _, X), (_, _, Y) in zip(_chunks(read_x, n, step), _chunks(read_y, n, step)):
        C += (Y - my.mean).T @ (X - mx.mean)
    return float(np.linalg.norm(C) ** 2)


def streaming_cka(read_x: ChunkReader, fx: int, read_y: ChunkReader, fy: int, n: int, step: int) -> float:
    """Linear CKA of two blocks read in row chunks of ``step`` rows (never whole)."""
    mx = block_moments(read_x, n, fx, step)
    my = block_moments(read_y, n, fy, step)
    return _ratio(cross_term(read_x, mx, read_y, my, step), mx.norm, my.norm)


def cka_from_terms(cross: float, mx: BlockMoments, my: BlockMoments) -> float:
    """CKA from a cross term and both blocks' moments."""
    return _ratio(cross, mx.norm, my.norm)


# ---------------------------------------------------------------------------- from a store

PAIR_KINDS = ("within-checkpoint", "across-checkpoints", "across-runs")
SAMPLE_SETS = ("all", "test")
#: Columns of the CKA table, in order (specified in :data:`analyze.tables.CKA` and storage_schema/RESULTS.md).
CKA_COLUMNS = CKA.names


@dataclass(frozen=True)
class BlockRef:
    """One (run, checkpoint, layer) feature block of a store."""

    run: str
    checkpoint: str
    epoch: int
    layer: str
    layer_index: int
    n_features: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.run, self.checkpoint, self.layer)

    @property
    def name(self) -> str:
        return "/".join(self.key)


@dataclass(frozen=True)
class CrossJob:
    """A block and the partners whose cross terms with it one task computes."""

    block: BlockRef
    moments: BlockMoments
    partners: tuple[BlockRef, ...]
    partner_moments: tuple[BlockMoments, ...]

    @property
    def name(self) -> str:
        return self.block.name


def _pair_kinds(pairs: str) -> tuple[str, ...]:
    from probestore.errors import ConfigError, did_you_mean

    if pairs == "all":
        return PAIR_KINDS
    chosen = tuple(p.strip() for p in str(pairs).split(",") if p.strip())
    for p in chosen or (str(pairs),):
        if p not in PAIR_KINDS:
            raise ConfigError(f"unknown pair kind {p!r}", where="--pairs",
                              expected="all, or a comma-separated subset of " + ", ".join(PAIR_KINDS),
                              got=repr(pairs), fix=did_you_mean(p, PAIR_KINDS + ("all",)) or "choose a listed kind")
    return chosen


def plan_pairs(store, *, runs=None, checkpoints=None, layers=None, pairs: str = "all"):
    """The blocks and the unordered block pairs to compare.

    ``within-checkpoint``: every two layers of one (run, checkpoint);
    ``across-checkpoints``: every two checkpoints of one (run, layer);
    ``across-runs``: every two runs at the same checkpoint name and layer. Filters are
    name / glob lists (:mod:`probestore.selectors`; None: all); only complete checkpoints and blocks count.

    Returns
    -------
    blocks : list of BlockRef
    pairs : list of (i, j)
        Indices into ``blocks``, ``i < j``, no duplicates.

    Raises
    ------
    NoMatchError
        A pattern that matches nothing (with a did-you-mean; a ConfigError).
    ConfigError
        An unknown pair kind.
    """
    from probestore.selectors import check_matched, select

    def hint(what: str) -> str:
        return f"`probestore inspect {store.path}` lists the {what}"

    kinds = _pair_kinds(pairs)
    where = f"similarity of {store.path}"
    blocks: list[BlockRef] = []
    seen_c: set[str] = set()
    seen_l: set[str] = set()
    hit_c: set[str] = set()
    hit_l: set[str] = set()
    for run in select(store.runs(), runs, what="run", where=f"{where} (--runs)", hint=hint("runs")):
        ckpts = store.checkpoints(run)
        seen_c.update(c.name for c in ckpts)
        chosen_c = select([c.name for c in ckpts], checkpoints, what="checkpoint", where=where, must_match=False)
        for ck in ckpts:
            if ck.name not in chosen_c:
                continue
            hit_c.add(ck.name)
            feats = [b for b in store.blocks(run, ck.name) if b.kind == "features"]
            seen_l.update(b.name for b in feats)
            chosen_l = select([b.name for b in feats], layers, what="layer", where=where, must_match=False)
            for i, b in enumerate(feats):
                if b.name in chosen_l:
                    hit_l.add(b.name)
                    blocks.append(BlockRef(run, ck.name, -1 if ck.epoch is None else int(ck.epoch), b.name, i,
                                           int(b.n_features)))
    check_matched(checkpoints, hit_c, seen_c, what="checkpoint", where=f"{where} (--checkpoints)",
                  hint=hint("checkpoints"))
    check_matched(layers, hit_l, seen_l, what="layer", where=f"{where} (--layers)", hint=hint("layers"))
    out = set()
    for i, a in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            b = blocks[j]
            same_run, same_ck, same_l = a.run == b.run, a.checkpoint == b.checkpoint, a.layer == b.layer
            if ("within-checkpoint" in kinds and same_run and same_ck and not same_l) or \
               ("across-checkpoints" in kinds and same_run and same_l and not same_ck) or \
               ("across-runs" in kinds and not same_run and same_ck and same_l):
                out.add((i, j))
    return blocks, sorted(out)


def _reader(store, ref: BlockRef, rows: np.ndarray | None) -> ChunkReader:
    def read(start: int, stop: int) -> np.ndarray:
        sel = slice(start, stop) if rows is None else rows[start:stop]
        return store.read_layer(ref.run, ref.checkpoint, ref.layer, rows=sel)
    return read


def _step(n_features: int, n: int, budget: int) -> int:
    """Rows per chunk: float64 chunk of at most ``budget / 4`` bytes."""
    return int(max(1, min(n, (budget // 4) // max(1, 8 * n_features))))


def moments_task(store_path: str, ref: BlockRef, rows: np.ndarray | None, budget: int) -> BlockMoments:
    """Dask task: one block's :class:`BlockMoments` (opens the store read-only)."""
    from storage_schema.store import open_store

    with open_store(store_path, "r") as store:
        n = store.n_samples if rows is None else rows.size
        return block_moments(_reader(store, ref, rows), n, ref.n_features, _step(ref.n_features, n, budget))


def cross_task(store_path: str, job: CrossJob, rows: np.ndarray | None, budget: int) -> list[tuple]:
    """Dask task: the cross terms of one block with each partner -> ``[(key_a, key_b, cka)]``."""
    from storage_schema.store import open_store

    with open_store(store_path, "r") as store:
        n = job.moments.n
        read_a = _reader(store, job.block, rows)
        out = []
        gram_a = None
        for ref, mom in zip(job.partners, job.partner_moments):
            step = _step(job.block.n_features + ref.n_features, n, budget)
            if gram_a is None and job.block.n_features > n:
                gram_a = sample_gram(read_a, n, step, job.moments.mean)
            cross = cross_term(read_a, job.moments, _reader(store, ref, rows), mom, step, gram_x=gram_a)
            out.append((job.block.key, ref.key, cka_from_terms(cross, job.moments, mom)))
        return out


def run_similarity(store_path, out_path=None, *, runs=None, checkpoints=None, layers=None, pairs: str = "all",
                   samples: str = "all", config=None, client=None, log=None):
    """Linear CKA between the blocks of a store; a tidy table, optionally written to Parquet.

    Parameters
    ----------
    store_path : path
        The store (every worker must see it at this path).
    out_path : path, optional
        Write the table here (``.parquet``, or ``.csv``), atomically.
    runs, checkpoints, layers : list of names or globs, optional
    pairs : str
        ``"all"`` or a comma-separated subset of :data:`PAIR_KINDS`.
    samples : {"all", "test"}
        Compare over every sample of the store, or the test split only.
    config : AnalysisConfig, optional
        Where the tasks run (``scheduler``, ``n_workers``, ...) and the row-chunk
        budget (``max_block_bytes``), as for ``probestore analyze``.
    client : distributed.Client, optional
    log : callable, optional
        Receives the lines (default: :class:`probestore.progress.Log` labelled
        ``similarity``: a bar per phase on a terminal, else one timestamped line per task
        with rate and ETA).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CKA_COLUMNS`, one row per pair, sorted.

    Raises
    ------
    NotFoundError, ConfigError
        Filters matching nothing, an unknown pair kind or sample set, no pair to compare.
    """
    from pathlib import Path

    import pandas as pd

    from analyze.cluster import check_store_visible, open_executor
    from analyze.config import AnalysisConfig
    from analyze.tables import conform, write_table
    from probestore.errors import ConfigError, NotFoundError, did_you_mean
    from probestore.progress import Log, Progress
    from storage_schema.store import open_store

    config = config or AnalysisConfig()
    log = log or Log("similarity")
    if samples not in SAMPLE_SETS:
        raise ConfigError(f"unknown sample set {samples!r}", where="--samples", expected=" or ".join(SAMPLE_SETS),
                          got=repr(samples), fix=did_you_mean(str(samples), SAMPLE_SETS) or "use all or test")
    store_path = str(Path(store_path).resolve())
    with open_store(store_path, "r") as store:
        blocks, pair_list = plan_pairs(store, runs=runs, checkpoints=checkpoints, layers=layers, pairs=pairs)
        rows = None
        if samples == "test":
            if "test" not in store.dataset.split_names or store.split_indices("test").size < 2:
                raise ConfigError("the store has no test split of at least 2 samples", where=store_path,
                                  fix="use --samples all")
            rows = np.asarray(store.split_indices("test"), dtype=np.intp)
    if not pair_list:
        raise NotFoundError("no pair of blocks to compare", where=f"similarity of {store_path}",
                            expected="at least two layers, checkpoints or runs matching the filters",
                            got=f"{len(blocks)} block(s)", fix="widen --runs/--checkpoints/--layers or --pairs")
    used = sorted({i for p in pair_list for i in p})
    budget = int(config.max_block_bytes)
    partners: dict[int, list[int]] = {}
    for i, j in pair_list:  # the block with more features streams once per task, the other per pair
        a, b = (i, j) if blocks[i].n_features >= blocks[j].n_features else (j, i)
        partners.setdefault(a, []).append(b)
    moments: dict[tuple, BlockMoments] = {}
    results: dict[tuple, float] = {}
    with open_executor(config, len(used), client=client, log=log) as (executor, _):
        check_store_visible(executor, store_path)
        with Progress(len(used), unit="block", log=log, desc="moments") as bar:
            for task in executor.map_unordered(moments_task, store_path, [blocks[i] for i in used], rows, budget):
                if task.error is not None:
                    raise task.error
                moments[task.item.key] = task.value
                bar.update(1, task.item.name)
        jobs = [CrossJob(blocks[a], moments[blocks[a].key], tuple(blocks[b] for b in bs),
                         tuple(moments[blocks[b].key] for b in bs)) for a, bs in sorted(partners.items())]
        with Progress(len(jobs), unit="task", log=log, desc="CKA") as bar:
            for task in executor.map_unordered(cross_task, store_path, jobs, rows, budget):
                if task.error is not None:
                    raise task.error
                for ka, kb, value in task.value:
                    results[(ka, kb)] = results[(kb, ka)] = value
                bar.update(1, f"{task.item.name} x {len(task.item.partners)} block(s)")
    n = next(iter(moments.values())).n
    table = []
    for i, j in pair_list:
        a, b = blocks[i], blocks[j]
        table.append((a.run, a.checkpoint, a.epoch, a.layer, b.run, b.checkpoint, b.epoch, b.layer,
                      results[(a.key, b.key)], n))
    df = conform(pd.DataFrame(table, columns=list(CKA_COLUMNS)), CKA)
    df = df.sort_values(list(CKA_COLUMNS[:8])).reset_index(drop=True)
    if out_path is not None:
        write_table(df, out_path, CKA)
        log(f"similarity: {len(df)} pairs over {len(used)} blocks ({n} samples) -> {out_path}")
    return df
