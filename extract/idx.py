"""Read IDX files (the MNIST / Fashion-MNIST container), gzipped or plain.

torchvision's ``MNIST`` class insists on its own folder layout and on finding the
training images too, which the shared MNIST folder does not have; reading the IDX
container directly is 30 lines and works on any folder.

Format (LeCun's page): two zero bytes, a type code, the number of dimensions ``ndim``,
then ``ndim`` big-endian uint32 sizes, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probestore.errors import DataError

__all__ = ["IdxPart", "read_idx", "read_idx_folder"]

#: IDX type code -> big-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            "IDX file not found", where=str(path), fix="check the dataset path"
        ) from None
    except OSError as exc:
        raise DataError("cannot read IDX file", where=str(path), got=str(exc)) from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(
                "corrupt gzip stream",
                where=str(path),
                got=str(exc),
                fix="re-download or re-extract the file",
            ) from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Decode one IDX file into a native-endian numpy array.

    Parameters
    ----------
    path : str or Path
        An IDX file, gzipped (detected from its content, not its name) or plain.

    Returns
    -------
    numpy.ndarray
        Shape from the header, dtype from the type code (``uint8`` for MNIST), in
        native byte order so that downstream code never sees a big-endian array.

    Raises
    ------
    DataError
        If the file is missing, not IDX (bad magic / unknown type code), or its size
        does not match the dimensions in its header (a truncated download).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(
            "not an IDX file (bad magic number)",
            where=str(path),
            expected="bytes 00 00 <type 08..0e> <ndim>",
            got=raw[:4].hex(" ") if raw else "an empty file",
            fix="point the dataset at the *-idx?-ubyte[.gz] files",
        )
    dtype = _DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(
            "truncated IDX header", where=str(path), expected=f"{header} header bytes", got=len(raw)
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != n_bytes:
        raise DataError(
            "IDX data size does not match its header",
            where=str(path),
            expected=f"{n_bytes} data bytes for shape {shape}",
            got=f"{len(raw) - header} bytes",
            fix="the file is truncated or corrupt: re-download it",
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


# ----------------------------------------------------------------- folders of IDX files

#: Standard file names: ``train-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte`` ...
_IDX_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9]+)-(?P<what>images|labels)-idx\d-ubyte(?:\.gz)?$")
#: File-name prefix -> predefined split.
IDX_PREFIXES = {"train": "train", "t10k": "test", "test": "test"}


@dataclass(frozen=True)
class IdxPart:
    """One images + labels pair of an IDX folder (e.g. MNIST's ``t10k`` part)."""

    prefix: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    images_file: str
    labels_file: str


def read_idx_folder(folder: str | Path, subset: str = "all") -> list[IdxPart]:
    """Find and read the standard-named image/label pairs of an MNIST-style folder.

    Parameters
    ----------
    folder : str or Path
        Holds ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]``
        with prefix ``train`` or ``t10k`` (MNIST, Fashion-MNIST, KMNIST use these).
    subset : {"all", "train", "test"}
        ``"all"`` reads every complete pair present (train first, then test): the shared
        MNIST folder has the t10k pair and only the *labels* of train.

    Returns
    -------
    list of IdxPart

    Raises
    ------
    DataError
        No complete pair for ``subset`` (the message lists the files found), images
        and labels of different lengths, or an unreadable file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("IDX dataset folder not found", where=str(folder),
                        expected="a folder with <part>-images-idx3-ubyte[.gz] files",
                        fix="check the dataset path")
    names = sorted(p.name for p in folder.iterdir())
    found: dict[tuple[str, str], str] = {}
    for name in names:
        m = _IDX_NAME.match(name)
        if m and m["prefix"] in IDX_PREFIXES:
            key = (m["prefix"], m["what"])
            # a plain copy (as torchvision leaves it after gunzip) wins over the .gz
            if key not in found or not name.endswith(".gz"):
                found[key] = name
    wanted = ("train", "test") if subset == "all" else (subset,)
    prefixes = [p for split in wanted for p in IDX_PREFIXES if IDX_PREFIXES[p] == split
                and (p, "images") in found and (p, "labels") in found]
    if not prefixes:
        raise DataError(
            f"no IDX images + labels pair for subset {subset!r}", where=str(folder),
            expected="train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] and/or"
                     " t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]",
            got="files: " + (", ".join(names) if names else "none"),
            fix="point the path at the folder holding both files, or change subset")
    parts = []
    for p in prefixes:
        images_file, labels_file = found[(p, "images")], found[(p, "labels")]
        x, y = read_idx(folder / images_file), read_idx(folder / labels_file)
        ok_images = x.dtype == np.uint8 and (x.ndim == 3 or (x.ndim == 4 and x.shape[3] == 3))
        if not ok_images or y.ndim != 1 or len(x) != len(y):
            raise DataError("IDX images and labels do not match", where=str(folder / images_file),
                            expected="uint8 images (N, H, W[, 3]) and labels (N,)",
                            got=f"images {x.dtype}{x.shape}, labels {y.dtype}{y.shape}")
        parts.append(IdxPart(p, IDX_PREFIXES[p], x, y.astype(np.int64), images_file, labels_file))
    return parts
