"""Concept presets: the authors' measures (graziani2019) against independent computations of
their formulas, the old definitions (probestore_v1) unchanged, and the preset in real stores.

The pinned reference numbers below come from running the authors' published code
(``flawed_utils.compute_concept_measures``: cv2 4.14 + scikit-image 0.26) on the synthetic
images of :func:`synth_images`; the v1 numbers from probestore's code before presets.
"""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from extract.concepts import (
    PRESETS,
    colour,
    compute_concepts,
    concept_descriptions,
    graziani2019,
    shape,
    texture,
)
from probestore.errors import ConfigError
from probestore.experiment import CONCEPT_PRESETS, parse_config
from storage_schema.store import config_hash, open_store
from tests.conftest import DTD_DIR, MNIST_DIR, require_data

G19 = "graziani2019"
V1 = "probestore_v1"
ALL = ("colour", "texture", "shape")


def solid(rgb, size=(6, 6)):
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (*size, 3)).copy()


def g19(image, name):
    names = graziani2019.COLOUR_NAMES + graziani2019.TEXTURE_NAMES
    values = np.concatenate([graziani2019.colour_concepts(image), graziani2019.texture_concepts(image)])
    return values[names.index(name)]


def synth_images():
    """Uniform noise (24 x 24) and a colour gradient (32 x 32) whose hues sit on range ends."""
    a = np.random.default_rng(7).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    y, x = np.mgrid[:32, :32]
    b = np.stack([x * 8, y * 8, (x + y) * 4], -1).astype(np.uint8)
    return a, b


def read_dtd(n, size=64):
    Image = pytest.importorskip("PIL.Image")
    require_data(DTD_DIR)
    files = sorted(DTD_DIR.glob("*/*.jpg"))[5::131][:n]
    assert len(files) == n, f"expected {n} DTD images under {DTD_DIR}"
    return [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]


def read_mnist(n):
    path = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    require_data(path)
    with gzip.open(path) as f:
        f.read(16)
        return np.frombuffer(f.read(n * 784), np.uint8).reshape(n, 28, 28)


# ----------------------------------------------------------------------------- OpenCV HSV

#: cv2.cvtColor(cv2.cvtColor(rgb, COLOR_RGB2BGR), COLOR_BGR2HSV) with OpenCV 4.14.
CV2_HSV = [
    ((255, 0, 0), (0, 255, 255)), ((255, 128, 0), (15, 255, 255)), ((255, 255, 0), (30, 255, 255)),
    ((0, 255, 0), (60, 255, 255)), ((0, 255, 255), (90, 255, 255)), ((0, 0, 255), (120, 255, 255)),
    ((128, 0, 255), (135, 255, 255)), ((255, 0, 255), (150, 255, 255)), ((255, 0, 64), (172, 255, 255)),
    ((255, 85, 0), (10, 255, 255)), ((1, 0, 0), (0, 255, 1)), ((0, 1, 1), (90, 255, 1)),
    ((2, 1, 0), (15, 255, 2)), ((254, 255, 255), (90, 1, 255)), ((10, 200, 30), (63, 242, 200)),
    ((200, 30, 10), (3, 242, 200)), ((77, 77, 77), (0, 0, 77)), ((60, 0, 0), (0, 255, 60)),
    ((190, 190, 190), (0, 0, 190)), ((140, 160, 150), (75, 32, 160)), ((3, 2, 1), (15, 170, 3)),
    ((250, 1, 3), (0, 254, 250)), ((13, 7, 250), (121, 248, 250)), ((34, 32, 204), (120, 215, 204)),
    ((127, 151, 153), (92, 43, 153)), ((182, 7, 124), (160, 245, 182)), ((37, 102, 237), (110, 215, 237)),
    ((140, 18, 138), (150, 222, 140)), ((33, 193, 242), (97, 220, 242)), ((250, 159, 222), (159, 93, 250)),
    ((94, 37, 130), (138, 182, 130)), ((113, 169, 254), (108, 142, 254)), ((70, 219, 35), (54, 214, 219)),
    ((171, 117, 131), (172, 81, 171)), ((240, 209, 214), (175, 33, 240)), ((34, 52, 78), (108, 144, 78)),
]


