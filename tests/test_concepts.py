"""Concept measures of the ``probestore_v1`` preset (colour.py, texture.py, shape.py), user
concepts, and compute_concepts mechanics: hand computations, scikit-image references, real
data, parallel = serial. The default ``graziani2019`` preset: tests/test_concept_presets.py.
"""

from __future__ import annotations

import colorsys
import gzip
import subprocess
import sys

import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.draw import disk, ellipse
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops

from extract.concepts import (
    CONCEPT_DESCRIPTIONS,
    CONCEPT_FAMILIES,
    binary_concept_from_folder,
    colour,
    compute_concepts,
    concept_descriptions,
    load_concept_csv,
    shape,
    texture,
)
from probestore.errors import ConfigError, DataError, NotFoundError
from tests.conftest import DTD_DIR, MNIST_DIR, require_data

MNIST = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
DTD = DTD_DIR
V1 = "probestore_v1"  # the preset these definitions belong to


def solid(rgb, size=(6, 6)):
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (*size, 3)).copy()


def col(image, name):
    return colour.colour_concepts(image)[colour.NAMES.index(name)]


def tex(image, name, levels=texture.DEFAULT_LEVELS):
    return texture.texture_concepts(image, levels)[texture.NAMES.index(name)]


# ----------------------------------------------------------------------------- colour


@pytest.mark.parametrize(
    ("rgb", "hue"),
    [
        ((255, 0, 0), "red"),
        ((255, 128, 0), "orange"),
        ((255, 255, 0), "yellow"),
        ((0, 255, 0), "green"),
        ((0, 255, 255), "cyan"),
        ((0, 0, 255), "blue"),
        ((128, 0, 255), "purple"),
        ((255, 0, 255), "magenta"),
    ],
)
def test_pure_colour_falls_in_its_bin_only(rgb, hue):
    values = dict(zip(colour.NAMES, colour.colour_concepts(solid(rgb))))
    for name in colour.HUE_NAMES:
        assert values[name] == (1.0 if name == hue else 0.0), name
    assert values["whiteness"] == 0.0 and values["blackness"] == 0.0


def test_half_green_half_black():
    image = solid((0, 0, 0), (8, 8))
    image[:4] = (0, 255, 0)
    values = dict(zip(colour.NAMES, colour.colour_concepts(image)))
    assert values["green"] == 0.5
    assert values["blackness"] == 0.5
    assert sum(values[n] for n in colour.HUE_NAMES) == 0.5


def test_hue_bins_wrap_red_around_zero():
    hues = np.array([0.0, 14.99, 15.0, 44.99, 45.0, 164.99, 165.0, 344.99, 345.0, 359.99])
    got = [colour.HUE_NAMES[i] for i in colour.hue_bin_index(hues)]
    assert got == [
        "red",
        "red",
        "orange",
        "orange",
        "yellow",
        "green",
        "cyan",
        "magenta",
        "red",
        "red",
    ]


def test_white_black_grey():
    white, black = solid((255, 255, 255)), solid((0, 0, 0))
    assert col(white, "whiteness") == 1.0 and col(white, "blackness") == 0.0
    assert col(black, "blackness") == 1.0 and col(black, "whiteness") == 0.0
    mid = colour.colour_concepts(solid((128, 128, 128)))
    np.testing.assert_array_equal(mid, np.zeros(len(colour.NAMES)))  # mid grey: in no class


def test_greyscale_input_has_no_hue():
    grey = np.array([[0, 255], [255, 100]], dtype=np.uint8)
    values = dict(zip(colour.NAMES, colour.colour_concepts(grey)))
    assert all(values[n] == 0.0 for n in colour.HUE_NAMES)
    assert values["whiteness"] == 0.5 and values["blackness"] == 0.25
    assert values["colourfulness"] == 0.0


