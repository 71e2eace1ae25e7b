"""Do the papers' headline findings hold in *this* run? Observations, with their numbers.

Each check returns a :class:`Finding`: the paper's statement, ``holds`` (True, False,
or None when the table cannot test it, with the reason) and the numbers behind the
verdict. They are reported, never asserted: a small demo may well contradict a paper,
and the report should say so plainly rather than fail.

The decision rules are deliberately simple and written into each ``detail`` so a
reader can redo them from the numbers:

- depth: at the generalizing run's last checkpoint, error(last hidden) <
  error(first hidden) and at most half of the layer-to-layer steps increase;
- random features: at the random network (epoch 0, or a run named "random"), the best
  hidden layer's error < the input layer's;
- training: per run, mean hidden-layer error at the last checkpoint < at the first;
  holds when it does for every run;
- RCV vs corruption: least-squares slope of R² against corruption fraction, at the
  first and last hidden layers; holds when the deep slope is negative and steeper
  than the early one;
- clean first: per corrupted run, the first epoch at which accuracy has made 90% of
  its gain from the first to the last checkpoint, clean vs corrupted samples (the
  corrupted ones against their training labels); a series that gains less than 5
  accuracy points is "not learned";
- selectivity: mean selectivity over hidden layers at the last checkpoint, most
  memorizing run < generalizing run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analyze.report.figures import SkipFigure, default_corruption_concepts, selectivity_data
from analyze.report.table import ResultsView

#: Fraction of the first-to-last accuracy gain that counts as "learned".
LEARNED_FRACTION = 0.9
#: A series gaining less accuracy than this (fraction) over training is "not learned".
MIN_GAIN = 0.05


@dataclass
class Finding:
    """A headline finding of the papers, checked on this results table."""

    key: str
    statement: str
    holds: bool | None
    numbers: dict = field(default_factory=dict)
    detail: str = ""

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not testable"}[self.holds]

    def number_lines(self) -> list[str]:
        """``"name: value"`` lines for the report (nested dicts on one line each)."""
        return [f"{k}: {_format(v)}" for k, v in self.numbers.items()]


def _format(value) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k} {_format(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _r(x: float) -> float:
    return float(np.round(float(x), 4))


def _errors(view: ResultsView, run: str, ckpt: str, layers: list[str]) -> dict[str, float]:
    df = view.select("classifier", "true_labels", run=run, checkpoint=ckpt).set_index("layer")["test_error"]
    return {layer: float(df[layer]) for layer in layers if layer in df.index and np.isfinite(df[layer])}


# ---------------------------------------------------------------------- A&B: depth
DEPTH = "Probe error falls with depth in a trained network (Alain & Bengio 2016, Fig. 3-5)"


def depth_finding(view: ResultsView) -> Finding:
    """Error at the last vs first hidden layer of the trained generalizing network."""
    rule = "error(last hidden) < error(first hidden) and at most half the layer-to-layer steps increase"
    gen = view.generalizing_run()
    if gen is None:
        return Finding("depth", DEPTH, None, detail="no trained run with corruption 0 in the table")
    ckpt = view.last_checkpoint(gen)
    errors = _errors(view, gen, ckpt, view.hidden_layers())
    if len(errors) < 2:
        return Finding("depth", DEPTH, None, {"run": gen, "checkpoint": ckpt},
                       detail="fewer than two hidden layers with a classifier probe")  # fmt: skip
    values = np.array(list(errors.values()))
    steps = len(values) - 1
    increases = int(np.sum(np.diff(values) > 0))
    layers = list(errors)
    holds = bool(values[-1] < values[0] and increases <= steps // 2)
    numbers = {
        "run": gen, "checkpoint": ckpt,
        "first hidden": f"{layers[0]} {values[0]:.4f}", "last hidden": f"{layers[-1]} {values[-1]:.4f}",
        "steps that increase": f"{increases} of {steps}",
        "test error per layer": {k: _r(v) for k, v in errors.items()},
    }  # fmt: skip
    return Finding("depth", DEPTH, holds, numbers, detail=rule)


# ---------------------------------------------------------------------- A&B: random features
RANDOM = "Random-network features separate classes better than raw pixels (Alain & Bengio 2016, Fig. 3 left)"


def random_features_finding(view: ResultsView) -> Finding:
    """Best hidden layer of the untrained network vs the input layer."""
    ref = view.random_reference()
    inp = view.input_layer()
    if ref is None:
        return Finding("random_features", RANDOM, None, detail="no epoch-0 checkpoint and no run named 'random'")
    if inp is None:
        return Finding("random_features", RANDOM, None, detail="no 'input' layer probed (raw pixels)")
    run, ckpt = ref
    inputs = view.select("classifier", "true_labels", layer=inp)
    same = inputs[(inputs["run"] == run) & (inputs["checkpoint"] == ckpt)]
    # The input is the same pixels at every checkpoint: any probe of it will do.
    src = same if not same.empty else inputs
    src = src[np.isfinite(src["test_error"])]
    hidden = _errors(view, run, ckpt, view.hidden_layers())
    if src.empty or not hidden:
        return Finding("random_features", RANDOM, None, {"random network": f"{run}/{ckpt}"},
                       detail="no classifier probe of the input layer or of a hidden layer of the random network")  # fmt: skip
    input_error = float(src["test_error"].iloc[0])
    best = min(hidden, key=lambda layer: hidden[layer])
    numbers = {
        "random network": f"{run}/{ckpt}",
        "input test error": _r(input_error),
        "best hidden layer": f"{best} {hidden[best]:.4f}",
        "test error per layer": {k: _r(v) for k, v in hidden.items()},
    }
    return Finding("random_features", RANDOM, bool(hidden[best] < input_error), numbers,
                   detail="min over hidden layers of the random network's probe error < the input layer's")  # fmt: skip


# ---------------------------------------------------------------------- Graziani: training
TRAINING = "Training increases the linear separability of the classes (Graziani et al. 2019, Fig. 1)"


def training_finding(view: ResultsView) -> Finding:
    """Mean hidden-layer probe error, last vs first checkpoint, per trained run."""
    per_run, verdicts = {}, []
    # A fully memorizing network (corruption 1) learns a random mapping, not the classes:
    # the paper's claim (Fig. 1) is about random, partly memorizing and generalizing nets.
    for run in [r for r in view.trained_runs() if view.corruption.get(r, 0.0) < 1.0]:
        ckpts = view.checkpoints[run]
        if len(ckpts) < 2:
            continue
        first = _errors(view, run, ckpts[0], view.hidden_layers())
        last = _errors(view, run, ckpts[-1], view.hidden_layers())
        common = [layer for layer in first if layer in last]
        if not common:
            continue
        a = float(np.mean([first[layer] for layer in common]))
        b = float(np.mean([last[layer] for layer in common]))
        verdicts.append(b < a)
        per_run[run] = f"{a:.4f} -> {b:.4f} ({'lower' if b < a else 'not lower'}; {len(common)} layers)"
    if not verdicts:
        return Finding("training", TRAINING, None, detail="no trained run with two checkpoints probed at the same hidden layers")
    return Finding("training", TRAINING, bool(all(verdicts)), {"mean test error, first -> last checkpoint": per_run},
                   detail="per run with corruption < 1, mean hidden-layer error (true labels) falls from the first to the last checkpoint; holds if it does for every such run")  # fmt: skip


# ---------------------------------------------------------------------- Graziani: RCV vs corruption
RCV = "Early-layer RCV R² barely changes with label corruption while deep layers' falls (Graziani et al. 2019, Fig. 4)"


def slope(x, y) -> float:
    """Least-squares slope of ``y`` against ``x`` (NaN with fewer than two distinct x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.unique(x).size < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def rcv_corruption_finding(view: ResultsView, concept: str | None = None) -> Finding:
    """Slope of R² vs corruption at the first and the last hidden layer."""
    rule = "slope(last hidden) < 0 and |slope(first hidden)| < |slope(last hidden)|"
    concepts = [concept] if concept else default_corruption_concepts(view)
    if not concepts:
        return Finding("rcv_corruption", RCV, None, detail="no rcv rows")
    concept = concepts[0]
    points: dict[str, list[tuple[float, float]]] = {}
    for run in view.trained_runs():
        df = view.select("rcv", concept, run=run, checkpoint=view.last_checkpoint(run))
        for r in df.itertuples():
            if np.isfinite(r.test_r2):
                points.setdefault(r.layer, []).append((view.corruption[run], float(r.test_r2)))
    hidden = [layer for layer in view.hidden_layers() if layer in points]
    fractions = {f for pts in points.values() for f, _ in pts}
    if len(hidden) < 2 or len(fractions) < 2:
        return Finding("rcv_corruption", RCV, None, {"concept": concept},
                       detail="needs RCV rows at two or more hidden layers from runs with two or more corruption fractions")  # fmt: skip
    slopes = {layer: slope(*zip(*points[layer])) for layer in hidden}
    early, deep = slopes[hidden[0]], slopes[hidden[-1]]
    numbers = {
        "concept": concept,
        "corruption fractions": sorted(fractions),
        f"slope at {hidden[0]} (R² per unit corruption)": _r(early),
        f"slope at {hidden[-1]} (R² per unit corruption)": _r(deep),
        "slope per layer": {k: _r(v) for k, v in slopes.items()},
    }
    return Finding("rcv_corruption", RCV, bool(deep < 0 and abs(early) < abs(deep)), numbers, detail=rule)


# ---------------------------------------------------------------------- Graziani: clean first
CLEAN = "Clean labels are learned before corrupted ones (Graziani et al. 2019, Fig. 5)"


def learned_at(x, acc, fraction: float = LEARNED_FRACTION, min_gain: float = MIN_GAIN) -> float | None:
    """First ``x`` at which ``acc`` has made ``fraction`` of its first-to-last gain.

    None when the series gains less than ``min_gain`` (it was never learned). Measuring
    the gain, not a fraction of the final accuracy, keeps a series stuck at chance
    (10% -> 11%) from counting as "learned at epoch 0".
    """
    x, acc = np.asarray(x, float), np.asarray(acc, float)
    gain = acc[-1] - acc[0]
    if gain < min_gain:
        return None
    threshold = acc[0] + fraction * gain
    return float(x[np.argmax(acc >= threshold - 1e-12)])


def clean_first_finding(view: ResultsView) -> Finding:
    """When clean vs corrupted training samples are learned, per corrupted run."""
    out = view.select("model_output")
    per_run, verdicts = {}, []
    # With every label corrupted the "clean" samples are only those whose random label
    # hit the true class by chance: the comparison needs a partly corrupted run (Fig. 5).
    for run in [r for r in view.corrupted_runs() if view.corruption.get(r, 0.0) < 1.0]:
        rows = []
        for ckpt in view.checkpoints[run]:
            df = out[(out["run"] == run) & (out["checkpoint"] == ckpt)]
            train = df[df["target"] == "train_labels"]
            clean_src = train if not train.empty else df[df["target"] == "true_labels"]
            if train.empty or clean_src.empty:
                continue
            rows.append((view.x_value(run, ckpt), 1 - clean_src["clean_error"].iloc[0], 1 - train["corrupted_error"].iloc[0]))
        rows = [r for r in rows if np.isfinite(r[1]) and np.isfinite(r[2])]
        if len(rows) < 2:
            continue
        x, clean, corrupted = map(np.array, zip(*rows))
        t_clean, t_corr = learned_at(x, clean), learned_at(x, corrupted)
        if t_clean is None and t_corr is None:
            verdict, text = None, "neither learned"
        elif t_clean is None:
            verdict, text = False, f"corrupted learned at {t_corr:g}, clean never"
        elif t_corr is None:
            verdict, text = True, f"clean learned at {t_clean:g}, corrupted not learned"
        else:
            verdict, text = bool(t_clean < t_corr), f"clean at {t_clean:g}, corrupted at {t_corr:g}"
        per_run[run] = (
            f"{text} (train accuracy clean {clean[0]:.3f} -> {clean[-1]:.3f}, "
            f"corrupted vs training labels {corrupted[0]:.3f} -> {corrupted[-1]:.3f})"
        )
        if verdict is not None:
            verdicts.append(verdict)
    rule = (
        f"per partly corrupted run (0 < N < 1), the first epoch with {LEARNED_FRACTION:.0%} of the first-to-last accuracy gain; "
        f"clean strictly earlier than corrupted (or corrupted gaining < {MIN_GAIN:.0%}); holds if so for every run"
    )
    if not verdicts:
        return Finding("clean_first", CLEAN, None, {"runs": per_run} if per_run else {},
                       detail="needs model_output rows of a corrupted run (with clean samples) at two or more checkpoints")  # fmt: skip
    return Finding("clean_first", CLEAN, bool(all(verdicts)), {"epoch learned, per run": per_run}, detail=rule)


# ---------------------------------------------------------------------- control tasks
SELECTIVITY = "Probes on a memorizing network are less selective than on the generalizing network (control tasks)"


def selectivity_finding(view: ResultsView) -> Finding:
    """Mean selectivity over hidden layers at the last checkpoint, memorizing vs generalizing."""
    gen, mem = view.generalizing_run(), view.memorizing_run()
    if gen is None or mem is None:
        return Finding("selectivity", SELECTIVITY, None, detail="needs a generalizing run and a run with corruption > 0")
    try:
        data = selectivity_data(view)
    except SkipFigure as skip:
        return Finding("selectivity", SELECTIVITY, None, detail=str(skip))
    data = data[data["layer"].isin(view.hidden_layers())]
    stats, means = {}, {}
    for run in (gen, mem):
        sub = data[(data["run"] == run) & np.isfinite(data["selectivity"])]
        if sub.empty:
            return Finding("selectivity", SELECTIVITY, None, detail=f"no selectivity at hidden layers of run {run!r}")
        means[run] = float(sub["selectivity"].mean())
        stats[run] = {
            "mean selectivity": _r(means[run]),
            "control train accuracy": _r(sub["control_train_accuracy"].mean()),
            "control test accuracy": _r(sub["control_test_accuracy"].mean()),
        }
    numbers = {"generalizing": gen, "memorizing": mem, **{f"{run} (mean over hidden layers)": v for run, v in stats.items()}}
    holds = bool(means[mem] < means[gen])
    return Finding("selectivity", SELECTIVITY, holds, numbers,
                   detail="mean selectivity (accuracy true − control, test split) over hidden layers at the last checkpoint")  # fmt: skip


def compute_findings(view: ResultsView, *, concept: str | None = None) -> list[Finding]:
    """All headline findings, in the order of the papers' narrative."""
    return [
        depth_finding(view),
        random_features_finding(view),
        training_finding(view),
        rcv_corruption_finding(view, concept),
        clean_first_finding(view),
        selectivity_finding(view),
    ]
