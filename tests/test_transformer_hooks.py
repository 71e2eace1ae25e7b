"""Hooks on transformer modules: tuple and ModelOutput outputs, modules without a tensor.

Real ``transformers`` BERT / ViT modules from tiny local configurations and a real
``timm`` ViT; the rule of :func:`extract.layers.hidden_state` is checked on each output
kind, through ``list_layers``, ``LayerTaps``, ``plan_extraction`` and ``probestore layers``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

from torch import nn  # noqa: E402

from extract.layers import LayerTaps, example_inputs, hidden_state, list_layers  # noqa: E402
from extract.models import ModelSpec, build_model  # noqa: E402
from probestore.errors import ConfigError  # noqa: E402

BERT = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder = tmp_path_factory.mktemp("hf") / "bert"
    transformers.BertModel(transformers.BertConfig(**BERT)).save_pretrained(folder)
    return folder


class _Pair(nn.Module):
    """A block returning ``(hidden, None)`` as transformers layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * 2, None


class _Nothing(nn.Module):
    """A module whose output holds no tensor (a logging side branch, say)."""

    def forward(self, x):
        return (None, "done")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = _Pair()
        self.nothing = _Nothing()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        hidden, _ = self.pair(x)
        self.nothing(hidden)
        return self.head(hidden)


def test_hidden_state_rule_for_every_output_kind():
    from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

    a, b = torch.ones(2, 3), torch.zeros(2, 5)
    assert hidden_state(a) == (a, "")
    tensor, note = hidden_state((a, None))
    assert tensor is a and note == "tuple, tensor 0 taken"
    tensor, note = hidden_state((None, b))
    assert tensor is b and note == "tuple, tensor 1 taken"
    tensor, note = hidden_state(BaseModelOutput(last_hidden_state=b, hidden_states=(a, b)))
    assert tensor is b and note == "BaseModelOutput, last_hidden_state taken"
    tensor, note = hidden_state(CausalLMOutput(logits=a))
    assert tensor is a and note == "CausalLMOutput, logits taken"
    assert hidden_state({"x": "y", "pooled": a})[0] is a
    assert hidden_state((None, "done")) == (None, "tuple of (NoneType, str)")
    assert hidden_state(None) == (None, "NoneType")


def test_list_layers_says_how_a_tuple_output_is_taken_and_taps_reduce_that_tensor():
    torch.manual_seed(0)
    net = _Net()
    described = {d.name: d for d in list_layers(net, (4,))}
    assert described["pair"].output_note == "tuple, tensor 0 taken" and described["pair"].output_shape == (4,)
    assert described["pair.fc"].output_note == ""
    assert "nothing" not in described  # no tensor in its output: not listed
    x = torch.randn(3, 4)
    with LayerTaps(net, {"pair": nn.Identity()}) as taps:
        net(x)
        got = taps.pop()["pair"]
    assert torch.equal(got, net.pair.fc(x) * 2)


def test_a_module_without_a_tensor_is_refused_by_taps_and_by_the_plan():
    from extract.runner import plan_extraction
    from probestore.experiment.extraction import parse_extract

    net = _Net()
    with LayerTaps(net, {"nothing": nn.Identity()}), pytest.raises(ConfigError) as err:
        net(torch.randn(2, 4))
    assert "layer 'nothing' outputs no tensor" in str(err.value) and "tuple of (NoneType, str)" in str(err.value)
    options = parse_extract({"layers": ["pair", "nothing"]}, 0, "exp.toml [extract]", {})
    with pytest.raises(ConfigError, match="layer 'nothing' outputs no tensor, so it cannot be probed") as err:
        plan_extraction(net, (4,), options)
    assert "\n" not in str(err.value) and "probestore layers" in str(err.value)


def test_bert_blocks_are_listed_with_token_shapes_and_attention_tuples(bert_folder):
    model = build_model(ModelSpec(f"hf:{bert_folder}", 2, (8,), {}), seed=0)
    described = {d.name: d for d in list_layers(model, (8,))}
    blocks = [n for n in described if n.startswith("encoder.layer.") and n.count(".") == 2]
    assert blocks == ["encoder.layer.0", "encoder.layer.1"]
    assert all(described[n].output_shape == (8, 16) for n in blocks)  # [T, D] per sample
    assert described["encoder.layer.0.attention"].output_note == "tuple, tensor 0 taken"
    assert described["encoder"].output_note.endswith("last_hidden_state taken")
    assert list_layers(model, (5,))[0].output_shape[0] == 5  # the dummy text is T tokens long
    inputs = example_inputs(model, (8,))
    with LayerTaps(model, {"encoder.layer.1.attention": nn.Flatten()}) as taps:
        out = model(**inputs)
        feats = taps.pop()["encoder.layer.1.attention"]
    assert feats.shape == (2, 8 * 16) and isinstance(out, transformers.utils.ModelOutput)


