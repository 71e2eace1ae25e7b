"""The demo's pipeline shrunk to seconds: train → extract → analyze → report on real MNIST.

``make demo`` runs these four commands on three experiments; this test
runs the same commands, as subprocesses exactly as a user types them, on 600 MNIST t10k
images with a 2 x 32 MLP trained for 3 epochs (a generalizing and a 0.5-memorizing run),
so that a change that breaks the hand-over between two stages (a column the report
expects, a layer name the analysis cannot find) fails here and not at the end of a demo.
The third experiment, Alain & Bengio's MNIST convnet, runs from its own experiment file
(``experiments/mnist_convnet_probes.toml``), shrunk to 400 images and 1 epoch.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analyze.report import findings as FD
from tests.conftest import MNIST_DIR, needs_data

MNIST = MNIST_DIR
PNG = b"\x89PNG\r\n\x1a\n"
RUNS = {"generalizing": 0.0, "memorizing-0.5": 0.5}
EPOCHS = (0, 1, 3)
LAYERS = ("input", "relu1", "relu2")
SHAPE = ("area", "eccentricity", "perimeter")

CONFIG = f"""
[experiment]
name = "demo-small"
store = "out/mnist.zarr"
checkpoints_dir = "out/checkpoints"
seed = 0

[dataset]
kind = "idx"
path = "{MNIST}"
subset = "test"
max_samples = 600

[splits]
train = 0.7
valid = 0.15
test = 0.15

[model]
name = "mlp"
options = {{ depth = 2, width = 32 }}

[training]
epochs = 3
batch_size = 32
lr = 0.05
momentum = 0.9
save_epochs = {list(EPOCHS)}

[[runs]]
name = "generalizing"
corruption = 0.0

[[runs]]
name = "memorizing-0.5"
corruption = 0.5
mode = "shuffle"

[extract]
layers = ["input", "relu*"]
batch_size = 200

[concepts]
families = ["shape"]

[analysis]
probes = ["classifier", "control", "rcv", "outputs"]
Cs = [0.01, 1.0]
max_iter = 200
tol = 1e-4
"""

pytestmark = [needs_data(MNIST), pytest.mark.slow]


def probestore(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``probestore ARGS`` as a user would; fail with its output when it fails."""
    exe = Path(sys.executable).with_name("probestore")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "probestore"]
    done = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=180,
                          env=None if env is None else {**os.environ, **env})
    assert done.returncode == 0, f"probestore {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    (root / "exp.toml").write_text(CONFIG)
    probestore("train", "exp.toml", cwd=root)
    probestore("extract", "exp.toml", cwd=root)
    probestore("analyze", "out/mnist.zarr", "--config", "exp.toml", "-o", "out/results.parquet",
               "--scheduler", "none", "--no-progress", cwd=root)
    out = probestore("report", "out/results.parquet", "--store", "out/mnist.zarr", "-o", "out/report", cwd=root)
    return root, out


def test_report_pages_and_images(demo):
    root, out = demo
    report = root / "out" / "report"
    assert f"report: {report / 'index.html'}" in out or "report: out/report/index.html" in out
    html = (report / "index.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", html)
    assert len(sources) >= 6  # layer error, heatmap, RCV x2, clean/corrupted, MSPE, selectivity, embeddings
    for src in sources:
        data = (report / src).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, src
    assert "probestore report: mnist" in html and "10 classes" in html
    md = (report / "report.md").read_text()
    for statement in (FD.DEPTH, FD.RANDOM, FD.TRAINING, FD.RCV, FD.CLEAN, FD.SELECTIVITY):
        line = next((ln for ln in md.splitlines() if ln.startswith(f"- **{statement}**: *")), None)
        assert line is not None, statement
        assert line.endswith(("*holds*.", "*does not hold*.", "*not testable*.")), line
    assert "Layers (model order): input, relu1, relu2" in md
    # An MLP is not the setting of Alain & Bengio's claims: both of their findings say so.
    assert md.count("  - setting: NOT the paper's: mlp on ") == 2
    # Trained for 3 epochs on real digits: the generalizing network separates them far better than chance.
    assert "**" + FD.TRAINING + "**: *holds*" in md


def test_results_table_contents(demo):
    root, _ = demo
    df = pd.read_parquet(root / "out" / "results.parquet")
    assert df["probe_id"].is_unique
    assert set(df["run"]) == set(RUNS)
    ckpts = {run: sorted(df.loc[df["run"] == run, "checkpoint"].unique()) for run in RUNS}
    assert all(len(c) == len(EPOCHS) for c in ckpts.values())
    assert set(df["epoch"]) == set(EPOCHS)
    feats = df[df["probe"] != "model_output"]
    for (run, ckpt, layer), block in feats.groupby(["run", "checkpoint", "layer"]):
        got = sorted(zip(block["probe"], block["target"]))
        want = [("classifier", "true_labels"), ("control", "control_labels")] + [("rcv", t) for t in SHAPE]
        if RUNS[run] > 0:
            want.append(("classifier", "train_labels"))
        assert got == sorted(want), (run, ckpt, layer)
    assert set(feats["layer"]) == set(LAYERS)
    assert len(feats.groupby(["run", "checkpoint", "layer"])) == len(RUNS) * len(EPOCHS) * len(LAYERS)
    # Errors are fractions; most probes fit (a few may stop at max_iter).
    for col in ("train_error", "valid_error", "test_error", "clean_error", "corrupted_error"):
        values = df[col].dropna().to_numpy()
        assert ((values >= 0) & (values <= 1)).all(), col
    assert (df["status"] == "ok").mean() >= 0.8
    assert df["status"].isin(["ok", "not_converged"]).all()
    assert np.isfinite(df.loc[df["probe"] == "rcv", "test_r2"]).all()
    # The model's own accuracy: true labels at every checkpoint of every run, training labels for the corrupted one.
    outputs = df[df["probe"] == "model_output"]
    assert (outputs["layer"] == "outputs").all()
    per_ckpt = outputs.groupby(["run", "checkpoint"])["target"].apply(sorted).to_dict()
    for run in RUNS:
        for ck in ckpts[run]:
            want = ["train_labels", "true_labels"] if RUNS[run] > 0 else ["true_labels"]
            assert per_ckpt[(run, ck)] == want, (run, ck)
    # Training helped: the classifier probe on the last hidden layer beats the untrained network's.
    clf = df[(df["probe"] == "classifier") & (df["target"] == "true_labels") & (df["layer"] == "relu2")
             & (df["run"] == "generalizing")].set_index("epoch")["test_error"]
    assert clf[3] < 0.5