def test_colour_fractions_match_per_pixel_colorsys_reference():
    """Independent reference: Python's colorsys per pixel and the documented rules."""
    image = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    counts = dict.fromkeys(colour.NAMES[:-1], 0)
    for r, g, b in image.reshape(-1, 3) / 255.0:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        if v < colour.BLACK_MAX_VALUE:
            counts["blackness"] += 1
        elif s < colour.CHROMA_MIN_SATURATION:
            counts["whiteness"] += v >= colour.WHITE_MIN_VALUE
        else:
            deg = h * 360
            for name, (lo, hi) in colour.HUE_BINS_DEG.items():
                if (lo <= deg < hi) if lo < hi else (deg >= lo or deg < hi):
                    counts[name] += 1
    got = colour.colour_concepts(image)
    np.testing.assert_allclose(got[:-1], [counts[n] / 63 for n in colour.NAMES[:-1]])
    assert got[:-1].sum() <= 1.0


def test_colourfulness_grey_is_zero_and_two_colour_matches_hand():
    assert colour.colourfulness(solid((77, 77, 77))) == 0.0
    image = solid((255, 0, 0), (4, 4))
    image[:, 2:] = (0, 0, 255)
    # By hand: rg = R - G in {255, 0}; yb = (R + G)/2 - B in {127.5, -255}; half each.
    mean_rg, std_rg = 127.5, 127.5
    mean_yb, std_yb = (127.5 - 255) / 2, (127.5 + 255) / 2
    expected = np.sqrt(std_rg**2 + std_yb**2) + 0.3 * np.sqrt(mean_rg**2 + mean_yb**2)
    assert col(image, "colourfulness") == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- texture


def skimage_reference(q, levels):
    glcm = graycomatrix(
        q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels, symmetric=True, normed=True
    )
    return np.array([graycoprops(glcm, p).mean() for p in texture.NAMES])