def test_probestore_layers_lists_transformer_blocks(bert_folder, capsys):
    from probestore.cli import main

    assert main(["layers", "--model", f"hf:{bert_folder}", "--input-shape", "8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert rows["encoder.layer.0"].split()[1:] == ["BertLayer", "8x16", "128"]
    assert "(output: tuple, tensor 0 taken)" in rows["encoder.layer.1.attention"]
    assert main(["layers", "--model", f"hf:{bert_folder}", "--input-shape", "3,8,8"]) == 2
    assert "fix: --input-shape 16" in capsys.readouterr().err


def test_timm_vit_blocks_and_the_layers_command(capsys):
    from probestore.cli import main

    options = ["--option", "img_size=32", "--option", "patch_size=8", "--option", "depth=2",
               "--option", "embed_dim=32", "--option", "num_heads=2"]
    assert main(["layers", "--model", "timm:vit_tiny_patch16_224", "--input-shape", "3,32,32", *options]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["blocks.0"][1:] == ["Block", "17x32", "544"] and rows["blocks.1"][1:] == ["Block", "17x32", "544"]


def test_views_store_one_module_under_several_reductions():
    from extract.layers import select_layers
    from extract.runner import BatchExtractor, plan_extraction
    from probestore.experiment.extraction import parse_extract

    spec = ModelSpec("timm:vit_tiny_patch16_224", 3, (3, 16, 16),
                     {"img_size": 16, "patch_size": 8, "depth": 2, "embed_dim": 16, "num_heads": 2})
    model = build_model(spec, seed=0).eval()
    assert select_layers(model, ["blocks.?=mean", "blocks.?=cls", "norm"]) == [
        "blocks.0=mean", "blocks.0=cls", "blocks.1=mean", "blocks.1=cls", "norm"]  # model order, then as written
    options = parse_extract({"layers": ["blocks.?=cls", "blocks.?=mean"]}, 0, "vit.toml [extract]", {})
    plan = plan_extraction(model, spec.input_shape, options)
    assert plan.layers == ["blocks.0=cls", "blocks.0=mean", "blocks.1=cls", "blocks.1=mean"]
    assert [(p.kind, p.source_shape, p.n_features) for p in plan.reductions.values()] == [
        (k, (5, 16), 16) for k in ("cls", "mean", "cls", "mean")]
    x = torch.randn(4, 3, 16, 16)
    seen = {}
    model.blocks[1].register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out.detach().clone()))
    with BatchExtractor(model, plan, torch.device("cpu")) as extractor:
        got = extractor(x)
    assert torch.equal(got["blocks.1=cls"], seen["out"][:, 0])
    torch.testing.assert_close(got["blocks.1=mean"], seen["out"].mean(1))
    with_gradients = parse_extract({"layers": ["blocks.?=cls"], "gradients": True}, 0, "vit.toml [extract]", {})
    with pytest.raises(ConfigError, match="views \\(name=reduction\\) cannot be combined with gradients"):
        plan_extraction(model, spec.input_shape, with_gradients)


@pytest.mark.parametrize("layers, message", [
    (["blocks.?=cl"], "did you mean 'cls'"),
    (["=cls"], "LAYER=REDUCTION needs both parts"),
    (["blocks.?=cls", "blocks.?=tokens"], "one store holds one row unit"),
])
def test_view_errors_are_found_when_the_file_is_read(layers, message):
    from probestore.experiment.extraction import parse_extract

    with pytest.raises(ConfigError, match=message) as err:
        parse_extract({"layers": layers}, 0, "vit.toml [extract]", {})
    assert "vit.toml [extract]" in str(err.value)


def test_a_model_that_cannot_take_the_dummy_batch_is_one_line(tmp_path, capsys):
    from transformers.utils import logging

    from probestore.cli import main

    logging.disable_progress_bar()
    config = transformers.T5Config(vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5Model(config).save_pretrained(tmp_path / "t5")
    assert main(["layers", "--model", f"hf:{tmp_path / 't5'}", "--input-shape", "8"]) == 2
    err = capsys.readouterr().err
    assert "a dry forward pass of T5Model failed" in err and "encoder-decoder" in err
    assert len(err.strip().splitlines()) == 1
