"""Tests of ``analyze.report``: files written, figures' numbers, findings' verdicts.

The results table is synthetic but shaped like the engine's: 3 runs (corruption 0,
0.5, 1.0), checkpoints at epochs 0, 1, 3, 5, layers input + relu1..relu4, classifier,
control, RCV (area, eccentricity) and model_output rows. Its numbers follow closed
forms, so each finding can be made to hold or not and its numbers checked by hand.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyze.report import build_report, compute_findings, make_view, read_results, style
from analyze.report import figures as F
from analyze.report import findings as FD
from probestore.errors import ConfigError, DataError, NotFoundError
from tests.helpers.report_table import (
    EPOCHS,
    LAYERS,
    area_r2,
    clf_error,
    make_table,
    progress,
)

PNG = b"\x89PNG\r\n\x1a\n"


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def img_sources(html: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", html)


def verdicts(df: pd.DataFrame) -> dict[str, bool | None]:
    return {f.key: f.holds for f in compute_findings(make_view(df))}


# ---------------------------------------------------------------------- whole report
def test_full_report_files_and_findings(tmp_path):
    df = make_table()
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "probe_id": "gen/epoch005/relu1/rcv/broken", "probe": "rcv",
                       "target": "broken", "status": "failed", "message": "NaN in <features>"}  # fmt: skip
    index = build_report(write(df, tmp_path / "results.parquet"), None, tmp_path / "rep")
    assert index == tmp_path / "rep" / "index.html"
    html = index.read_text()
    sources = img_sources(html)
    assert len(sources) == 7  # every figure drawn, the MSPE table as a PNG too
    for src in sources:
        data = (index.parent / src).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, src
    assert "skipped:" not in html
    # Table text is escaped, and the failed probe is counted.
    assert "&lt;features&gt;" in html and "<features>" not in html
    assert "Probes left out or flagged" in html and "<td>failed</td><td>1</td>" in html
    md = (tmp_path / "rep" / "report.md").read_text()
    for statement in (FD.DEPTH, FD.RANDOM, FD.TRAINING, FD.RCV, FD.CLEAN, FD.SELECTIVITY):
        assert f"**{statement}**: *holds*" in md
        assert f"<td>{escape(statement)}</td><td><span class='holds'>holds</span></td>" in html
    for src in sources:
        assert f"]({src})" in md
    # Layer order: natural sort with input first, although rows came sorted by probe_id.
    assert "Layers (model order): input, relu1, relu2, relu3, relu4" in md


def test_csv_and_parquet_give_the_same_report(tmp_path):
    df = make_table(clean_first=False)
    a = read_results(write(df, tmp_path / "r.csv"))
    b = read_results(write(df, tmp_path / "r.parquet"))
    fa, fb = compute_findings(make_view(a)), compute_findings(make_view(b))
    assert [(f.key, f.holds, f.numbers) for f in fa] == [(f.key, f.holds, f.numbers) for f in fb]
    assert {f.key: f.holds for f in fa}["clean_first"] is False


def test_missing_rows_give_notes_not_exceptions(tmp_path):
    df = make_table()
    df = df[~df["probe"].isin(["rcv", "model_output"])]
    index = build_report(write(df, tmp_path / "r.parquet"), out_dir=tmp_path / "rep")
    html = index.read_text()
    md = (tmp_path / "rep" / "report.md").read_text()
    for key in ("rcv_epochs", "rcv_corruption", "mspe_table"):
        assert f"<section id='{key}'><h3>" in html
    assert html.count("skipped: no rcv rows") == 3 and md.count("*skipped: no rcv rows*") == 3
    assert "skipped: no model_output rows" in html
    assert len(img_sources(html)) == 3
    for src in img_sources(html):
        assert (index.parent / src).read_bytes().startswith(PNG)
    found = {f.key: f for f in compute_findings(make_view(df))}
    assert found["rcv_corruption"].holds is None and found["clean_first"].holds is None
    assert found["depth"].holds is True


def test_minimal_table_one_run_one_checkpoint(tmp_path):
    df = make_table()
    df = df[(df["run"] == "mem50") & (df["checkpoint"] == "epoch003") & (df["probe"] == "classifier")]
    df = df.drop(columns=["selectivity_test", "status", "epoch"])
    index = build_report(write(df, tmp_path / "r.csv"), out_dir=tmp_path / "rep")
    html = index.read_text()
    assert len(img_sources(html)) == 2  # layer error + heatmap
    assert html.count("class='skipped'") == 5
    found = {f.key: f.holds for f in compute_findings(make_view(read_results(tmp_path / "r.csv")))}
    assert set(found.values()) == {None}


def test_all_probes_failed_or_duplicated(tmp_path):
    df = make_table()
    failed = df.assign(status="failed", message="single class")
    index = build_report(write(failed, tmp_path / "r.parquet"), out_dir=tmp_path / "rep")
    html = index.read_text()
    assert img_sources(html) == [] and html.count("skipped: ") == 7
    assert f"<td>failed</td><td>{len(df)}</td>" in html
    # A repeated probe row does not double-count; the last copy wins.
    dup = pd.concat([df, df[df["probe"] == "classifier"].assign(test_error=0.5)])
    view = make_view(dup)
    assert len(view.rows) == len(df)
    assert view.select("classifier", "true_labels", run="gen", checkpoint="epoch005", layer="relu2")["test_error"].item() == 0.5


def test_default_out_dir_and_bad_inputs(tmp_path):
    path = write(make_table(), tmp_path / "results.parquet")
    with pytest.raises(ConfigError, match="did you mean 'area'"):
        build_report(path, rcv_concepts="aera")
    with pytest.raises(ConfigError, match="relu4"):
        build_report(path, table_layer="relu44")
    with pytest.raises(NotFoundError):
        build_report(tmp_path / "nope.parquet")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(ConfigError, match="parquet"):
        build_report(tmp_path / "r.txt")
    write(pd.DataFrame({"run": ["a"], "layer": ["b"]}), tmp_path / "bad.csv")
    with pytest.raises(DataError, match="key columns"):
        build_report(tmp_path / "bad.csv")
    assert not (tmp_path / "results_report").exists()  # nothing written before validation
    index = build_report(path, rcv_concepts="eccentricity", rcv_layers=["relu2"])
    assert index == tmp_path / "results_report" / "index.html"
    md = (tmp_path / "results_report" / "report.md").read_text()
    # The chosen concept drives the corruption finding: eccentricity's R² ignores corruption.
    assert "  - concept: eccentricity" in md and f"**{FD.RCV}**: *does not hold*" in md
    assert "Layer: relu1" in index.read_text()  # default MSPE table layer: first hidden


def test_store_gives_layer_order_and_dataset(tmp_path):
    from storage_schema.store import create_store

    n = 6
    store = create_store(tmp_path / "s.zarr", dataset_name="toy-mnist", sample_ids=[f"s{i}" for i in range(n)],
                         labels=[0, 1] * 3, splits=[0, 0, 1, 1, 2, 2], class_names=["zero", "one"])  # fmt: skip
    store.add_run("gen", model={"name": "mlp"}, architecture="mlp", train_labels=np.array([0, 1] * 3),
                  corrupted=np.zeros(n, bool), corruption={"fraction": 0.0, "mode": "none", "seed": 0})  # fmt: skip
    store.add_checkpoint("gen", "epoch005", epoch=5)
    model_order = ["input", "relu4", "relu2", "relu1", "relu3"]  # not any sort order
    for layer in model_order:
        store.create_block("gen", "epoch005", layer, n_features=3)
    store.set_layer_order("gen", "epoch005", model_order)
    store.close()
    df = make_table()
    df = df[(df["run"] == "gen") & (df["checkpoint"] == "epoch005")]
    assert make_view(df).layers == ["input", "relu1", "relu2", "relu3", "relu4"]
    view = make_view(df, tmp_path / "s.zarr")
    assert view.layers == model_order and view.layer_order_source == "store"
    index = build_report(write(df, tmp_path / "r.parquet"), tmp_path / "s.zarr", tmp_path / "rep")
    html = index.read_text()
    assert "probestore report: toy-mnist" in html and "2 classes" in html
    # The depth finding follows the store's order: input, relu4, relu2, relu1, relu3.
    depth = FD.depth_finding(view)
    assert list(depth.numbers["test error per layer"]) == model_order
    assert depth.numbers["shallowest"].startswith("input") and depth.numbers["deepest"].startswith("relu3")
    # The store names the model: an MLP on "toy-mnist" is not A&B's setting, and the report says so.
    assert FD.run_models(tmp_path / "s.zarr") == {"gen": "mlp"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "  - setting: NOT the paper's: mlp on toy-mnist;" in md


# ---------------------------------------------------------------------- findings, hold / not hold
@pytest.mark.parametrize(
    "flag, key",
    [
        ("depth_falls", "depth"),
        ("random_beats_pixels", "random_features"),
        ("training_helps", "training"),
        ("rcv_deep_falls", "rcv_corruption"),
        ("clean_first", "clean_first"),
        ("deeper_more_selective", "selectivity"),
    ],
)
def test_each_finding_flips_with_its_data(flag, key):
    assert verdicts(make_table())[key] is True
    flipped = verdicts(make_table(**{flag: False}))
    assert flipped[key] is False
    # Only findings that read the same numbers may change with it.
    coupled = {"depth_falls": {"selectivity", "training"}, "random_beats_pixels": {"training"},
               "training_helps": {"selectivity"}}.get(flag, set())  # fmt: skip
    assert all(v is True for k, v in flipped.items() if k != key and k not in coupled)


def test_finding_numbers_match_hand_computation():
    view = make_view(make_table())
    found = {f.key: f for f in compute_findings(view)}
    p5 = progress(5)
    errs = [clf_error(0.0, d, 5) for d in range(1, 5)]
    depth = found["depth"]
    assert depth.numbers["run"] == "gen" and depth.numbers["checkpoint"] == "epoch005"
    assert depth.numbers["steps that increase"] == "0 of 4" and depth.numbers["largest step up"] == "none"
    assert depth.numbers["test error per layer"] == pytest.approx(dict(zip(LAYERS, [0.12, *errs])), abs=1e-4)
    assert depth.numbers["Spearman rho (depth, error)"] == -1.0
    assert depth.numbers["setting"].startswith("unknown (no store given")
    rnd = found["random_features"]
    assert rnd.numbers["random network"] == "gen/epoch000"
    assert rnd.numbers["input test error"] == pytest.approx(0.12)
    assert rnd.numbers["best layer"] == f"relu4 {0.08 - 0.02:.4f}"
    assert rnd.numbers["gain over the input"] == pytest.approx(0.12 - 0.06)
    rcv = found["rcv_corruption"]
    # R² is linear in corruption: slope = -0.1 * depth * progress (0 at the input).
    assert rcv.numbers["slope per layer"] == pytest.approx({f"relu{d}": -0.1 * d * p5 for d in range(1, 5)}, abs=1e-4)
    clean = found["clean_first"].numbers["epoch learned, per run"]
    assert set(clean) == {"mem50"}  # mem100 has no clean samples
    assert clean["mem50"].startswith("clean at 1, corrupted at 3")  # half-times of clean_acc(fast / slow)
    sel = found["selectivity"].numbers
    assert sel["run"] == "gen" and sel["checkpoint"] == "epoch005"
    assert sel["selectivity per hidden layer"] == pytest.approx(
        {f"relu{d}": 0.9 - clf_error(0.0, d, 5) for d in range(1, 5)}, abs=1e-4)
    assert sel["first hidden"] == f"relu1 {0.9 - clf_error(0.0, 1, 5):.4f}"
    assert sel["control test accuracy per hidden layer"] == pytest.approx({f"relu{d}": 0.1 for d in range(1, 5)},
                                                                          abs=1e-4)


def test_learned_at_uses_the_gain_not_the_final_value():
    x = [0, 1, 3, 5]
    assert FD.learned_at(x, [0.1, 0.5, 0.95, 1.0]) == 3
    assert FD.learned_at(x, [0.1, 0.91, 0.95, 1.0]) == 1
    # 10% -> 12% is chance throughout: not learned (90% of *final* would say epoch 0).
    assert FD.learned_at(x, [0.10, 0.11, 0.115, 0.12]) is None


def test_clean_first_uses_the_half_time_on_coarse_checkpoints():
    """The demo's memorizing-0.5 curves: clean is learned first although both end high."""
    x = [0, 10, 30, 60]
    clean, corrupted = [0.081, 0.823, 0.875, 0.970], [0.104, 0.047, 0.410, 0.913]
    assert FD.learned_at(x, clean) == 10 and FD.learned_at(x, corrupted) == 60
    # a 90% threshold would have put both on the last checkpoint
    assert FD.learned_at(x, clean, fraction=0.9) == FD.learned_at(x, corrupted, fraction=0.9) == 60