# ---------------------------------------------------------------------- A&B's MNIST convnet, from its file
REPO = Path(__file__).resolve().parents[1]
CONVNET_TOML = REPO / "experiments" / "mnist_convnet_probes.toml"
AB_PROBES = ("input", "conv1_preact", "conv1_postact", "conv1_postpool", "conv2_preact", "conv2_postact",
             "conv2_postpool", "fc1_preact", "fc1_postact", "logits")  # fmt: skip
CONVNET_EPOCHS = (0, 1)


def shrink(text: str, subs: dict[str, str]) -> str:
    """Replace whole ``key = value`` lines of a TOML text; each key must occur exactly once."""
    for key, value in subs.items():
        text, n = re.subn(rf"^{re.escape(key)} = .*$", f"{key} = {value}", text, flags=re.M)
        assert n == 1, f"{key!r} occurs {n} times in {CONVNET_TOML.name}"
    return text


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """The demo's convnet experiment file, shrunk; its data found through $PROBESTORE_DATA."""
    root = tmp_path_factory.mktemp("convnet")
    text = shrink(CONVNET_TOML.read_text(), {
        "store": '"out/convnet.zarr"', "checkpoints_dir": '"out/checkpoints"',
        "subset": '"test"\nmax_samples = 400', "epochs": "1", "save_epochs": str(list(CONVNET_EPOCHS)),
        "Cs": "[0.1]", "tol": "1e-3",
    })  # fmt: skip
    (root / "exp.toml").write_text(text)
    env = {"PROBESTORE_DATA": str(MNIST.parent)}
    probestore("train", "exp.toml", "--quiet", cwd=root, env=env)
    probestore("extract", "exp.toml", cwd=root, env=env)
    probestore("analyze", "out/convnet.zarr", "--config", "exp.toml", "-o", "out/results.parquet",
               "--scheduler", "none", "--no-progress", cwd=root)
    probestore("report", "out/results.parquet", "--store", "out/convnet.zarr", "-o", "out/report", cwd=root)
    return root


def test_convnet_experiment_probes_every_layer_at_every_checkpoint(convnet):
    df = pd.read_parquet(convnet / "out" / "results.parquet")
    assert set(df["probe"]) == {"classifier"} and set(df["run"]) == {"generalizing"}
    assert set(df["epoch"]) == set(CONVNET_EPOCHS)
    assert sorted(zip(df["layer"], df["epoch"])) == sorted((la, e) for la in AB_PROBES for e in CONVNET_EPOCHS)
    assert (df["status"] == "ok").all()
    # The conv layers keep 784 random features (as many as the pixels); fc1 and logits all of theirs.
    n = df.drop_duplicates("layer").set_index("layer")["n_features"].to_dict()
    assert n == {la: 784 for la in AB_PROBES[:7]} | {"fc1_preact": 512, "fc1_postact": 512, "logits": 10}
    # The pixels are the same at every checkpoint, so are their probes.
    assert df.loc[df["layer"] == "input", "test_error"].nunique() == 1


def test_convnet_report_tests_alain_bengio_in_their_setting(convnet):
    md = (convnet / "out" / "report" / "report.md").read_text()
    assert "Layers (model order): " + ", ".join(AB_PROBES) in md
    for statement in (FD.DEPTH, FD.RANDOM):
        start = md.index(f"- **{statement}**: *")
        block = md[start:md.index("\n- **", start + 1)]
        assert block.splitlines()[0].endswith(("*holds*.", "*does not hold*.")), block
        assert "  - setting: the paper's (ab_mnist_convnet on mnist-t10k)" in block
        # Every probe of Fig. 2, input to logits, is in the numbers behind the verdict.
        per_layer = next(ln for ln in block.splitlines() if "test error per layer:" in ln)
        assert [item.split()[0] for item in per_layer.split(": ", 1)[1].split("; ")] == list(AB_PROBES)
    html = (convnet / "out" / "report" / "index.html").read_text()
    for src in re.findall(r"<img src='([^']+)'", html):
        assert (convnet / "out" / "report" / src).read_bytes().startswith(PNG), src


def test_demo_runs_the_convnet_experiment_and_links_its_report(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "experiments" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.EXPERIMENTS["convnet"] == CONVNET_TOML
    reports = {key: tmp_path / f"report-{key}" / "index.html" for key in demo.EXPERIMENTS}
    page = demo.write_index(tmp_path, reports, [("convnet: train", 1.0)]).read_text()
    assert "<a href=\"report-convnet/index.html\">Alain &amp; Bengio&#x27;s own setting" in page