def cv_hsv_pixel(r, g, b):
    """OpenCV's scalar RGB2HSV_b loop (color_hsv.simd.hpp) transliterated to Python ints."""
    v, vmin = max(r, g, b), min(r, g, b)
    diff = v - vmin
    sdiv = round((255 << 12) / v) if v else 0
    hdiv = round((180 << 12) / (6 * diff)) if diff else 0
    s = (diff * sdiv + (1 << 11)) >> 12
    h = g - b if v == r else (b - r + 2 * diff if v == g else r - g + 4 * diff)
    h = (h * hdiv + (1 << 11)) >> 12
    return (h + 180 if h < 0 else h), s, v


def test_opencv_hsv_equals_opencv_outputs():
    rgb = np.array([c for c, _ in CV2_HSV], np.uint8)
    np.testing.assert_array_equal(graziani2019.opencv_hsv(rgb), [h for _, h in CV2_HSV])


def test_opencv_hsv_equals_scalar_formula_and_float_hsv_within_one():
    rng = np.random.default_rng(0)
    rgb = np.concatenate([rng.integers(0, 256, (4000, 3)), np.repeat(np.arange(256)[:, None], 3, 1)])
    got = graziani2019.opencv_hsv(rgb.astype(np.uint8))
    np.testing.assert_array_equal(got, [cv_hsv_pixel(*map(int, c)) for c in rgb])
    # The fixed-point result is the textbook HSV rounded: within 1 unit of H = deg / 2, S = 255 dS.
    f = rgb / 255.0
    vmax, vmin = f.max(1), f.min(1)
    chroma = vmax > vmin
    s_float = np.where(vmax > 0, 255 * (vmax - vmin) / np.where(vmax > 0, vmax, 1), 0)
    assert np.abs(got[:, 1] - s_float).max() <= 1
    r, g, b = f[chroma].T
    c = (vmax - vmin)[chroma]
    deg = np.where(vmax[chroma] == r, 60 * (g - b) / c,
                   np.where(vmax[chroma] == g, 120 + 60 * (b - r) / c, 240 + 60 * (r - g) / c)) % 360
    gap = np.abs(got[chroma, 0] - deg / 2)
    assert np.minimum(gap, 180 - gap).max() <= 1


# ----------------------------------------------------------------------------- colour, by hand


def test_pure_red_is_all_red_and_colourfulness_uses_their_channel_order():
    values = dict(zip(graziani2019.COLOUR_NAMES, graziani2019.colour_concepts(solid((255, 0, 0)))))
    assert values["red"] == 1.0
    assert all(values[n] == 0.0 for n in graziani2019.COLOUR_NAMES[1:-1])
    # Their cv2.split reads (R, G, B) as (B, G, R): rg = |B - G| = 0, yb = |(B + G)/2 - R| = 255.
    assert values["colourfulness"] == 0.3 * 255
    # probestore_v1 (Hasler & Suesstrunk as published): rg = 255, yb = 127.5.
    assert colour.colourfulness(solid((255, 0, 0))) == pytest.approx(0.3 * math.hypot(255, 127.5))


@pytest.mark.parametrize(("rgb", "expected"), [
    ((255, 128, 0), {"orange"}),            # H 15
    ((255, 85, 0), {"red", "orange"}),      # H 10: both ranges include their ends
    ((255, 0, 64), set()),                  # H 172: the red range the authors' code drops
    ((255, 0, 255), {"magenta"}),           # H 150
    ((100, 0, 0), {"red"}),                 # V 100 >= 77, S 255 > 100: red, not black
    ((60, 0, 0), set()),                    # V 60 < 77 and S 255 > 100: neither red nor black
    ((0, 0, 0), {"blackness"}),
    ((255, 255, 255), {"whiteness"}),
    ((128, 128, 128), set()),               # V 128: neither white (< 190) nor black (> 100)
    ((190, 200, 200), {"whiteness"}),       # S 13 <= 50, V 200 >= 190
])
def test_solid_colours_fall_in_the_authors_ranges(rgb, expected):
    values = dict(zip(graziani2019.COLOUR_NAMES[:-1], graziani2019.colour_concepts(solid(rgb))[:-1]))
    assert {k for k, v in values.items() if v == 1.0} == expected
    assert all(v == 0.0 for k, v in values.items() if k not in expected)


