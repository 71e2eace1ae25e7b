"""Do the papers' headline findings hold in *this* run? Observations, with their numbers.

Each check returns a :class:`Finding`: the paper's statement, ``holds`` (True, False,
or None when the table cannot test it, with the reason) and the numbers behind the
verdict. They are reported, never asserted: a small demo may well contradict a paper,
and the report should say so plainly rather than fail.

The decision rules are deliberately simple and written into each ``detail`` so a
reader can redo them from the numbers (docs/science.md §9 gives each rule with the
paper's claim it tests). Alain & Bengio's two findings come with the *setting* they
were made in: each names whether this run is that setting (their MNIST convnet on
MNIST, or for depth also ResNet-50 / Inception v3) and, when it is not, says so beside
the verdict, since a verdict on another model tests a generalisation of the claim:

- depth (Alain & Bengio: after training, probe error falls near-monotonically with
  depth): at the generalizing run's last (trained) checkpoint, over the input, every
  hidden layer and the output layer in model order, no layer-to-layer step raises the
  test error by more than :data:`DEPTH_TOLERANCE` and the Spearman correlation of
  error with depth is at most :data:`DEPTH_MAX_SPEARMAN`;
- random features (Alain & Bengio Fig. 3 left: the random network's layers already
  separate the classes better than the pixels): at the random network (epoch 0, or a
  run named "random"), the best layer's error is below the input's by more than
  :data:`RANDOM_MARGIN`;
- training: per run, mean hidden-layer error at the last checkpoint < at the first;
  holds when it does for every run;
- RCV vs corruption: least-squares slope of R² against corruption fraction, at the
  first and last hidden layers; holds when the deep slope is negative and steeper
  than the early one;
- clean first: per corrupted run, the first epoch at which accuracy has made half of
  its gain from the first to the last checkpoint (its half-time), clean vs corrupted samples (the
  corrupted ones against their training labels); a series that gains less than 5
  accuracy points is "not learned";
- selectivity (Hewitt & Liang: the deeper ELMo layer is the more selective): at the
  generalizing run's last checkpoint, selectivity of the last hidden layer > of the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from analyze.report.figures import SkipFigure, default_corruption_concepts, selectivity_data
from analyze.report.table import OUTPUT_LAYERS, ResultsView

#: Fraction of the first-to-last accuracy gain that counts as "learned": the half-time.
#: G19's Fig. 5 claim is about the *order* in which clean and corrupted samples are
#: learned; a 90% threshold put both series on the last checkpoint of the demo (clean
#: 0.08 -> 0.82 at epoch 10 -> 0.875 at 30 -> 0.97 at 60, corrupted 0.10 -> 0.05 -> 0.41
#: -> 0.91) whenever clean accuracy was still creeping up, hiding the order the figure shows.
LEARNED_FRACTION = 0.5
#: A series gaining less accuracy than this (fraction) over training is "not learned".
MIN_GAIN = 0.05
#: Largest rise of probe test error from one layer to the next that still counts as
#: "near-monotone" (absolute error). Alain & Bengio call their ResNet-50 profile (Fig. 4a)
#: "almost perfectly monotonic"; its one rise is 0.76 -> 0.77 (add_7 -> add_8), and their
#: MNIST profile (Fig. 3 right) has one "minor kink" (fc1_preact).
DEPTH_TOLERANCE = 0.01
#: Largest Spearman correlation of test error with depth that counts as "falls with
#: depth". A&B's own profiles have rho = -0.998 (Fig. 4a) and about -0.99 (Fig. 3 right,
#: one adjacent swap in 10 probes); -0.9 leaves room for one adjacent swap among 5 layers
#: or about 8 among 10 (probe noise on small test splits) but rejects a flat profile.
DEPTH_MAX_SPEARMAN = -0.9
#: How much lower than the input's the random network's best probe error must be to
#: "beat the pixels" (absolute error; A&B Fig. 3 left: 8% -> 2%). The same size as
#: :data:`DEPTH_TOLERANCE`: smaller differences are within probe noise on ~1,500 test
#: samples (binomial standard error 0.007 at 8% error).
RANDOM_MARGIN = 0.01
#: Alain & Bengio's settings: model name -> dataset-name prefix. The depth claim is made
#: on all three (§3.5, §4.1, §4.2), the random-features claim on the MNIST convnet only.
AB_DEPTH_SETTINGS = {"ab_mnist_convnet": "mnist", "torchvision:resnet50": "imagenet",
                     "torchvision:inception_v3": "imagenet"}
AB_RANDOM_SETTINGS = {"ab_mnist_convnet": "mnist"}


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


# ---------------------------------------------------------------------- A&B: setting
def setting_note(view: ResultsView, run: str, models: dict[str, str] | None, settings: dict[str, str],
                 paper: str) -> str:
    """Whether ``run`` is one of the paper's settings for a claim, in words.

    ``settings`` maps a model name to the dataset-name prefix it was used with;
    ``paper`` names those settings for the reader. The model comes from the store
    (``models``, run -> model name); without a store the setting is unknown.
    """
    model = (models or {}).get(run)
    dataset = view.dataset_name
    if model is None:
        return f"unknown (no store given, so the model is not known); the paper's: {paper}"
    this = f"{model} on {dataset or 'an unnamed dataset'}"
    prefix = settings.get(model)
    if prefix is not None and dataset is not None and dataset.lower().startswith(prefix):
        return f"the paper's ({this})"
    return f"NOT the paper's: {this}; the claim was made for {paper}, so this verdict tests a generalisation of it"


def run_models(store_path) -> dict[str, str]:
    """Run -> model name (``ModelSpec.name``) as recorded in a store."""
    from storage_schema.store import open_store

    store = open_store(store_path, "r")
    try:
        return {run: str(store.run_info(run).model.get("name", "")) for run in store.runs()}
    finally:
        store.close()


def _input_error(view: ResultsView, run: str, ckpt: str) -> float | None:
    """Probe error on the raw input: the same pixels at every checkpoint, so any probe of it will do."""
    inp = view.input_layer()
    if inp is None:
        return None
    rows = view.select("classifier", "true_labels", layer=inp)
    rows = rows[np.isfinite(rows["test_error"])]
    same = rows[(rows["run"] == run) & (rows["checkpoint"] == ckpt)]
    src = same if not same.empty else rows
    return None if src.empty else float(src["test_error"].iloc[0])


def _depth_profile(view: ResultsView, run: str, ckpt: str) -> dict[str, float]:
    """Test error of every probed layer of one checkpoint, input to output, in model order."""
    outputs = [layer for layer in view.layers if layer in OUTPUT_LAYERS]
    profile = {}
    inp = _input_error(view, run, ckpt)
    if inp is not None:
        profile[str(view.input_layer())] = inp
    profile.update(_errors(view, run, ckpt, view.hidden_layers() + outputs))
    return profile


def spearman(values) -> float:
    """Spearman correlation of ``values`` with their position (NaN for a constant series)."""
    v = np.asarray(values, float)
    if v.size < 2 or np.all(v == v[0]):
        return float("nan")
    return float(np.corrcoef(np.arange(v.size), rankdata(v))[0, 1])


# ---------------------------------------------------------------------- A&B: depth
DEPTH = "Probe error falls near-monotonically with depth in a trained network (Alain & Bengio 2016, Fig. 3 right, 4, 5)"
AB_DEPTH_PAPER = "A&B's MNIST convnet on MNIST (Fig. 3), ResNet-50 and Inception v3 on ImageNet (Fig. 4, 5)"


def depth_finding(view: ResultsView, models: dict[str, str] | None = None) -> Finding:
    """Near-monotone fall of probe error with depth at the trained generalizing network."""
    rule = (f"over input, hidden and output layers in model order at the last checkpoint: every step up in test "
            f"error <= {DEPTH_TOLERANCE} and Spearman rho(depth, error) <= {DEPTH_MAX_SPEARMAN}")
    gen = view.generalizing_run()
    if gen is None:
        return Finding("depth", DEPTH, None, detail="no trained run with corruption 0 in the table")
    ckpt = view.last_checkpoint(gen)
    setting = setting_note(view, gen, models, AB_DEPTH_SETTINGS, AB_DEPTH_PAPER)
    if view.has_epochs(gen) and view.epochs[(gen, ckpt)] == 0:
        return Finding("depth", DEPTH, None, {"setting": setting, "run": gen, "checkpoint": ckpt},
                       detail="the generalizing run's last checkpoint is epoch 0 (untrained)")
    errors = _depth_profile(view, gen, ckpt)
    if len(errors) < 3:
        return Finding("depth", DEPTH, None, {"setting": setting, "run": gen, "checkpoint": ckpt},
                       detail="fewer than three layers with a classifier probe")  # fmt: skip
    layers, values = list(errors), np.array(list(errors.values()))
    steps = np.diff(values)
    worst = int(np.argmax(steps))
    rho = spearman(values)
    # (1e-9: the thresholds are met exactly by, e.g., a rise of 0.01 or one swap among 5 layers)
    holds = bool(steps[worst] <= DEPTH_TOLERANCE + 1e-9 and rho <= DEPTH_MAX_SPEARMAN + 1e-9)
    numbers = {
        "setting": setting, "run": gen, "checkpoint": ckpt,
        "shallowest": f"{layers[0]} {values[0]:.4f}", "deepest": f"{layers[-1]} {values[-1]:.4f}",
        "steps that increase": f"{int(np.sum(steps > 0))} of {steps.size}",
        "largest step up": (f"{layers[worst]} -> {layers[worst + 1]} {steps[worst]:+.4f}" if steps[worst] > 0
                            else "none"),
        "Spearman rho (depth, error)": _r(rho),
        "test error per layer": {k: _r(v) for k, v in errors.items()},
    }  # fmt: skip
    return Finding("depth", DEPTH, holds, numbers, detail=rule)


# ---------------------------------------------------------------------- A&B: random features
RANDOM = ("The random network's layers separate the classes better than the raw pixels "
          "(Alain & Bengio 2016, Fig. 3 left)")
AB_RANDOM_PAPER = "A&B's MNIST convnet at initialization (Fig. 3 left: test error 8% on the pixels, 2% at best)"


def random_features_finding(view: ResultsView, models: dict[str, str] | None = None) -> Finding:
    """Best layer of the untrained network vs the input layer, with a margin."""
    ref = view.random_reference()
    inp = view.input_layer()
    if ref is None:
        return Finding("random_features", RANDOM, None, detail="no epoch-0 checkpoint and no run named 'random'")
    run, ckpt = ref
    setting = setting_note(view, run, models, AB_RANDOM_SETTINGS, AB_RANDOM_PAPER)
    if inp is None:
        return Finding("random_features", RANDOM, None, {"setting": setting},
                       detail="no 'input' layer probed (raw pixels)")
    input_error = _input_error(view, run, ckpt)
    profile = _depth_profile(view, run, ckpt)
    features = {k: v for k, v in profile.items() if k != inp}
    if input_error is None or not features:
        return Finding("random_features", RANDOM, None, {"setting": setting, "random network": f"{run}/{ckpt}"},
                       detail="no classifier probe of the input layer or of a layer of the random network")  # fmt: skip
    best = min(features, key=lambda layer: features[layer])
    layers, values = list(profile), np.array(list(profile.values()))
    drops = np.diff(values)
    biggest = int(np.argmin(drops))
    numbers = {
        "setting": setting,
        "random network": f"{run}/{ckpt}",
        "input test error": _r(input_error),
        "best layer": f"{best} {features[best]:.4f}",
        "gain over the input": _r(input_error - features[best]),
        "largest single drop (A&B: the first ReLU)": f"{layers[biggest]} -> {layers[biggest + 1]} {drops[biggest]:+.4f}",
        "test error per layer": {k: _r(v) for k, v in profile.items()},
    }
    holds = bool(features[best] < input_error - RANDOM_MARGIN)
    return Finding("random_features", RANDOM, holds, numbers,
                   detail=f"min over the random network's layers of the probe test error < the input's - {RANDOM_MARGIN}")  # fmt: skip


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
SELECTIVITY = ("Probes on a deeper layer are more selective than on the first hidden layer (Hewitt & Liang 2019: "
               "probes on ELMo's second layer are substantially more selective than on its first)")


def selectivity_finding(view: ResultsView) -> Finding:
    """Selectivity of the last vs the first hidden layer at the trained generalizing network.

    Hewitt & Liang's layer comparison, on the control task of recurring input types
    (docs/science.md §2): a deeper layer that has abstracted away which input it saw
    leaves the probe less to memorize. No paper claims anything about the selectivity
    of memorizing networks, so this finding does not compare runs.
    """
    rule = ("at the generalizing run's last checkpoint: selectivity (test accuracy, true − control labels, the "
            "control probe at the true-label probe's C) of the last hidden layer > that of the first hidden layer")
    gen = view.generalizing_run()
    if gen is None:
        return Finding("selectivity", SELECTIVITY, None, detail="no trained run with corruption 0 in the table")
    try:
        data = selectivity_data(view)
    except SkipFigure as skip:
        return Finding("selectivity", SELECTIVITY, None, detail=str(skip))
    ckpt = view.last_checkpoint(gen)
    sub = data[(data["run"] == gen) & data["layer"].isin(view.hidden_layers()) & np.isfinite(data["selectivity"])]
    if len(sub) < 2:
        return Finding("selectivity", SELECTIVITY, None, {"run": gen, "checkpoint": ckpt},
                       detail="fewer than two hidden layers with a selectivity (control probes failed or absent?)")
    order = {layer: i for i, layer in enumerate(view.layers)}
    sub = sub.sort_values("layer", key=lambda s: s.map(order))
    first, last = sub.iloc[0], sub.iloc[-1]
    numbers = {
        "run": gen, "checkpoint": ckpt,
        "first hidden": f"{first['layer']} {first['selectivity']:.4f}",
        "last hidden": f"{last['layer']} {last['selectivity']:.4f}",
        "selectivity per hidden layer": {r["layer"]: _r(r["selectivity"]) for _, r in sub.iterrows()},
        "control test accuracy per hidden layer": {r["layer"]: _r(r["control_test_accuracy"]) for _, r in sub.iterrows()},
    }  # fmt: skip
    return Finding("selectivity", SELECTIVITY, bool(last["selectivity"] > first["selectivity"]), numbers, detail=rule)


def compute_findings(view: ResultsView, *, concept: str | None = None,
                     models: dict[str, str] | None = None) -> list[Finding]:
    """All headline findings, in the order of the papers' narrative.

    ``models`` (run -> model name, :func:`run_models` of the store) lets Alain &
    Bengio's findings say whether the run is the paper's setting.
    """
    return [
        depth_finding(view, models),
        random_features_finding(view, models),
        training_finding(view),
        rcv_corruption_finding(view, concept),
        clean_first_finding(view),
        selectivity_finding(view),
    ]
