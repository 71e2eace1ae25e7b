"""Damaged checkpoint files: every one gives the one-line checkpoint error, none runs code.

Seeded byte mutations and truncations of real ``torch.save`` files (zip and legacy
pickle formats, a plain state dict and a training-checkpoint dict, and a malicious
pickle that would create a file if it ever ran). Before the catch-all in
``extract.checkpoints.load_state_dict``, 16 of 200 such files escaped as
``IndexError`` / ``KeyError`` / ``struct.error`` / ``AssertionError`` tracebacks.
"""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from extract.checkpoints import load_state_dict
from probestore.errors import CheckpointError

N_CASES = 600


class _Evil:
    """Unpickling this creates ``path`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _originals(canary: Path) -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    sd = {"fc1.weight": torch.randn(4, 3, generator=gen), "fc1.bias": torch.randn(4, generator=gen),
          "bn.num_batches_tracked": torch.tensor(3)}
    out = {}
    for fmt, zipped in (("zip", True), ("legacy", False)):
        for layout, obj in (("plain", sd), ("training", {"state_dict": sd, "epoch": 3})):
            buf = io.BytesIO()
            torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
            out[f"{fmt}-{layout}"] = buf.getvalue()
    out["evil-pickle"] = pickle.dumps({"w": _Evil(str(canary))}, protocol=2)
    buf = io.BytesIO()
    torch.save({"w": _Evil(str(canary))}, buf)  # torch.save pickles it too: a zip with evil data.pkl
    out["evil-zip"] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    op = rng.random()
    if op < 0.25:
        return bytes(out[: rng.randrange(0, len(out))])  # truncated (0 bytes included)
    if op < 0.35:  # a run of garbage
        start = rng.randrange(len(out))
        out[start:start + rng.randrange(1, 64)] = rng.randbytes(rng.randrange(1, 64))
        return bytes(out)
    for _ in range(rng.choice((1, 1, 2, 3, 8, 32))):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def test_mutated_and_truncated_checkpoints_give_the_checkpoint_error_and_run_nothing(tmp_path, monkeypatch):
    canary = tmp_path / "CODE-RAN"
    originals = _originals(canary)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):  # every load is a safe one
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    rng = random.Random(20261126)
    path = tmp_path / "epoch_0001.pt"
    outcomes = {"loaded": 0, "refused": 0}
    escaped = []
    for case in range(N_CASES):
        name = rng.choice(sorted(originals))
        path.write_bytes(_mutate(originals[name], rng))
        try:
            sd = load_state_dict(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc) and "fix:" in str(exc), str(exc)
            assert str(path) in str(exc)
            outcomes["refused"] += 1
            continue
        except BaseException as exc:  # noqa: BLE001 - the point of the test
            escaped.append(f"case {case} ({name}): {type(exc).__name__}: {exc}"[:200])
            continue
        # A mutation in tensor bytes or unused bytes can leave a loadable file: then it
        # must still be a state dict of named tensors.
        assert isinstance(sd, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in sd.items())
        outcomes["loaded"] += 1
    assert escaped == [], f"{len(escaped)} of {N_CASES} escaped: {escaped[:5]}"
    assert not canary.exists(), "a mutated checkpoint ran code"
    assert calls and all(flag is True for flag in calls)
    assert outcomes["refused"] > N_CASES // 2, outcomes  # the mutations really damage files


@pytest.mark.parametrize("content", [b"hello world\nnot a checkpoint\n", b"{\"a\": 1}", b"\x80", b"PK\x03\x04",
                                     os.urandom(0) + bytes(range(256))])
def test_non_checkpoint_files_named_pt_give_the_checkpoint_error(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert "\n" not in str(info.value) and "fix:" in str(info.value)


def test_the_malicious_pickle_is_refused_unmutated(tmp_path):
    canary = tmp_path / "CODE-RAN"
    for name in ("evil-pickle", "evil-zip"):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(_originals(canary)[name])
        with pytest.raises(CheckpointError, match="needs code to load|refuses|corrupt"):
            load_state_dict(path)
    assert not canary.exists()
