"""What the probing literature predicts for a pretrained language model, checked on this run.

A store whose rows are tokens or words (SCHEMA.md §12) comes from a text model; its
report adds three findings to the papers' (same :class:`~analyze.report.findings.Finding`
shape: statement, verdict, the numbers, the rule). Each is computed from the results
table at the pretrained run (the trained run without label corruption) and the
random-initialization run (a run named ``random...``), at their last checkpoints:

- **middle layers, accuracy** (Tenney et al. 2019, Liu et al. 2019: part of speech is
  best read from BERT's lower-middle layers; Hewitt & Liang 2019: from ELMo's first
  contextual layer, above its word-embedding layer): the layer with the highest probe
  test accuracy is neither the first probed layer (the embeddings) nor the last;
- **middle layers, selectivity** (Hewitt & Liang 2019: the embedding layer, where a
  probe can memorize word types, is the least selective; contextual layers more): the
  most selective layer is neither the first nor the last probed layer;
- **random initialization far below** (Hewitt & Liang's and the literature's random
  baselines; Zhang & Bowman 2018): at every layer the pretrained network's accuracy
  exceeds the random network's, and the best layers differ by at least :data:`FAR`.

The rules are written beside each verdict (``detail``) so that a reader can redo them
from the numbers; docs/science.md §10 gives them with the claims. Nothing is asserted:
a 6-layer sentence-embedding model may well disagree, and the report says so.
"""

from __future__ import annotations

import numpy as np

from analyze.report.figures import SkipFigure, selectivity_data
from analyze.report.findings import Finding
from analyze.report.table import ResultsView, is_random_run

#: Smallest gap of test accuracy between the pretrained and the random network's best
#: layers that counts as "far below" (10 points; the literature's gaps are 10-40 points).
FAR = 0.10

ACCURACY = ("Word-level probe accuracy (part of speech in the literature) is highest in a middle layer, above the "
            "embeddings and above the last layer (Tenney et al. 2019; Liu et al. 2019; Hewitt & Liang 2019 on ELMo)")
SELECTIVITY = ("Selectivity (accuracy minus control-task accuracy) is highest in a middle layer, not at the "
               "embeddings where a probe can memorize word types (Hewitt & Liang 2019)")
RANDOM = ("The same architecture at random initialization is far below the pretrained model at every layer "
          "(Hewitt & Liang 2019; Zhang & Bowman 2018)")


def text_unit(store_path) -> str | None:
    """The store's row unit (``"sequence"``, ``"token"``, ``"word"``) or None (images, no store)."""
    if store_path is None:
        return None
    from storage_schema.store import open_store

    with open_store(store_path, "r") as store:
        return store.unit


def _accuracy(view: ResultsView, run: str) -> dict[str, float]:
    """Test accuracy of the true-label probe per layer (model order) at the run's last checkpoint."""
    df = view.select("classifier", "true_labels", run=run, checkpoint=view.last_checkpoint(run)).set_index("layer")
    return {layer: float(1 - df.loc[layer, "test_error"]) for layer in view.layers
            if layer in df.index and np.isfinite(df.loc[layer, "test_error"])}


def _roles(view: ResultsView) -> tuple[str | None, str | None]:
    pretrained = view.generalizing_run()
    random = next((r for r in view.runs if is_random_run(r)), None)
    return pretrained, random


def _middle(values: dict[str, float]) -> tuple[str, bool]:
    """The best layer, and whether it is neither the first nor the last of ``values`` (model order)."""
    layers = list(values)
    best = max(layers, key=lambda layer: values[layer])
    return best, best not in (layers[0], layers[-1])