def test_slope_against_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.random(7), rng.random(7)
    assert FD.slope(x, y) == pytest.approx(np.cov(x, y, bias=True)[0, 1] / np.var(x))
    assert math.isnan(FD.slope([0.5, 0.5], [1, 2]))


# ---------------------------------------------------------------------- figures' data
def test_mspe_table_roles_and_values():
    df = make_table()
    view = make_view(df)
    data = F.mspe_table_data(view)
    assert data.attrs["layer"] == "relu1"
    assert data.attrs["sources"] == {"random": "gen/epoch000", "memorizing": "mem100/epoch005",
                                     "generalizing": "gen/epoch005"}  # fmt: skip
    assert list(data.index) == ["random", "memorizing", "generalizing"]
    assert data.loc["memorizing", "area"] == pytest.approx(2.0 * (1 - area_r2(1.0, 1, 5)))
    assert data.loc["random", "eccentricity"] == pytest.approx(0.1 * 0.5)
    cells = dict(F.mspe_cells(data))
    assert cells["generalizing"][0] == (f"{2.0 * (1 - area_r2(0.0, 1, 5)):.3g}", True)  # lowest area MSPE
    # A run named "random" takes the random row; table_layer picks the layer.
    rnd = df[(df["run"] == "gen") & (df["checkpoint"] == "epoch000")].assign(run="random", checkpoint="init")
    data = F.mspe_table_data(make_view(pd.concat([df, rnd])), "relu3")
    assert data.attrs["sources"]["random"] == "random/init" and data.attrs["layer"] == "relu3"


