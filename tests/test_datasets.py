"""IDX reading, dataset specs and loaders, on the shared real data and small fakes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extract.datasets import load_dataset
from extract.idx import read_idx, read_idx_folder
from probestore.errors import ConfigError, DataError
from probestore.experiment import DatasetSpec
from tests.conftest import DTD_DIR, MNIST_DIR, needs_data

MNIST = MNIST_DIR
DTD = DTD_DIR
needs_mnist = needs_data(MNIST)
needs_dtd = needs_data(DTD)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    """Write an IDX file by hand (independent of the reader under test)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


# ------------------------------------------------------------------------------- idx


@needs_mnist
def test_read_idx_real_mnist():
    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # the README's checksum is over the gz file; the decoded pixels are plausible digits
    assert images.max() == 255 and images[:, 0, 0].max() == 0
    assert len(read_idx(MNIST / "train-labels-idx1-ubyte.gz")) == 60000


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    a = (np.arange(2 * 3 * 5) * 7 - 20).reshape(2, 3, 5).astype(dtype)
    b = read_idx(write_idx(tmp_path / "x.idx", a, gz=gz))
    assert b.dtype == a.dtype and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


def test_read_idx_corrupt_header(tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x08\x03" + b"\x00" * 40))
    with pytest.raises(DataError, match="bad magic") as exc:
        read_idx(bad)
    assert str(bad) in str(exc.value)


def test_read_idx_truncated_and_missing(tmp_path):
    path = write_idx(tmp_path / "t.idx", np.zeros((4, 3, 3), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="does not match its header"):
        read_idx(path)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")


def _fake_fashion(folder: Path, n_train=30, n_test=20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir()
    xs, ys = [], []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
        xs.append(x)
        ys.append(y)
    (folder / "README").write_text("not an idx file")
    return np.concatenate(xs), np.concatenate(ys)


def test_idx_folder_detection_fashion_layout(tmp_path):
    x, y = _fake_fashion(tmp_path / "fashion-mnist")
    ds = load_dataset(DatasetSpec("idx", str(tmp_path / "fashion-mnist"), normalize="none"))
    assert ds.name == "fashion-mnist" and len(ds) == 50
    assert ds.sample_ids[0] == "train:000000" and ds.sample_ids[30] == "t10k:000000"
    assert ds.predefined_split.tolist() == ["train"] * 30 + ["test"] * 20
    np.testing.assert_array_equal(ds.raw_batch(range(50)), x)
    np.testing.assert_array_equal(ds.labels, y)
    test_only = load_dataset(DatasetSpec("idx", str(tmp_path / "fashion-mnist"), subset="test"))
    assert test_only.name == "fashion-mnist-test" and len(test_only) == 20
    np.testing.assert_array_equal(test_only.raw(3), x[33])


def test_idx_folder_missing_pair_lists_files(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError) as exc:
        read_idx_folder(folder, "train")
    assert "train-labels-idx1-ubyte.gz" in str(exc.value) and "fix:" in str(exc.value)


def test_idx_images_labels_length_mismatch(tmp_path):
    folder = tmp_path / "mm"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((5, 4, 4), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="do not match"):
        read_idx_folder(folder)


@needs_mnist
def test_mnist_dataset_resize_normalize_and_torch_view():
    spec = DatasetSpec("idx", str(MNIST), max_samples=200, seed=3, image_size=14)
    ds = load_dataset(spec)
    assert len(ds) == 200 and ds.image_shape == (14, 14)
    # stratified: class proportions follow the full set within one sample
    full = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    expected = np.bincount(full, minlength=10) * 200 / len(full)
    assert np.all(np.abs(np.bincount(ds.labels, minlength=10) - expected) < 1)
    # ids map back to the original rows; resize is PIL bilinear of the original
    rows = np.array([int(s.split(":")[1]) for s in ds.sample_ids])
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(ds.labels, full[rows])
    original = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[rows[5]]
    ref = np.asarray(Image.fromarray(original).resize((14, 14), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(ds.raw(5), ref)
    assert load_dataset(spec).sample_ids.tolist() == ds.sample_ids.tolist()  # deterministic
    mean, std = ds.normalization()
    pix = ds.raw_batch(range(len(ds))).astype(np.float64) / 255
    np.testing.assert_allclose([mean[0], std[0]], [pix.mean(), pix.std()], rtol=1e-5)
    tds = ds.torch_dataset()
    x, i = tds[7]
    assert tuple(x.shape) == (1, 14, 14) and i == 7
    np.testing.assert_allclose(x.numpy()[0], (ds.raw(7) / 255 - mean[0]) / std[0], rtol=1e-5, atol=1e-6)
    batch = tds.__getitems__([7, 2])
    np.testing.assert_allclose(batch[0][0].numpy(), x.numpy())
    assert ds.to_dict()["transforms"]["mean"] == [pytest.approx(float(mean[0]))]


@needs_dtd
def test_imagefolder_dtd_subset():
    spec = DatasetSpec("imagefolder", str(DTD), image_size=32, max_samples=40, seed=1)
    ds = load_dataset(spec)
    assert ds.class_names == sorted(p.name for p in DTD.iterdir() if p.is_dir())
    assert len(ds) == 40 and np.bincount(ds.labels).tolist() == [4] * 10
    for sid, label in zip(ds.sample_ids, ds.labels):
        folder, fname = sid.split("/")
        assert folder == ds.class_names[label] and (DTD / sid).is_file()
    img = ds.raw(0)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img.std() > 5  # a texture, not a blank
    # cover + center crop: compare with a full decode resized the same way
    with Image.open(DTD / ds.sample_ids[0]) as im:
        im = im.convert("RGB")
        s = 32 / min(im.size)
        w, h = max(32, round(im.width * s)), max(32, round(im.height * s))
        ref = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR))
        ref = ref[(h - 32) // 2:(h - 32) // 2 + 32, (w - 32) // 2:(w - 32) // 2 + 32]
    assert np.abs(img.astype(int) - ref.astype(int)).mean() < 8  # JPEG draft decode differs slightly
    np.testing.assert_array_equal(ds.raw_batch([0, 0])[1], img)  # cached copy is identical
    eager = load_dataset(spec)
    eager.preload(threads=2)
    np.testing.assert_array_equal(eager.raw_batch(range(40)), ds.raw_batch(range(40)))
    grey = load_dataset(DatasetSpec("imagefolder", str(DTD), image_size=[16, 24], channels=1,
                                    max_samples=10))
    assert grey.raw(0).shape == (16, 24)
    x, _ = grey.torch_dataset()[0]
    assert tuple(x.shape) == (1, 16, 24)


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(root / "a" / "x.png")
    with pytest.raises(DataError, match="no images") as exc:
        load_dataset(DatasetSpec("imagefolder", str(root), image_size=8))
    assert str(root / "b") in str(exc.value)
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = load_dataset(DatasetSpec("imagefolder", str(root), image_size=8))
    assert ds.sample_ids.tolist() == ["a/x.png", "b/broken.jpg"]
    assert ds.raw(0).shape == (8, 8, 3) and int(ds.raw(0)[0, 0, 0]) == 200
    with pytest.raises(DataError, match="cannot read image") as exc:
        ds.raw(1)
    assert "broken.jpg" in str(exc.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(DatasetSpec("imagefolder", str(empty), image_size=8))


def test_digits():
    ds = load_dataset(DatasetSpec("digits", normalize="none"))
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert len(ds) == 1797 and ds.sample_ids[17] == "digits:17" and ds.predefined_split is None
    np.testing.assert_array_equal(ds.labels, ref.target)
    np.testing.assert_array_equal(ds.raw(17), np.round(ref.images[17] * 255 / 16).astype(np.uint8))
    x, _ = ds.torch_dataset()[17]
    np.testing.assert_allclose(x.numpy()[0], ds.raw(17) / 255, rtol=1e-6)
    rgb = load_dataset(DatasetSpec("digits", channels=3, mean=[0.5] * 3, std=[0.25] * 3))
    assert rgb.raw(17).shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb.raw(17)[..., 2], ds.raw(17))
    x, _ = rgb.torch_dataset()[17]
    np.testing.assert_allclose(x.numpy()[1], (ds.raw(17) / 255 - 0.5) / 0.25, atol=1e-6)


def test_npz_round_trip_and_rgb_to_grey(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    ids = np.array([f"img{i:02d}" for i in range(12)])
    np.savez(tmp_path / "toy.npz", images=images, labels=labels, ids=ids,
             class_names=np.array(["cat", "dog", "eel"]))
    ds = load_dataset(DatasetSpec("npz", str(tmp_path / "toy.npz"), normalize="none"))
    assert ds.name == "toy" and ds.class_names == ["cat", "dog", "eel"]
    assert ds.sample_ids.tolist() == ids.tolist() and ds.channels == 3
    np.testing.assert_array_equal(ds.raw_batch(range(12)), images)
    np.testing.assert_array_equal(ds.labels, labels)
    grey = load_dataset(DatasetSpec("npz", str(tmp_path / "toy.npz"), channels=1))
    ref = np.asarray(Image.fromarray(images[4]).convert("L"))
    np.testing.assert_array_equal(grey.raw(4), ref)
    np.savez(tmp_path / "noids.npz", images=images[..., 0], labels=labels)
    plain = load_dataset(DatasetSpec("npz", str(tmp_path / "noids.npz")))
    assert plain.sample_ids[:3].tolist() == ["0", "1", "2"] and plain.class_names == ["0", "1", "2"]
    np.savez(tmp_path / "dup.npz", images=images, labels=labels, ids=np.array(["a"] * 12))
    with pytest.raises(DataError, match="unique"):
        load_dataset(DatasetSpec("npz", str(tmp_path / "dup.npz")))
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32), labels=labels)
    with pytest.raises(DataError, match="wrong shape or type"):
        load_dataset(DatasetSpec("npz", str(tmp_path / "float.npz")))


def test_spec_round_trip_and_errors():
    spec = DatasetSpec.from_dict({"kind": "imagefolder", "path": "/x/dtd", "image_size": [32, 48],
                                  "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]})
    d = spec.to_dict()
    assert d["name"] == "dtd" and d["normalize"] == "explicit" and d["image_size"] == [32, 48]
    assert DatasetSpec.from_dict(d) == spec
    with pytest.raises(ConfigError) as exc:
        DatasetSpec.from_dict({"kind": "digits", "image_sise": 8}, where="exp.toml [dataset]")
    msg = str(exc.value)
    assert "unknown key 'image_sise'" in msg and "did you mean 'image_size'" in msg
    assert "exp.toml [dataset]" in msg
    with pytest.raises(ConfigError, match="did you mean 'imagefolder'"):
        DatasetSpec.from_dict({"kind": "imagefolders", "path": "x"})
    with pytest.raises(ConfigError, match=r"in cfg\.image_size"):
        DatasetSpec.from_dict({"kind": "digits", "image_size": 0}, where="cfg")
    with pytest.raises(ConfigError, match="need image_size"):
        DatasetSpec("imagefolder", "x")
    with pytest.raises(ConfigError, match="wrong type"):
        DatasetSpec("digits", max_samples=True)
    with pytest.raises(ConfigError, match="digits takes no path"):
        DatasetSpec("digits", "somewhere")
    with pytest.raises(ConfigError, match="mean and std go together"):
        DatasetSpec("digits", mean=[0.1])
    with pytest.raises(ConfigError, match="one value per channel"):
        DatasetSpec("digits", channels=3, mean=[0.1], std=[0.2])


def test_module_import_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, extract.datasets, extract.idx, extract.splits, extract.corruption;"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