def test_fractions_are_of_all_pixels_and_grey_input_is_r_equals_g_equals_b():
    image = solid((0, 0, 0), (8, 8))
    image[:2] = (0, 255, 0)
    values = dict(zip(graziani2019.COLOUR_NAMES, graziani2019.colour_concepts(image)))
    assert values["green"] == 0.25 and values["blackness"] == 0.75
    grey = np.array([[0, 255], [255, 100]], np.uint8)
    np.testing.assert_array_equal(graziani2019.colour_concepts(grey),
                                  graziani2019.colour_concepts(np.repeat(grey[..., None], 3, 2)))
    assert g19(grey, "whiteness") == 0.5 and g19(grey, "blackness") == 0.5  # 100 <= 100


# ----------------------------------------------------------------------------- texture, by hand


def test_glcm_of_stripes_and_checkerboard_by_hand():
    vertical = np.tile(np.array([0, 255], np.uint8), (6, 3))  # neighbours to the right differ
    for image in (vertical, (np.indices((6, 6)).sum(0) % 2 * 255).astype(np.uint8)):
        # Angle 0 pairs are all (0, 255) or (255, 0): P = 1/2 at both; 256 levels, no quantization.
        assert g19(image, "contrast") == 255**2 and g19(image, "dissimilarity") == 255
        assert g19(image, "homogeneity") == pytest.approx(1 / (1 + 255**2))
        assert g19(image, "ASM") == pytest.approx(0.5) and g19(image, "energy") == pytest.approx(0.5**0.5)
        assert g19(image, "correlation") == pytest.approx(-1)
    horizontal = vertical.T.copy()  # angle 0 only: the vertical changes are not seen
    assert g19(horizontal, "contrast") == 0 and g19(horizontal, "homogeneity") == 1
    assert g19(horizontal, "correlation") == pytest.approx(1)
    # probestore_v1 averages four angles of 32 levels: 3 of 4 see the change of 31 levels.
    assert texture.texture_concepts(horizontal)[texture.NAMES.index("contrast")] == pytest.approx(3 * 31**2 / 4)


def test_rgb_goes_to_grey_by_luma_rounded_to_256_levels():
    image = solid((0, 0, 0), (4, 6))
    image[:, 1::2] = (255, 0, 0)  # red / black columns: grey 0.2125 * 255 = 54.19 -> 54
    np.testing.assert_array_equal(graziani2019.grey_ubyte(image)[0], [0, 54, 0, 54, 0, 54])
    assert g19(image, "contrast") == 54**2
    assert g19(np.full((3, 3), 9, np.uint8), "correlation") == 1.0  # constant: skimage's convention


# ----------------------------------------------------------------------------- shape, by hand


def test_shape_is_the_whole_min_max_thresholded_mask():
    image = np.full((20, 20), 150, np.uint8)
    image[1:4, 1:4] = 255   # 9 px
    image[10:15, 10:15] = 255  # 25 px, not connected to the first square
    area, ecc, perimeter = graziani2019.shape_concepts(image)
    assert area == 34  # both pieces; (x - 150) / 105 > 0.5 keeps exactly the 255 pixels
    assert ecc > 0.5  # two squares along a diagonal: one elongated "region"
    assert shape.shape_concepts(image)[0] == 400  # v1: > 0.5 * max takes the whole image
    square = np.zeros((12, 12), np.uint8)
    square[2:8, 3:9] = 7
    np.testing.assert_allclose(graziani2019.shape_concepts(square)[:2], [36, 0], atol=1e-12)
    np.testing.assert_array_equal(graziani2019.shape_concepts(np.full((5, 5), 80, np.uint8)), [0, 0, 0])


# ----------------------------------------------------------------------------- the authors' numbers