def test_selectivity_recomputed_when_column_missing():
    df = make_table().drop(columns=["selectivity_test"])
    data = F.selectivity_data(make_view(df))
    row = data[(data["run"] == "mem50") & (data["layer"] == "relu2")].iloc[0]
    assert row["selectivity"] == pytest.approx(0.9 - clf_error(0.5, 2, 5))
    assert row["control_train_accuracy"] == pytest.approx(0.6)


def test_rcv_corruption_and_clean_data():
    view = make_view(make_table())
    data = F.rcv_corruption_data(view)
    assert data.attrs["concepts"] == ["area"]
    got = data[data["layer"] == "relu3"].set_index("corruption_fraction")["test_r2"]
    assert got.to_dict() == pytest.approx({c: area_r2(c, 3, 5) for c in (0.0, 0.5, 1.0)})
    clean = F.clean_corrupted_data(view)
    assert set(clean["run"]) == {"mem50", "mem100"}
    mem100 = clean[clean["run"] == "mem100"]
    assert "clean samples" not in set(mem100["series"])  # a fully corrupted run has none
    r = clean[(clean["run"] == "mem50") & (clean["series"] == "corrupted vs true labels") & (clean["x"] == 3)]
    assert r["accuracy"].iloc[0] == pytest.approx(0.1 + 0.3 * progress(3))
    chosen = F.rcv_epochs_data(view)
    assert chosen.attrs["layers"] == ["relu1", "relu4"]
    assert chosen.attrs["concepts"] == ["area", "eccentricity"]  # area varies most


