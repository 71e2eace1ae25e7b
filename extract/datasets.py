"""Image datasets for probing: one spec (recorded in the store), one loader, four sources.

A probing experiment must be reproducible from what the store records, so a dataset is
described by a plain :class:`~probestore.experiment.dataset.DatasetSpec` (the
experiment file's ``[dataset]`` table: kind, path, resize, channels, normalization,
subsample, seed) whose :meth:`DatasetSpec.to_dict` goes into the store, and every
sample gets a *stable id* (``"t10k:000123"``, ``"banded/banded_0002.jpg"``,
``"digits:17"``) so that activations, concept measures and splits can be matched by id
rather than by position.

Two views of the same images are served because the two consumers need different
things: :meth:`ImageDataset.raw` gives the resized ``uint8`` pixels that concept
measures (colour, texture, area) are computed on, and :meth:`ImageDataset.torch_dataset`
gives normalized float tensors for the network. torch is imported only by the latter,
so that listing or validating a dataset stays cheap.

Resizing
--------
``image_size`` (an int or ``[H, W]``) resizes with bilinear interpolation (PIL, with
antialiasing). In-memory sources (idx, npz, digits) have one size and are resized
directly. ImageFolder images have arbitrary sizes and aspect ratios, so they are scaled
until they *cover* ``H x W`` (for a square target: the shorter side becomes ``H``) and
then center-cropped, as torchvision's ``Resize`` + ``CenterCrop`` do; no distortion.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from probestore.errors import ConfigError, DataError
from probestore.experiment.dataset import DatasetSpec

__all__ = ["ImageDataset", "load_dataset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: ImageFolder images are kept in memory once decoded when they fit in this many bytes.
CACHE_LIMIT_BYTES = 2 * 1024**3
#: ``normalize = "dataset"`` on a lazily decoded folder estimates mean/std from at most
#: this many seeded images (decoding a million JPEGs to normalize would dominate the run).
NORM_MAX_IMAGES = 2000



# --------------------------------------------------------------------------- dataset


class ImageDataset:
    """Loaded images with stable ids, labels and two views (raw uint8, torch tensors).

    Built by :func:`load_dataset`; the attributes are plain numpy so that the analyze
    stage and the store writer can use them without torch.

    Attributes
    ----------
    name : str
    spec : DatasetSpec
        The spec, with ``name`` and ``channels`` resolved.
    sample_ids : numpy.ndarray of str
    labels : numpy.ndarray of int64
    class_names : list of str
        ``class_names[label]`` names a label.
    predefined_split : numpy.ndarray of str or None
        ``"train"`` / ``"test"`` per sample for sources that come split (idx).
    """

    def __init__(self, spec: DatasetSpec, sample_ids: np.ndarray, labels: np.ndarray,
                 class_names: list[str], *, images: np.ndarray | None = None,
                 files: list[Path] | None = None, predefined_split: np.ndarray | None = None,
                 origin: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.name: str = spec.name  # type: ignore[assignment]
        self.sample_ids = np.asarray(sample_ids, dtype=str)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.predefined_split = predefined_split
        self._origin = origin or {}
        self._files = files
        self._images = images
        self._hw: tuple[int, ...]
        if images is not None:
            images.flags.writeable = False
            self._hw = images.shape[1:3]
        else:
            hw = spec.size_hw
            if hw is None:
                # Only the array-backed kinds (digits, idx) may omit image_size, and
                # they always come with ``images``; files have no common native size.
                raise ConfigError("file-backed datasets need image_size", where="DatasetSpec.image_size",
                                  expected="an int or [H, W]", got="None",
                                  fix="add image_size (e.g. the size of the dataset these files go with)")
            self._hw = hw
        self.channels: int = spec.channels  # type: ignore[assignment]
        self._cache: np.ndarray | None = None
        self._cached: np.ndarray | None = None
        if files is not None:
            shape = (len(files), *self._hw) + ((3,) if self.channels == 3 else ())
            if int(np.prod(shape, dtype=np.int64)) <= CACHE_LIMIT_BYTES:
                self._cache = np.zeros(shape, np.uint8)
                self._cached = np.zeros(len(files), bool)
        self._norm: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, classes={len(self.class_names)},"
                f" shape={self.image_shape})")

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one :meth:`raw` image: ``(H, W)`` or ``(H, W, 3)``."""
        return tuple(self._hw) + ((3,) if self.channels == 3 else ())

    def raw(self, i: int) -> np.ndarray:
        """The ``uint8`` image ``i`` after resize / channel conversion (a copy)."""
        if self._images is not None:
            return self._images[i].copy()
        if self._cached is not None and self._cached[i]:
            return self._cache[i].copy()  # type: ignore[index]
        img = _decode_file(self._files[i], self._hw, self.channels)  # type: ignore[index]
        if self._cached is not None:
            self._cache[i] = img  # type: ignore[index]
            self._cached[i] = True
        return img

    def raw_batch(self, indices: Any) -> np.ndarray:
        """Stack of :meth:`raw` images, shape ``(len(indices), *image_shape)``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._images is not None:
            return self._images[idx]
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        for k, i in enumerate(idx):
            out[k] = self.raw(int(i))
        return out

    def preload(self, threads: int = 4) -> None:
        """Decode every image into the in-memory cache now (no-op when not cached).

        Called before DataLoader workers start, so that they share one decoded copy
        (fork) instead of each decoding and caching its own. PIL releases the GIL while
        decoding and resizing, so threads help.
        """
        if self._cached is None or self._cached.all():
            return
        from concurrent.futures import ThreadPoolExecutor

        todo = np.flatnonzero(~self._cached).tolist()
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for _ in pool.map(self.raw, todo):
                pass

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(mean, std)`` in [0, 1] pixel units that the network input uses.

        ``"dataset"`` statistics are over all pixels of all samples (in-memory sources)
        or of at most :data:`NORM_MAX_IMAGES` seeded samples (folders), computed once.
        """
        if self._norm is None:
            c = self.channels
            mode = self.spec.normalize
            if mode == "none":
                mean, std = np.zeros(c), np.ones(c)
            elif mode == "explicit":
                mean, std = _per_channel(self.spec.mean, c), _per_channel(self.spec.std, c)
            else:
                mean, std = self._dataset_stats()
            self._norm = (mean.astype(np.float32), std.astype(np.float32))
        return self._norm

    def _dataset_stats(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        idx = np.arange(n)
        if self._images is None and n > NORM_MAX_IMAGES:
            rng = np.random.default_rng(self.spec.seed)
            idx = np.sort(rng.choice(n, NORM_MAX_IMAGES, replace=False))
        total = np.zeros(self.channels)
        total_sq = np.zeros(self.channels)
        count = 0
        for start in range(0, len(idx), 2048):
            x = self.raw_batch(idx[start:start + 2048]).astype(np.float64) / 255.0
            x = x.reshape(-1, self.channels)
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            count += x.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        return mean, np.where(std > 1e-8, std, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """The spec plus everything resolved at load time (for the store's metadata)."""
        mean, std = self.normalization()
        return {
            "spec": self.spec.to_dict(),
            "n_samples": len(self),
            "n_classes": len(self.class_names),
            "class_names": self.class_names,
            "image_shape": list(self.image_shape),
            "transforms": {
                "resize": self._origin.get("resize", "none"),
                "interpolation": "bilinear",
                "channels": self.channels,
                "scale": "1/255",
                "mean": [float(v) for v in mean],
                "std": [float(v) for v in std],
            },
            "source": {k: v for k, v in self._origin.items() if k != "resize"},
        }

    def torch_dataset(self):
        """A ``torch.utils.data.Dataset`` of ``(float32 tensor C x H x W, index)``.

        Pixels are scaled to [0, 1] and standardized with :meth:`normalization`; the
        index lets a consumer map each output row back to :attr:`sample_ids`.
        """
        self.normalization()  # computed once here, not in every DataLoader worker
        return _torch_dataset_class()(self)


def _per_channel(values: tuple[float, ...] | None, c: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) != c:
        raise ConfigError("mean/std need one value per channel", where="dataset.mean",
                          expected=c, got=len(arr), fix=f"give {c} values or set channels")
    return arr


# --------------------------------------------------------------------------- torch view

_TORCH_CLASS = None


def _torch_dataset_class():
    """Create the torch Dataset subclass on first use (keeps ``import torch`` lazy)."""
    global _TORCH_CLASS
    if _TORCH_CLASS is None:
        import torch

        class TorchImageDataset(torch.utils.data.Dataset):
            """Network-ready view of an :class:`ImageDataset`."""

            def __init__(self, images: ImageDataset) -> None:
                self.images = images
                mean, std = images.normalization()
                self._mean = mean.reshape(-1, 1, 1)
                self._std = std.reshape(-1, 1, 1)

            def __len__(self) -> int:
                return len(self.images)

            def _to_tensor(self, x: np.ndarray):
                x = x.astype(np.float32) / np.float32(255.0)
                # (..., H, W) grey or (..., H, W, 3) RGB -> (..., C, H, W)
                x = x[..., None, :, :] if self.images.channels == 1 else np.moveaxis(x, -1, -3)
                return torch.from_numpy(np.ascontiguousarray((x - self._mean) / self._std))

            def __getitem__(self, i):
                return self._to_tensor(self.images.raw(int(i))), int(i)

            def __getitems__(self, indices):  # one vectorized conversion per batch
                x = self._to_tensor(self.images.raw_batch(indices))
                return [(x[k], int(i)) for k, i in enumerate(indices)]

        TorchImageDataset.__module__ = __name__
        TorchImageDataset.__qualname__ = "TorchImageDataset"
        _TORCH_CLASS = TorchImageDataset
    return _TORCH_CLASS


def __getattr__(name: str):
    # pickle (DataLoader workers under spawn / forkserver) looks the class up by name.
    if name == "TorchImageDataset":
        return _torch_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- loading


def load_dataset(spec: DatasetSpec) -> ImageDataset:
    """Load a dataset as described by ``spec``.

    Parameters
    ----------
    spec : DatasetSpec or dict
        A dict is read with :meth:`DatasetSpec.from_dict`.

    Returns
    -------
    ImageDataset
        idx / npz / digits images are resized and held in memory as ``uint8``;
        imagefolder images are decoded on first access (then cached when small).

    Raises
    ------
    DataError
        Missing files, empty folders, unreadable images, inconsistent arrays.
    """
    if isinstance(spec, dict):
        spec = DatasetSpec.from_dict(spec)
    elif not isinstance(spec, DatasetSpec):
        raise ConfigError("load_dataset needs a DatasetSpec", where="load_dataset(spec)",
                          expected="DatasetSpec or a dict of its fields", got=type(spec).__name__)
    loader = {"idx": _load_idx, "imagefolder": _load_folder, "npz": _load_npz,
              "digits": _load_digits}[spec.kind]
    spec = dataclasses.replace(spec)  # the resolved copy this dataset records
    ids, labels, class_names, payload, extra = loader(spec)
    if spec.class_names is not None:
        if len(spec.class_names) < len(class_names):
            raise ConfigError("too few class_names for the labels found", where="dataset.class_names",
                              expected=f"at least {len(class_names)} names", got=len(spec.class_names))
        class_names = list(spec.class_names)
    keep = _stratified_subsample(labels, spec.max_samples, spec.seed)
    ids, labels = ids[keep], labels[keep]
    predefined = extra.pop("predefined_split", None)
    if predefined is not None:
        predefined = predefined[keep]
    if isinstance(payload, np.ndarray):
        images, native_c = _prepare_array(payload[keep], spec, extra)
        spec.channels = spec.channels or native_c
        spec._validate("DatasetSpec")
        return ImageDataset(spec, ids, labels, class_names, images=images,
                            predefined_split=predefined, origin=extra)
    spec.channels = spec.channels or 3
    spec._validate("DatasetSpec")
    files = [payload[i] for i in keep]
    extra["resize"] = "cover+center_crop"
    return ImageDataset(spec, ids, labels, class_names, files=files,
                        predefined_split=predefined, origin=extra)


def _stratified_subsample(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified seeded subsample (all when it fits)."""
    n = len(labels)
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * max_samples / n
    take = np.floor(quota).astype(np.int64)
    # largest remainders get the leftover slots; ties broken by class order (deterministic)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: max_samples - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False)
              for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def _prepare_array(images: np.ndarray, spec: DatasetSpec, extra: dict) -> tuple[np.ndarray, int]:
    """Resize and convert in-memory images; returns ``(images, native channels)``."""
    native_c = 3 if images.ndim == 4 else 1
    target_c = spec.channels or native_c
    hw = spec.size_hw
    extra["resize"] = "none" if hw is None or tuple(images.shape[1:3]) == hw else "resize"
    if extra["resize"] == "none" and target_c == native_c:
        return np.ascontiguousarray(images), native_c
    from PIL import Image

    out_hw = hw or images.shape[1:3]
    out = np.empty((len(images), *out_hw) + ((3,) if target_c == 3 else ()), np.uint8)
    for i, a in enumerate(images):
        img = _convert(Image.fromarray(a), target_c)
        if extra["resize"] == "resize":
            img = img.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img)
    return out, native_c


def _convert(img, channels: int):
    mode = "L" if channels == 1 else "RGB"
    return img if img.mode == mode else img.convert(mode)


def _decode_file(path: Path, hw: tuple[int, ...], channels: int) -> np.ndarray:
    """Decode, scale to cover ``hw`` and center-crop one image file."""
    from PIL import Image, UnidentifiedImageError

    h, w = hw
    try:
        with Image.open(path) as img:
            scale = max(h / img.height, w / img.width)
            new_w = max(w, round(img.width * scale))
            new_h = max(h, round(img.height * scale))
            img.draft("RGB" if channels == 3 else "L", (new_w, new_h))  # JPEG DCT downscale
            img = _convert(img, channels)
            scale = max(h / img.height, w / img.width)
            new_w = max(w, round(img.width * scale))
            new_h = max(h, round(img.height * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - w) // 2, (new_h - h) // 2
            return np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError("cannot read image", where=str(path), got=f"{type(exc).__name__}: {exc}",
                        fix="remove or replace the file") from None


def _load_idx(spec: DatasetSpec):
    from extract.idx import read_idx_folder

    parts = read_idx_folder(spec.path, spec.subset)  # type: ignore[arg-type]
    ids = np.concatenate([np.array([f"{p.prefix}:{i:06d}" for i in range(len(p.labels))])
                          for p in parts])
    labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
    class_names = [str(k) for k in range(int(labels.max()) + 1)]
    extra = {"files": [p.images_file for p in parts] + [p.labels_file for p in parts],
             "predefined_split": np.concatenate([np.full(len(p.labels), p.split) for p in parts])}
    return ids, labels, class_names, np.concatenate([p.images for p in parts]), extra


def _load_folder(spec: DatasetSpec):
    root = Path(spec.path)  # type: ignore[arg-type]
    if not root.is_dir():
        raise DataError("image folder not found", where=str(root), fix="check dataset.path")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError("image folder has no class sub-folders", where=str(root),
                        expected="<path>/<class>/<image files>", got="no sub-folders")
    files, labels = [], []
    for k, c in enumerate(classes):
        found = sorted(p for p in (root / c).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                       and not p.name.startswith("."))
        if not found:
            raise DataError("class folder has no images", where=str(root / c),
                            expected="files ending in " + " ".join(IMAGE_EXTENSIONS),
                            fix="remove the folder or add its images")
        files += found
        labels += [k] * len(found)
    ids = np.array([p.relative_to(root).as_posix() for p in files])
    return ids, np.array(labels, np.int64), classes, files, {}


def _load_npz(spec: DatasetSpec):
    path = Path(spec.path)  # type: ignore[arg-type]
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError("npz file not found", where=str(path), fix="check dataset.path") from None
    except (OSError, ValueError) as exc:
        raise DataError("cannot read npz file", where=str(path), got=str(exc)) from None
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(f"npz file lacks array {key!r}", where=str(path),
                            expected="arrays images, labels [, ids, class_names]",
                            got=sorted(arrays))
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    ok_shape = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
    if images.dtype != np.uint8 or not ok_shape or labels.shape != (len(images),) \
            or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DataError("npz arrays have the wrong shape or type", where=str(path),
                        expected="images uint8 (N, H, W[, 3]), labels int >= 0 (N,)",
                        got=f"images {images.dtype}{images.shape}, labels {labels.dtype}{labels.shape}")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    if "class_names" in arrays:
        class_names = [str(c) for c in arrays["class_names"]]
        if len(class_names) < n_classes:
            raise DataError("fewer class_names than labels", where=f"{path}:class_names",
                            expected=f">= {n_classes}", got=len(class_names))
    else:
        class_names = [str(k) for k in range(n_classes)]
    ids = arrays["ids"].astype(str) if "ids" in arrays else np.array([str(i) for i in range(len(labels))])
    if ids.shape != labels.shape or len(np.unique(ids)) != len(ids):
        raise DataError("npz ids must be unique, one per image", where=f"{path}:ids",
                        got=f"{len(np.unique(ids))} unique of {ids.size}")
    return ids, labels.astype(np.int64), class_names, images, {"file": path.name}


def _load_digits(spec: DatasetSpec):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    ids = np.array([f"digits:{i}" for i in range(len(images))])
    class_names = [str(c) for c in bunch.target_names]
    return ids, bunch.target.astype(np.int64), class_names, images, {"source": "sklearn.load_digits"}