@pytest.mark.parametrize("pattern", ["checkerboard", "stripes", "random"])
def test_texture_equals_direct_skimage_call(pattern):
    yy, xx = np.mgrid[:10, :12]
    image = {
        "checkerboard": ((yy + xx) % 2) * 255,
        "stripes": (yy // 2 % 2) * 200,
        "random": np.random.default_rng(1).integers(0, 256, (10, 12)),
    }[pattern].astype(np.uint8)
    q = np.minimum(image.astype(float) / 255 * 32, 31).astype(np.uint8)
    np.testing.assert_allclose(texture.texture_concepts(image), skimage_reference(q, 32))


def test_contrast_of_two_level_stripes_by_hand():
    image = np.tile(np.array([0, 255], dtype=np.uint8), (8, 4))  # vertical stripes, period 2
    # Levels 0 and 31. Horizontal and both diagonal neighbours always differ by 31, vertical
    # neighbours never: contrast = (3 * 31**2 + 0) / 4, dissimilarity = 3 * 31 / 4.
    assert tex(image, "contrast") == pytest.approx(3 * 31**2 / 4)
    assert tex(image, "dissimilarity") == pytest.approx(3 * 31 / 4)
    assert tex(image, "homogeneity") == pytest.approx(0.75 / (1 + 31**2) + 0.25)
    assert tex(image, "contrast", levels=2) == pytest.approx(0.75)  # levels 0 and 1


def test_constant_image_texture_is_finite_with_correlation_one():
    values = dict(zip(texture.NAMES, texture.texture_concepts(np.full((5, 5), 90, np.uint8))))
    assert values == {
        "energy": 1.0,
        "ASM": 1.0,
        "dissimilarity": 0.0,
        "homogeneity": 1.0,
        "contrast": 0.0,
        "correlation": 1.0,
    }


def test_quantize_grey_and_rgb():
    grey = np.array([[0, 7, 8, 128, 254, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(texture.quantize(grey, 32), [[0, 0, 1, 16, 31, 31]])
    rgb = np.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    expected = np.minimum(np.floor(rgb2gray(rgb) * 8), 7)
    np.testing.assert_array_equal(texture.quantize(rgb, 8), expected)


# ----------------------------------------------------------------------------- shape


def test_square_area_perimeter_eccentricity():
    image = np.zeros((28, 28), np.uint8)
    image[5:15, 8:18] = 200
    area, ecc, perimeter = shape.shape_concepts(image)
    props = regionprops((image > 0).astype(np.uint8))[0]
    assert area == 100
    assert ecc == pytest.approx(0.0, abs=1e-7)
    assert perimeter == props.perimeter and abs(perimeter - 40) / 40 < 0.15


def test_disk_and_ellipse_geometry():
    image = np.zeros((40, 40), np.uint8)
    image[disk((20, 20), 10)] = 255
    area, ecc, perimeter = shape.shape_concepts(image)
    props = regionprops(image // 255)[0]
    assert (area, ecc, perimeter) == (props.area, props.eccentricity, props.perimeter)
    assert area == pytest.approx(np.pi * 100, rel=0.05)
    assert perimeter == pytest.approx(2 * np.pi * 10, rel=0.1)
    assert ecc < 0.1
    image = np.zeros((40, 60), np.uint8)
    image[ellipse(20, 30, 8, 16)] = 255  # semi-axes 8 and 16
    assert shape.shape_concepts(image)[1] == pytest.approx(np.sqrt(1 - 0.25), abs=0.02)


def test_largest_region_threshold_and_connectivity():
    image = np.zeros((20, 20), np.uint8)
    image[1:4, 1:4] = 255  # 9 px
    image[10:15, 10:15] = 130  # 25 px, above 0.5 * 255
    image[16:19, 0:5] = 127  # 15 px, not above 127.5: background
    assert shape.shape_concepts(image)[0] == 25
    image[4:7, 4:7] = 255  # touches the first square at a corner only: 8-connected, 18 px
    image[10:15, 10:15] = 0
    assert shape.shape_concepts(image)[0] == 18


def test_empty_foreground_is_zeros():
    np.testing.assert_array_equal(shape.shape_concepts(np.zeros((8, 8), np.uint8)), [0, 0, 0])


# ----------------------------------------------------------------------------- real data


def read_mnist(n):
    require_data(MNIST)
    with gzip.open(MNIST) as f:
        magic, count, rows, cols = np.frombuffer(f.read(16), ">u4")
        assert magic == 2051
        return np.frombuffer(f.read(n * rows * cols), np.uint8).reshape(n, rows, cols)


def read_dtd(n, size=64):
    Image = pytest.importorskip("PIL.Image")
    require_data(DTD)
    files = sorted(DTD.glob("*/*.jpg"))[::97][:n]
    assert len(files) >= n, f"expected {n} DTD images under {DTD}, found {len(files)}"
    return [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]


def test_mnist_shape_concepts_are_plausible():
    images = read_mnist(20)
    got = compute_concepts(images, families=["shape"], n_jobs=1, progress=False)
    assert list(got) == CONCEPT_FAMILIES["shape"]
    assert all(
        v.shape == (20,) and v.dtype == np.float64 and np.isfinite(v).all() for v in got.values()
    )
    assert ((got["area"] > 10) & (got["area"] < 400)).all()
    assert ((got["eccentricity"] >= 0) & (got["eccentricity"] < 1)).all()
    assert (got["perimeter"] > 0).all()
    # a "1" (label of image 2) is thinner and more elongated than a "0" (image 3)
    assert got["eccentricity"][2] > got["eccentricity"][3]


def test_dtd_colour_texture_finite_and_parallel_equals_serial():
    images = read_dtd(8)
    serial = compute_concepts(images, n_jobs=1, progress=False, preset=V1)
    parallel = compute_concepts(images, n_jobs=2, progress=False, chunk_size=3, preset=V1)
    assert list(serial) == CONCEPT_FAMILIES["colour"] + CONCEPT_FAMILIES["texture"]
    for name in serial:
        assert np.isfinite(serial[name]).all(), name
        np.testing.assert_array_equal(parallel[name], serial[name])
    hue_sum = sum(serial[n] for n in colour.HUE_NAMES)
    assert (hue_sum + serial["whiteness"] + serial["blackness"] <= 1 + 1e-12).all()
    assert (serial["colourfulness"] >= 0).all()
    grey = serial["colourfulness"] == 0  # DTD holds a few greyscale JPEGs (R = G = B)
    assert grey.sum() < len(images) and (hue_sum[grey] == 0).all()
    first = colour.colour_concepts(images[0])  # the batch path equals the per-image function
    np.testing.assert_array_equal([serial[n][0] for n in colour.NAMES], first)


# ----------------------------------------------------------------------------- compute_concepts


class LazyDataset:
    """Decodes on access and holds an unpicklable member: workers must never need it."""

    def __init__(self, images):
        self.images = images
        self.unpicklable = lambda: None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_parallel_over_lazy_dataset_matches_serial_in_order():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (6 + i % 5, 9, 3), dtype=np.uint8) for i in range(23)]
    fams = ("colour", "texture", "shape")
    serial = compute_concepts(LazyDataset(images), fams, n_jobs=1, progress=False, preset=V1)
    parallel = compute_concepts(LazyDataset(images), fams, n_jobs=2, progress=False, chunk_size=4,
                                preset=V1)
    for name in serial:
        np.testing.assert_array_equal(parallel[name], serial[name])
    assert serial["area"][17] == shape.shape_concepts(images[17])[0]


def test_family_validation():
    with pytest.raises(ConfigError, match="did you mean 'colour'"):
        compute_concepts([], families=["color"], progress=False)
    with pytest.raises(ConfigError, match="no concept family"):
        compute_concepts([], families=[], progress=False)
    for bad in [{"n_jobs": 0}, {"chunk_size": 0}, {"texture_levels": 1}, {"n_jobs": True}]:
        with pytest.raises(ConfigError):
            compute_concepts([], progress=False, preset=V1, **bad)
    got = compute_concepts([], families="shape", progress=False)  # a bare string is one family
    assert list(got) == ["area", "eccentricity", "perimeter"] and got["area"].shape == (0,)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((8, 8), np.float32), "dtype"),
        (np.zeros((8, 8, 4), np.uint8), "shape"),
        (np.zeros((3, 8, 8), np.uint8), "shape"),
        (np.zeros((1, 8), np.uint8), "too small"),
    ],
)
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_bad_image_names_its_index(bad, match, n_jobs):
    images = [np.zeros((8, 8), np.uint8)] * 9 + [bad]
    with pytest.raises(DataError, match=rf"{match}.*image 9 of the dataset"):
        compute_concepts(images, n_jobs=n_jobs, chunk_size=2, progress=False)