#: flawed_utils.compute_concept_measures on synth_images() (a, b), renamed to probestore's names.
AUTHORS = {
    "dissimilarity": (61.085144927536234, 2.0), "contrast": (5642.860507246377, 4.0),
    "homogeneity": (0.009432442253041443, 0.2), "ASM": (0.0009238474060071414, 0.004660265998959417),
    "energy": (0.030394858216598764, 0.06826614094087505), "correlation": (0.01617810358813334, 0.9994100294985251),
    "colourfulness": (115.94956928718794, 77.46903401392132), "blackness": (0.008680555555555556, 0.0595703125),
    "whiteness": (0.026041666666666668, 0.083984375), "red": (0.0642361111111111, 0.0),
    "orange": (0.0763888888888889, 0.0), "yellow": (0.09027777777777778, 0.0),
    "green": (0.14930555555555555, 0.365234375), "cyan": (0.14930555555555555, 0.365234375),
    "blue": (0.1388888888888889, 0.0), "purple": (0.1111111111111111, 0.0),
    "magenta": (0.11805555555555555, 0.365234375),
}

#: probestore's compute_concepts before presets (git HEAD d993eab) on synth_images().
V1_NUMBERS = {
    "red": (0.08333333333333333, 0.0), "orange": (0.0763888888888889, 0.0),
    "yellow": (0.08506944444444445, 0.0), "green": (0.21354166666666666, 0.3857421875),
    "cyan": (0.0763888888888889, 0.0), "blue": (0.16319444444444445, 0.0), "purple": (0.078125, 0.0),
    "magenta": (0.171875, 0.3857421875), "whiteness": (0.024305555555555556, 0.06640625),
    "blackness": (0.005208333333333333, 0.0478515625), "colourfulness": (142.75775570966968, 104.46051885760477),
    "energy": (0.05177490345578095, 0.12993788609728288), "ASM": (0.002680682711095076, 0.017072329735108232),
    "dissimilarity": (7.744033553875228, 0.6300240634755463), "homogeneity": (0.11515349031081301, 0.6853001430801249),
    "contrast": (90.63262051039702, 0.6331458116545265), "correlation": (-0.009208743277750106, 0.9937747894128719),
    "area": (303.0, 512.0), "eccentricity": (0.34054552750328987, 0.8568311832328519),
    "perimeter": (233.3319984622144, 96.14213562373095),
}


def test_default_preset_reproduces_the_authors_code_serial_and_parallel():
    images = list(synth_images())
    got = compute_concepts(images, ("colour", "texture"), n_jobs=1, progress=False)
    for name, want in AUTHORS.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=0, err_msg=name)
    parallel = compute_concepts(images * 2, ALL, n_jobs=2, chunk_size=1, progress=False)
    for name in got:
        np.testing.assert_array_equal(parallel[name], np.tile(got[name], 2), err_msg=name)


def test_probestore_v1_preset_still_gives_the_old_numbers():
    got = compute_concepts(list(synth_images()), ALL, n_jobs=1, progress=False, preset=V1)
    for name, want in V1_NUMBERS.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=0, err_msg=name)


# ----------------------------------------------------------------------------- real images


def authors_colour_reference(image):
    """Their colorness / colorfulness, per pixel: OpenCV HSV by the scalar loop, cv2.inRange rules."""
    n = image.shape[0] * image.shape[1]
    counts = dict.fromkeys(graziani2019.COLOUR_NAMES[:-1], 0)
    ranges = {"red": (0, 10), "orange": (10, 25), "yellow": (25, 40), "green": (40, 75), "cyan": (75, 100),
              "blue": (100, 125), "purple": (125, 145), "magenta": (145, 165)}
    for r, g, b in image.reshape(-1, 3).tolist():
        h, s, v = cv_hsv_pixel(r, g, b)
        counts["whiteness"] += s <= 50 and v >= 190
        counts["blackness"] += s <= 100 and v <= 100
        for name, (lo, hi) in ranges.items():
            counts[name] += lo <= h <= hi and s >= 50 and v >= 77
    B, G, R = (image[..., k].astype(float) for k in range(3))  # (B, G, R) = cv2.split(rgb image)
    rg, yb = np.absolute(R - G), np.absolute(0.5 * (R + G) - B)
    cf = np.sqrt(np.std(rg) ** 2 + np.std(yb) ** 2) + 0.3 * np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2)
    return np.array([counts[k] / n for k in counts] + [cf])