def accuracy_finding(view: ResultsView) -> Finding:
    rule = ("at the pretrained run's last checkpoint, the layer of highest test accuracy (true labels) is neither "
            "the first probed layer (embeddings) nor the last")
    pretrained, _ = _roles(view)
    if pretrained is None:
        return Finding("lm_accuracy_middle", ACCURACY, None, detail="no pretrained run (corruption 0) in the table")
    acc = _accuracy(view, pretrained)
    if len(acc) < 3:
        return Finding("lm_accuracy_middle", ACCURACY, None, {"run": pretrained},
                       detail="fewer than three layers with a classifier probe")
    best, middle = _middle(acc)
    numbers = {"run": pretrained, "best layer": f"{best} {acc[best]:.4f}",
               "first / last layer": f"{list(acc)[0]} {list(acc.values())[0]:.4f} / "
                                     f"{list(acc)[-1]} {list(acc.values())[-1]:.4f}",
               "test accuracy per layer": {k: round(v, 4) for k, v in acc.items()}}
    return Finding("lm_accuracy_middle", ACCURACY, middle, numbers, detail=rule)


def selectivity_finding(view: ResultsView) -> Finding:
    rule = ("at the pretrained run's last checkpoint, the most selective layer (test accuracy on the true labels "
            "minus on the word-type control task, the control probe at the true-label probe's C) is neither the "
            "first probed layer (embeddings) nor the last")
    pretrained, _ = _roles(view)
    if pretrained is None:
        return Finding("lm_selectivity_middle", SELECTIVITY, None, detail="no pretrained run (corruption 0)")
    try:
        data = selectivity_data(view)
    except SkipFigure as skip:
        return Finding("lm_selectivity_middle", SELECTIVITY, None, detail=str(skip))
    sub = data[(data["run"] == pretrained) & np.isfinite(data["selectivity"])].set_index("layer")
    sel = {layer: float(sub.loc[layer, "selectivity"]) for layer in view.layers if layer in sub.index}
    if len(sel) < 3:
        return Finding("lm_selectivity_middle", SELECTIVITY, None, {"run": pretrained},
                       detail="fewer than three layers with a selectivity (control probes failed or absent?)")
    best, middle = _middle(sel)
    control = {layer: round(float(sub.loc[layer, "control_test_accuracy"]), 4) for layer in sel}
    numbers = {"run": pretrained, "most selective layer": f"{best} {sel[best]:.4f}",
               "selectivity per layer": {k: round(v, 4) for k, v in sel.items()},
               "control test accuracy per layer": control}
    return Finding("lm_selectivity_middle", SELECTIVITY, middle, numbers, detail=rule)


def random_finding(view: ResultsView) -> Finding:
    rule = (f"at every layer probed in both, pretrained test accuracy > random initialization's, and the best "
            f"layers' accuracies differ by >= {FAR}")
    pretrained, random = _roles(view)
    if pretrained is None or random is None:
        return Finding("lm_random_below", RANDOM, None,
                       detail="needs a pretrained run (corruption 0) and a run named 'random...'")
    acc, rnd = _accuracy(view, pretrained), _accuracy(view, random)
    common = [layer for layer in acc if layer in rnd]
    if not common:
        return Finding("lm_random_below", RANDOM, None, {"runs": f"{pretrained}, {random}"},
                       detail="no layer with a classifier probe in both runs")
    gaps = {layer: acc[layer] - rnd[layer] for layer in common}
    best_gap = max(acc[layer] for layer in common) - max(rnd[layer] for layer in common)
    below_everywhere = all(g > 0 for g in gaps.values())
    numbers = {"runs": f"{pretrained} vs {random}",
               "best layers": f"{max(common, key=lambda c: acc[c])} {max(acc[c] for c in common):.4f} vs "
                              f"{max(common, key=lambda c: rnd[c])} {max(rnd[c] for c in common):.4f}",
               "gap of the best layers": round(best_gap, 4),
               "layers where random is not below": [layer for layer, g in gaps.items() if g <= 0] or "none",
               "accuracy gap per layer (pretrained - random)": {k: round(v, 4) for k, v in gaps.items()}}
    return Finding("lm_random_below", RANDOM, bool(below_everywhere and best_gap >= FAR), numbers, detail=rule)


def language_findings(view: ResultsView) -> list[Finding]:
    """The three language-model findings, in the order the report states them."""
    return [accuracy_finding(view), selectivity_finding(view), random_finding(view)]