def test_one_pixel_side_is_fine_without_texture():
    got = compute_concepts([np.full((1, 5), 255, np.uint8)], families=["shape"], progress=False,
                           preset=V1)
    assert got["area"][0] == 5


def test_progress_bar_counts_images(monkeypatch):
    """On a terminal a bar counts the images (in a log file, a line a minute: probestore.progress)."""
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    compute_concepts([np.zeros((4, 4), np.uint8)] * 5, families=["shape"], n_jobs=1, chunk_size=2)
    assert "5/5" in err.getvalue() and "\r" in err.getvalue()


def test_descriptions_cover_every_concept():
    names = [n for family in CONCEPT_FAMILIES.values() for n in family]
    assert len(names) == len(set(names)) == 20
    assert sorted(CONCEPT_DESCRIPTIONS) == sorted(names)
    assert "16 levels" in concept_descriptions(V1, 16)["contrast"]
    assert "32 levels" in concept_descriptions(V1)["contrast"]
    assert concept_descriptions(V1)["contrast"] == "probestore_v1: " + texture.DESCRIPTIONS["contrast"]


def test_concepts_never_import_torch():
    code = (
        "import sys, numpy as np; from extract.concepts import compute_concepts; "
        "compute_concepts([np.zeros((4, 4, 3), np.uint8)], ('colour', 'texture', 'shape'), "
        "n_jobs=1, progress=False); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- user concepts


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_aligned_to_sample_ids(tmp_path):
    path = write(
        tmp_path / "c.csv",
        "\ufeffscore , sample_id,size\n2.5, b ,-1\n\n1e-3,a, 4\n0,c,7\n",
    )
    got = load_concept_csv(path, np.array(["a", "b", "c"]))
    assert list(got) == ["score", "size"]
    np.testing.assert_array_equal(got["score"], [1e-3, 2.5, 0.0])
    np.testing.assert_array_equal(got["size"], [4.0, -1.0, 7.0])
    assert got["score"].dtype == np.float64


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sample_id,x\na,1\n", r"1 sample id\(s\) missing.*no row for 'b'"),
        ("sample_id,x\na,1\nb,2\nzz,3\n", r"unknown sample id 'zz'.*row 4, column 'sample_id'"),
        ("sample_id,x\na,1\nb,big\n", r"not a finite number.*c.csv, row 3, column 'x'.*got 'big'"),
        ("sample_id,x\na,nan\nb,2\n", r"row 2, column 'x'"),
        ("sample_id,x\na,\nb,2\n", r"row 2, column 'x'"),
        ("sample_id,x\na,1\na,2\nb,3\n", r"duplicate sample id 'a'.*row 3.*also on row 2"),
        ("sample id,x\na,1\n", r"no 'sample_id' column.*did you mean 'sample id'"),
        ("sample_id\na\nb\n", "no concept column"),
        ("sample_id,x,x\na,1,2\n", "duplicate column 'x'"),
        ("sample_id,x\na,1,5\nb,2\n", r"wrong number of cells.*row 2"),
        ("", "no 'sample_id' column"),
    ],
)
def test_csv_errors_name_file_row_column(tmp_path, text, match):
    path = write(tmp_path / "c.csv", text)
    with pytest.raises(DataError, match=match) as info:
        load_concept_csv(path, ["a", "b"])
    assert "c.csv" in str(info.value)