def authors_texture_reference(image):
    """Angle-0 distance-1 symmetric normalised GLCM at 256 levels and Haralick's formulas, by hand."""
    grey = np.rint((image / 255.0) @ np.array([0.2125, 0.7154, 0.0721]) * 255).astype(int)
    glcm = np.zeros((256, 256))
    np.add.at(glcm, (grey[:, :-1].ravel(), grey[:, 1:].ravel()), 1)
    glcm = glcm + glcm.T
    p = glcm / glcm.sum()
    i, j = np.indices(p.shape)
    mu_i, mu_j = (p * i).sum(), (p * j).sum()
    sd_i, sd_j = np.sqrt((p * (i - mu_i) ** 2).sum()), np.sqrt((p * (j - mu_j) ** 2).sum())
    asm = (p**2).sum()
    return np.array([np.sqrt(asm), asm, (p * abs(i - j)).sum(), (p / (1 + (i - j) ** 2)).sum(),
                     (p * (i - j) ** 2).sum(), (p * (i - mu_i) * (j - mu_j)).sum() / (sd_i * sd_j)])


def test_dtd_colour_and_texture_equal_independent_computation_of_their_formulas():
    images = read_dtd(6)
    got = compute_concepts(images, ("colour", "texture"), n_jobs=1, progress=False)
    for k, image in enumerate(images):
        want = np.concatenate([authors_colour_reference(image), authors_texture_reference(image)])
        names = graziani2019.COLOUR_NAMES + graziani2019.TEXTURE_NAMES
        np.testing.assert_allclose([got[n][k] for n in names], want, rtol=1e-9, atol=0)
    assert 0 < np.mean(got["red"] + got["orange"] + got["blue"] + got["green"]) < 1  # real colours


def test_mnist_shape_equals_mask_moments_by_hand():
    from skimage.measure import perimeter

    digits = read_mnist(30)
    got = compute_concepts(digits, ("shape",), n_jobs=1, progress=False)
    for k, digit in enumerate(digits):
        lo, hi = int(digit.min()), int(digit.max())
        mask = (digit.astype(float) - lo) / (hi - lo) > 0.5
        rows, cols = np.nonzero(mask)
        cov = np.cov(np.stack([rows, cols]), bias=True)
        small, large = np.linalg.eigvalsh(cov)
        assert got["area"][k] == mask.sum()
        assert got["eccentricity"][k] == pytest.approx(np.sqrt(1 - small / large), abs=1e-9)
        assert got["perimeter"][k] == pytest.approx(perimeter(mask, 4), rel=1e-12)
    assert (got["area"] > got["area"].min()).any()  # not a degenerate constant


# ----------------------------------------------------------------------------- config and store


def _config(tmp_path, suffix=".zarr", **concepts):
    return parse_config({
        "experiment": {"name": "presets", "store": str(tmp_path / f"s{suffix}"), "seed": 0},
        "dataset": {"kind": "imagefolder", "path": str(DTD_DIR), "image_size": 16, "max_samples": 24},
        "splits": {"train": 0.5, "valid": 0.25, "test": 0.25},
        "model": {"name": "mlp", "options": {"depth": 1, "width": 4}},
        "runs": [{"name": "r", "checkpoints": str(tmp_path)}],
        "extract": {"layers": ["input"]},
        "concepts": {"families": ["colour", "texture"], **concepts},
    }, source="presets.toml")