def test_one_colour_per_run_across_figures():
    view = make_view(make_table())
    colours = style.run_colors(view.runs)
    assert view.runs == ["gen", "mem50", "mem100"] and len(set(colours.values())) == 3
    figs = [
        F.plot_layer_error(F.layer_error_data(view), view),
        F.plot_rcv_epochs(F.rcv_epochs_data(view), view),
        F.plot_selectivity(F.selectivity_data(view), view),
    ]
    seen = 0
    for fig in figs:
        for ax in fig.axes:
            for line in ax.get_lines():
                run = line.get_label().split(" (")[0]
                if run in colours:
                    assert line.get_color() == colours[run]
                    seen += 1
        assert all(ax.get_ylabel() for ax in fig.axes if ax.get_visible() and ax.get_lines() and ax.get_legend())
    assert seen >= 3 * 2 + 3 * 2 * 2 + 3 * 3


def test_report_never_imports_torch_or_pyplot():
    code = (
        "import sys, analyze.report; "
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- TCAV section
TCAV_CLASSES = ("zero", "one")


def tcav_score(run: str, epoch: int, d: int, k: int) -> float:
    """Class "zero" grows sensitive to the concept with depth and training; "one" stays at random."""
    if k == 1:
        return 0.5
    return 0.5 + 0.1 * d * progress(epoch) * (1.0 if run == "gen" else 0.3)


def make_tcav_table(*, rcv=True, conexp=True) -> pd.DataFrame:
    """A table shaped like `probestore tcav`'s, rows in a scrambled order."""
    rows = []
    for run in ("mem100", "gen"):  # not the report's run order
        for e in reversed(EPOCHS):
            base = {"run": run, "checkpoint": f"epoch{e:03d}", "epoch": e}
            for d, layer in reversed(list(enumerate(LAYERS))):
                if layer == "input":
                    continue
                for k, name in enumerate(TCAV_CLASSES):
                    s = tcav_score(run, e, d, k)
                    p = 1e-4 if s > 0.55 else 0.6
                    rows.append({**base, "method": "tcav", "layer": layer, "concept": "striped", "class_index": k,
                                 "class_name": name, "n_samples": 40, "repeats": 10, "score_mean": s,
                                 "score_std": 0.05, "random_mean": 0.5, "random_std": 0.1, "t": 3.0,
                                 "p_value": p, "effect_size": (s - 0.5) / 0.08, "alpha": 0.05,
                                 "significant": p < 0.05})
                    if rcv:
                        rows.append({**base, "method": "rcv", "layer": layer, "concept": "area", "class_index": k,
                                     "class_name": name, "n_samples": 40, "score_mean": 0.01 * d - k,
                                     "sign_fraction": 0.9 - 0.8 * k, "rcv_r2_test": 0.7})
            if conexp:
                for k, name in enumerate(TCAV_CLASSES):
                    rows.append({**base, "method": "conexp", "layer": None, "concept": "striped", "class_index": k,
                                 "class_name": name, "n_samples": 200, "n_concept": 50,
                                 "score_mean": 1.5 - k, "conexp_score": "logit"})
    return pd.DataFrame(rows)


def section(html: str, key: str) -> str:
    start = html.index(f"<section id='{key}'>")
    return html[start:html.index("</section>", start)]


def table_cells(html_section: str) -> list[list[str]]:
    body = html_section[html_section.index("<tbody>"):html_section.index("</tbody>")]
    return [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", body)]


def test_tcav_section_tables_and_figure(tmp_path):
    from analyze.report import sensitivity as S

    results = write(make_table(), tmp_path / "r.parquet")
    tcav = write(make_tcav_table(), tmp_path / "tcav.parquet")
    index = build_report(results, None, tmp_path / "rep", tcav_path=tcav)
    html = index.read_text()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"<h2>{escape(S.SECTION)}</h2>" in html and f"## {S.SECTION}" in md
    # Significance table: every TCAV row, in run / checkpoint / class / layer order, numbers as in the table.
    cells = table_cells(section(html, "tcav_table"))
    assert len(cells) == 2 * len(EPOCHS) * 4 * len(TCAV_CLASSES)
    assert [c[0] for c in cells[:1] + cells[-1:]] == ["gen", "mem100"]
    first = cells[0]
    assert first[:5] == ["gen", "epoch000 (epoch 0)", "relu1", "striped", "zero"]
    assert first[5] == "0.500" and first[10] == "no"
    # gen, last checkpoint, class zero, relu4: score 0.5 + 0.4 * progress(5), significant.
    row = next(c for c in cells if c[:5] == ["gen", "epoch005 (epoch 5)", "relu4", "striped", "zero"])
    s = tcav_score("gen", 5, 4, 0)
    assert row[5:] == [f"{s:.3f}", "0.050", "0.500 ± 0.100", "0.0001", f"{(s - 0.5) / 0.08:.2f}", "yes"]
    n_sig = sum(c[10] == "yes" for c in cells)
    assert n_sig == sum(tcav_score(r, e, d, 0) > 0.55 for r in ("gen", "mem100") for e in EPOCHS for d in range(1, 5))
    assert f"{n_sig} of {len(cells)} tests significant at a per-test alpha = 0.05" in html
    assert "| gen | epoch005 (epoch 5) | relu4 | striped | zero |" in md
    # The per-layer figure: last checkpoint of each run, layers in model order, concept and random lines.
    data = S.tcav_layers_data(make_view(read_results(results)), S.read_tcav(tcav))
    assert set(data["checkpoint"]) == {"epoch005"}
    gen = data[(data["run"] == "gen") & (data["class_name"] == "zero")]
    assert list(gen["layer"]) == ["relu1", "relu2", "relu3", "relu4"]
    assert gen["score_mean"].to_numpy() == pytest.approx([tcav_score("gen", 5, d, 0) for d in range(1, 5)])
    fig = S.plot_tcav_layers(data, make_view(read_results(results)))
    assert [ax.get_title() for ax in fig.axes[:2]] == ["striped → zero", "striped → one"]
    ys = {c.get_label(): c.lines[0].get_ydata() for c in fig.axes[0].containers}
    assert np.asarray(ys["gen, epoch005 (epoch 5): concept"]) == pytest.approx(gen["score_mean"].to_numpy())
    assert "figures/tcav_layers.png" in img_sources(html)
    assert (tmp_path / "rep" / "figures" / "tcav_layers.png").read_bytes().startswith(PNG)
    # RCV sensitivity and ConExp: last checkpoints only.
    rcv = table_cells(section(html, "rcv_sensitivity"))
    assert len(rcv) == 2 * 4 * 2 and {c[1] for c in rcv} == {"epoch005 (epoch 5)"}
    assert ["gen", "epoch005 (epoch 5)", "relu3", "area", "one", f"{0.03 - 1:.3g}", "0.100", "0.700"] in rcv
    conexp = table_cells(section(html, "conexp"))
    assert conexp == [["gen", "epoch005 (epoch 5)", "striped", "zero", "1.5", "50", "200"],
                      ["gen", "epoch005 (epoch 5)", "striped", "one", "0.5", "50", "200"],
                      ["mem100", "epoch005 (epoch 5)", "striped", "zero", "1.5", "50", "200"],
                      ["mem100", "epoch005 (epoch 5)", "striped", "one", "0.5", "50", "200"]]
    assert "skipped:" not in html and "not drawn: no TCAV" not in html


def test_tcav_section_notes_and_bad_tables(tmp_path):
    from analyze.report import sensitivity as S

    small = make_table()  # one checkpoint's classifier rows: few figures to draw, the TCAV section is the same
    small = small[(small["checkpoint"] == "epoch005") & (small["probe"] == "classifier")]
    results = write(small, tmp_path / "r.parquet")
    html = build_report(results, None, tmp_path / "a").read_text()
    assert "<p class='optional'>not drawn: no TCAV table" in html and html.count("not drawn: no TCAV") == 1
    assert "tcav_layers.png" not in html
    # A TCAV-only table: RCV sensitivity and ConExp are optional notes, not skipped figures.
    only = write(make_tcav_table(rcv=False, conexp=False), tmp_path / "t.csv")
    html = build_report(results, None, tmp_path / "b", tcav_path=only).read_text()
    assert "<p class='optional'>not drawn: the TCAV table has no rcv rows" in html
    assert "<p class='optional'>not drawn: the TCAV table has no conexp rows" in html
    assert "figures/tcav_layers.png" in img_sources(html)
    # No tcav rows at all: the TCAV entries are skipped (asked for, but absent).
    conexp_only = make_tcav_table(rcv=False)
    conexp_only = write(conexp_only[conexp_only["method"] == "conexp"], tmp_path / "c.parquet")
    html = build_report(results, None, tmp_path / "c", tcav_path=conexp_only).read_text()
    assert html.count("skipped: the TCAV table has no tcav rows") == 2 and len(table_cells(section(html, "conexp"))) == 4
    # Long tables are capped with a pointer to the file.
    big = make_tcav_table()
    big = pd.concat([big.assign(concept=f"c{i}") for i in range(4)])
    write(big, tmp_path / "big.parquet")
    html = build_report(results, None, tmp_path / "d", tcav_path=tmp_path / "big.parquet").read_text()
    assert len(table_cells(section(html, "tcav_table"))) == S.MAX_TABLE_ROWS
    assert f"First {S.MAX_TABLE_ROWS} of {4 * 64} rows; all are in {tmp_path / 'big.parquet'}" in html
    # Bad inputs: one-line errors naming the fix, nothing written.
    with pytest.raises(NotFoundError, match="probestore tcav"):
        build_report(results, None, tmp_path / "e", tcav_path=tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="lacks columns"):
        build_report(results, None, tmp_path / "e", tcav_path=results)  # a results table, not a TCAV table
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(ConfigError, match="parquet"):
        build_report(results, None, tmp_path / "e", tcav_path=tmp_path / "t.json")
    assert not (tmp_path / "e").exists()


def test_tcav_cli_on_a_real_tcav_run(tmp_path):
    """`probestore tcav` on a tiny store with a planted concept, then `probestore report --tcav`."""
    from probestore.cli import main
    from tests.helpers.tcav import planted_store

    store, _ = planted_store(tmp_path / "s.zarr")
    store.close()
    tcav = tmp_path / "tcav.parquet"
    assert main(["tcav", str(tmp_path / "s.zarr"), "-o", str(tcav), "--repeats", "8", "--random-size", "20",
                 "--seed", "1"]) == 0
    df = make_table()
    df = df[(df["run"] == "gen") & (df["checkpoint"] == "epoch005") & (df["layer"] == "relu1")]
    df = df.assign(run="r", checkpoint="e1", epoch=1, layer="fc")
    results = write(df, tmp_path / "r.parquet")
    out = tmp_path / "rep"
    assert main(["report", str(results), "--store", str(tmp_path / "s.zarr"), "-o", str(out), "--tcav", str(tcav)]) == 0
    html = (out / "index.html").read_text()
    cells = {c[4]: c for c in table_cells(section(html, "tcav_table"))}
    assert set(cells) == {"zero", "one", "two"}
    # Planted: class zero's logit grows along the concept, class one's shrinks; both significant.
    assert float(cells["zero"][5]) > 0.95 and cells["zero"][10] == "yes"
    assert float(cells["one"][5]) < 0.05 and cells["one"][10] == "yes"
    assert cells["zero"][:4] == ["r", "e1 (epoch 1)", "fc", "striped"]
    table = pd.read_parquet(tcav).query("method == 'tcav'").set_index("class_name")
    for name, c in cells.items():
        t = table.loc[name]
        assert c[5:7] == [f"{t.score_mean:.3f}", f"{t.score_std:.3f}"] and c[8] == f"{t.p_value:.2g}"
        assert c[10] == ("yes" if t.significant else "no")
    assert len(table_cells(section(html, "rcv_sensitivity"))) == 3 and len(table_cells(section(html, "conexp"))) == 3
    assert (out / "figures" / "tcav_layers.png").read_bytes().startswith(PNG)


# ---------------------------------------------------------------------- A&B's rules on hand-made profiles
#: Alain & Bengio's Fig. 4a: validation error of the probes of a pre-trained ResNet-50,
#: input_1 then add_1..add_16 ("almost perfectly monotonic", one rise of 0.01).
RESNET50_FIG4A = [0.99, 0.94, 0.89, 0.88, 0.87, 0.82, 0.79, 0.76, 0.77, 0.69, 0.67, 0.62, 0.57, 0.51, 0.41, 0.39, 0.31]
AB_LAYERS = ("input", "conv1_preact", "conv1_postact", "conv1_postpool", "conv2_preact", "conv2_postact",
             "conv2_postpool", "fc1_preact", "fc1_postact", "logits")  # fmt: skip


def profile_view(trained: list[float], *, init: list[float] | None = None, layers=None, last_epoch: int = 5,
                 dataset: str | None = "mnist-t10k"):
    """A one-run table: classifier test errors per layer at epoch 0 (``init``) and ``last_epoch``."""
    import dataclasses

    layers = list(layers or AB_LAYERS[: len(trained)])
    rows = []
    for epoch, errors in ((0, init or [0.5] * len(layers)), (last_epoch, trained)):
        for layer, err in zip(layers, errors, strict=True):
            ckpt = f"epoch_{epoch:04d}"
            rows.append({"probe_id": f"gen/{ckpt}/{layer}/classifier/true_labels", "run": "gen", "checkpoint": ckpt,
                         "epoch": epoch, "layer": layer, "probe": "classifier", "target": "true_labels",
                         "corruption_fraction": 0.0, "test_error": err, "status": "ok"})  # fmt: skip
    view = make_view(pd.DataFrame(rows))
    view = dataclasses.replace(view, layers=layers)  # model order, as a store would give it
    return dataclasses.replace(view, dataset_name=dataset)


PAPER = {"gen": "ab_mnist_convnet"}


def test_depth_rule_passes_the_papers_own_profiles():
    # ResNet-50 (Fig. 4a), its one rise of exactly 0.01 included (float noise tolerated).
    found = FD.depth_finding(profile_view(RESNET50_FIG4A, layers=["input"] + [f"add_{i}" for i in range(1, 17)]))
    assert found.holds is True
    assert found.numbers["largest step up"] == "add_7 -> add_8 +0.0100"
    assert found.numbers["Spearman rho (depth, error)"] == pytest.approx(-0.9975, abs=1e-4)
    # The MNIST convnet trained (Fig. 3 right): falls at every probe but a minor kink at fc1_preact.
    fig3 = [0.08, 0.075, 0.04, 0.03, 0.025, 0.02, 0.015, 0.017, 0.012, 0.011]
    found = FD.depth_finding(profile_view(fig3), PAPER)
    assert found.holds is True and found.numbers["steps that increase"] == "1 of 9"
    assert found.numbers["setting"] == "the paper's (ab_mnist_convnet on mnist-t10k)"


@pytest.mark.parametrize(
    "errors, why",
    [
        # One real rise (0.03 > 0.01) although the profile falls overall and only 1 of 4 steps rises:
        # the old rule ("at most half the steps increase") called this a fall with depth.
        ([0.10, 0.05, 0.08, 0.04, 0.03], "largest step up"),
        # Flat within the tolerance at every step: no step is too large but no fall either (rho ~ 0).
        ([0.050, 0.055, 0.048, 0.056, 0.049, 0.054, 0.050], "Spearman"),
        # Rises with depth.
        ([0.02, 0.03, 0.035, 0.04, 0.045], "Spearman"),
    ],
)
def test_depth_rule_fails_on_profiles_that_do_not_fall_near_monotonically(errors, why):
    found = FD.depth_finding(profile_view(errors), PAPER)
    assert found.holds is False, (why, found.numbers)
    steps = np.diff(errors)
    assert (steps.max() > FD.DEPTH_TOLERANCE + 1e-9) == (why == "largest step up")
    assert (FD.spearman(errors) > FD.DEPTH_MAX_SPEARMAN + 1e-9) == (why == "Spearman")


def test_depth_rule_needs_a_trained_network_and_three_layers():
    assert FD.depth_finding(profile_view([0.1, 0.05, 0.02], last_epoch=0)).holds is None
    found = FD.depth_finding(profile_view([0.1, 0.05]))
    assert found.holds is None and "fewer than three layers" in found.detail


def test_random_features_rule_as_alain_bengio_state_it():
    # Fig. 3 left: 8% on the pixels, 2% at best on the random network's features.
    init = [0.08, 0.085, 0.045, 0.03, 0.028, 0.022, 0.02, 0.021, 0.025, 0.6]
    found = FD.random_features_finding(profile_view([0.01] * 10, init=init), PAPER)
    assert found.holds is True
    assert found.numbers["best layer"] == "conv2_postpool 0.0200"
    assert found.numbers["gain over the input"] == pytest.approx(0.06)
    assert found.numbers["largest single drop (A&B: the first ReLU)"] == "conv1_preact -> conv1_postact -0.0400"
    assert found.numbers["setting"] == "the paper's (ab_mnist_convnet on mnist-t10k)"
    # Better than the pixels, but by less than the margin: not "beats".
    close = [0.08, 0.085, 0.075, 0.072, 0.09]
    assert FD.random_features_finding(profile_view([0.01] * 5, init=close), PAPER).holds is False
    # Worse than the pixels everywhere.
    worse = [0.08, 0.12, 0.10, 0.15, 0.3]
    assert FD.random_features_finding(profile_view([0.01] * 5, init=worse), PAPER).holds is False


def test_the_rules_say_when_the_setting_is_not_the_papers():
    init = [0.08, 0.085, 0.045, 0.03, 0.028]
    mlp = FD.random_features_finding(profile_view([0.01] * 5, init=init, dataset="fashion-mnist"), {"gen": "mlp"})
    assert mlp.holds is True and mlp.numbers["setting"].startswith("NOT the paper's: mlp on fashion-mnist;")
    # The right model on other data is not the paper's setting either ("fashion-mnist" is not MNIST).
    other = FD.random_features_finding(profile_view([0.01] * 5, init=init, dataset="fashion-mnist"), PAPER)
    assert other.numbers["setting"].startswith("NOT the paper's: ab_mnist_convnet on fashion-mnist;")
    # ResNet-50 on ImageNet is a setting of the depth claim, not of the random-features claim.
    resnet = {"gen": "torchvision:resnet50"}
    view = profile_view([0.9, 0.8, 0.7], init=[0.99, 0.98, 0.97], dataset="imagenet-val")
    assert FD.depth_finding(view, resnet).numbers["setting"].startswith("the paper's")
    assert FD.random_features_finding(view, resnet).numbers["setting"].startswith("NOT the paper's")