def test_csv_missing_file_and_duplicate_ids(tmp_path):
    with pytest.raises(NotFoundError, match="nope.csv"):
        load_concept_csv(tmp_path / "nope.csv", ["a"])
    path = write(tmp_path / "c.csv", "sample_id,x\na,1\n")
    with pytest.raises(DataError, match="duplicate sample id 'a'"):
        load_concept_csv(path, ["a", "a"])


def test_binary_concept_from_folder(tmp_path):
    folder = tmp_path / "striped"
    folder.mkdir()
    for name in ["banded_0002.jpg", "banded_0005.jpg", "other_dataset.jpg", ".DS_Store"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    names = [
        "banded/banded_0001.jpg",
        "banded/banded_0002.jpg",
        "x/.DS_Store",
        "sub",
        "banded_0005.jpg",
    ]
    np.testing.assert_array_equal(
        binary_concept_from_folder(folder, names), [False, True, False, False, True]
    )


def test_binary_concept_errors(tmp_path):
    with pytest.raises(NotFoundError, match="not found"):
        binary_concept_from_folder(tmp_path / "missing", ["a.jpg"])
    folder = tmp_path / "pos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"no sample matches.*'a.jpg'.*'b.jpg'"):
        binary_concept_from_folder(folder, ["x/b.jpg"])
    with pytest.raises(DataError, match=r"matches several samples.*'c1/a.jpg' and 'c2/a.jpg'"):
        binary_concept_from_folder(folder, ["c1/a.jpg", "c2/a.jpg"])