def test_config_preset_default_validation_and_hash(tmp_path):
    assert CONCEPT_PRESETS == PRESETS and CONCEPT_PRESETS[0] == G19
    default, v1 = _config(tmp_path), _config(tmp_path, preset=V1)
    assert default.concepts.preset == G19 and default.concepts.texture_levels is None
    assert default.content()["concepts"]["preset"] == G19
    assert v1.concepts.texture_levels == 32 and v1.content()["concepts"]["texture_levels"] == 32
    assert config_hash(default.content()) != config_hash(v1.content())
    with pytest.raises(ConfigError, match=r"unknown concept preset.*did you mean 'graziani2019'"):
        _config(tmp_path, preset="graziani")
    with pytest.raises(ConfigError, match=r"texture_levels does not apply.*probestore_v1") as info:
        _config(tmp_path, texture_levels=64)
    assert "[concepts].texture_levels" in str(info.value)
    assert _config(tmp_path, preset=V1, texture_levels=64).concepts.texture_levels == 64  # the fix works
    with pytest.raises(ConfigError, match="texture_levels does not apply"):
        compute_concepts([solid((1, 2, 3))], texture_levels=64, progress=False)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_store_records_preset_and_refuses_another_on_rerun(tmp_path, suffix):
    from extract.pipeline import add_targets, load_experiment, open_or_create_store

    require_data(DTD_DIR)
    cfg = _config(tmp_path, suffix)
    exp = load_experiment(cfg)
    store, created = open_or_create_store(exp)
    add_targets(store, exp, progress=False)
    store.close()
    store = open_store(cfg.store)
    assert created and store.config["concepts"]["preset"] == G19
    info = store.target_info("contrast")
    assert info.description.startswith("graziani2019: ") and "256 grey levels" in info.description
    images = [exp.dataset.raw(i) for i in range(len(exp.dataset))]
    want = compute_concepts(images, ("colour", "texture"), n_jobs=1, progress=False)
    for name in ("contrast", "red", "colourfulness"):
        np.testing.assert_array_equal(store.read_target(name), want[name])
    store.close()

    other = load_experiment(_config(tmp_path, suffix, preset=V1))
    with pytest.raises(ConfigError, match="another concept preset") as info:
        open_or_create_store(other)
    text = str(info.value)
    assert "expected preset 'probestore_v1'" in text and "got preset 'graziani2019'" in text
    assert 'set [concepts] preset = "graziani2019" without texture_levels in presets.toml to reuse' in text
    with pytest.raises(ConfigError, match='preset = "graziani2019" without texture_levels'):
        open_or_create_store(load_experiment(_config(tmp_path, suffix, preset=V1, texture_levels=8)))
    store, created = open_or_create_store(load_experiment(cfg))  # the fix: the store's preset
    assert not created
    store.close()
    store, created = open_or_create_store(other, overwrite=True)  # or --overwrite: recomputed
    add_targets(store, other, progress=False)
    description = store.target_info("contrast").description
    assert created and description.startswith("probestore_v1: ") and "32 levels" in description
    np.testing.assert_array_equal(store.read_target("contrast"), compute_concepts(
        images, ("texture",), n_jobs=1, progress=False, preset=V1)["contrast"])
    store.close()


def test_store_from_before_presets_is_refused_with_a_working_fix(tmp_path):
    from extract.pipeline import load_experiment, open_or_create_store
    from storage_schema.store import create_store

    require_data(DTD_DIR)
    cfg = _config(tmp_path, preset=V1)
    exp = load_experiment(cfg)
    old = {**cfg.content(), "concepts": {k: v for k, v in cfg.content()["concepts"].items() if k != "preset"}}
    ds = exp.dataset
    create_store(cfg.store, dataset_name=ds.name, sample_ids=ds.sample_ids, labels=ds.labels,
                 splits=exp.splits, class_names=ds.class_names, config=old).close()
    with pytest.raises(ConfigError, match=r"another concept preset.*before presets.*--overwrite"):
        open_or_create_store(exp)
    store, created = open_or_create_store(exp, overwrite=True)
    assert created and store.config["concepts"]["preset"] == V1
    store.close()


def test_descriptions_name_the_preset():
    g, v = concept_descriptions(), concept_descriptions(V1)
    assert set(g) == set(v) and len(g) == 20
    assert all(d.startswith("graziani2019: ") for d in g.values())
    assert all(d.startswith("probestore_v1: ") for d in v.values())
    with pytest.raises(ConfigError, match="did you mean 'probestore_v1'"):
        concept_descriptions("probestore-v1")
