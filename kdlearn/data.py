"""Datasets for the Hinton 2015 lessons: fixed train / validation / transfer / test splits as
float32 tensors.

    from kdlearn import data
    ds = data.digits()        # scikit-learn's 8x8 digits, bundled with scikit-learn: no network
    ds = data.mnist()         # the real MNIST, downloaded once into the user's cache folder
    ds = data.load("digits")  # either, by name

    ds.train.x   # float32 (N, H*W), pixels in [0, 1]
    ds.train.y   # int64 (N,), classes 0..9
    ds.validation                  # held out of train: choose settings on it, never on ds.test
    ds.transfer.without_class(3)   # lesson 03: a transfer set with every 3 removed

digits() needs scikit-learn (part of kdlearn[course]); mnist() needs network once, then reads
its verified copy from the user's cache folder, and raises DataUnavailableError (an OSError)
naming digits() as the alternative when it can neither download nor find the files.

The splits are fixed: the same images on every machine and every call. The test split is for
the figures a lesson reports; the validation split, carved out of the training images and
disjoint from both train and test, is for choosing settings (learning rates, epochs, T, alpha,
a bias shift) by measurement. The transfer split is the teacher's own training set, as in the
paper, but as a Split of its own (its own tensors): a lesson may change it without touching
the training set.

Every held-out split (digits' test, digits' and MNIST's validation) follows one rule: of N
images, n_c of class c, a split of `size` images gives class c size * n_c / N rounded down,
then one more image to each of the classes with the largest remainders until there are `size`
(equal remainders: the lower class first); within a class the images are drawn by
numpy.random.RandomState(seed), NumPy's legacy generator, whose stream is frozen, so that the
split is the same for every NumPy version.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import torch

from kdlearn._validation import check_choice

DATASETS = ("digits", "mnist")


@dataclass(frozen=True)
class Split:
    """Examples x (float32 (N, H*W), pixels in [0, 1]) and their labels y (int64 (N,), in
    [0, num_classes))."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int = 10

    def __post_init__(self):
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.float32 or self.x.dim() != 2:
            raise ValueError(f"x must be a float32 tensor of shape (N, features), got {_describe(self.x)}")
        if not isinstance(self.y, torch.Tensor) or self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise ValueError(f"y must be an int64 tensor of shape (N,), got {_describe(self.y)}")
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y must hold the same number of examples, got {len(self.x)} and {len(self.y)}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"y must hold classes in [0, {self.num_classes}), "
                             f"found {self.y.min().item()}..{self.y.max().item()}")

    def __len__(self) -> int:
        return len(self.y)

    def without_class(self, c: int) -> Split:
        """A new Split (its own tensors) with every example of class c removed, order kept."""
        if isinstance(c, bool) or not isinstance(c, Integral) or not 0 <= c < self.num_classes:
            raise ValueError(f"c must be a class in [0, {self.num_classes}), got {c!r}")
        keep = self.y != int(c)
        return Split(self.x[keep], self.y[keep], self.num_classes)


@dataclass(frozen=True)
class Dataset:
    """A named dataset: image_shape (H, W), num_classes, and its Splits: train, transfer (the same
    images as train, in tensors of its own), test, and validation (held out of the training
    images, for choosing settings; None only in a Dataset built by hand without one)."""

    name: str
    image_shape: tuple[int, int]
    num_classes: int
    train: Split
    transfer: Split
    test: Split
    validation: Split | None = None  # last, with a default: Dataset(...) written before it still works


# The digits test split: the fixed 30% of scikit-learn's 1797 images, stratified by class.
DIGITS_TEST_SIZE = 540
DIGITS_SEED = 0
# The digits validation split, carved from the other 1257: 270 images (about 27 a class). The
# training set keeps 987, over three quarters of what it had, and a setting's validation errors
# are counted on half as many images as its test errors. Its own seed: the test split stays.
DIGITS_VALIDATION_SIZE = 270
DIGITS_VALIDATION_SEED = 1


def digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, bundled with scikit-learn), fixed splits.

    test: 540 images (30%, rounded up), stratified by class: 540 * n_c / 1797 rounded by largest
    remainder (52 to 55 a class), drawn by RandomState(0). validation: 270 of the other 1257
    images, stratified over those 1257 by the same rule, 270 * n_c / 1257 rounded by largest
    remainder (26 to 28 a class), drawn by RandomState(1). train: the remaining 987 images.
    transfer: the same images as train, in tensors of its own. The module docstring states the
    rule in full. Each split is in scikit-learn's order. Pixels (0..16 in scikit-learn) are
    divided by 16: float32 (N, 64) in [0, 1].

    Each call returns new tensors: a learner who changes one Dataset changes no other.
    """
    x, y, test, validation = _digits_arrays()
    train = ~(test | validation)

    def split(rows: np.ndarray) -> Split:  # numpy's boolean indexing copies: new tensors per split
        return Split(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]))

    return Dataset(name="digits", image_shape=(8, 8), num_classes=10, train=split(train), transfer=split(train),
                   test=split(test), validation=split(validation))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The images (float32 (1797, 64) in [0, 1]), labels (int64) and the boolean test and
    validation masks; read only (callers copy into tensors of their own)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            'kdlearn.data.digits() needs scikit-learn, which bundles the digits: pip install "kdlearn[course]"'
        ) from error
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    test = _stratified_mask(y, DIGITS_TEST_SIZE, DIGITS_SEED)
    validation = _stratified_mask_within(~test, y, DIGITS_VALIDATION_SIZE, DIGITS_VALIDATION_SEED)
    for array in (x, y, test, validation):
        array.flags.writeable = False
    return x, y, test, validation


def _stratified_mask(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A boolean mask of `size` examples, each class's share proportional to its count (largest
    remainder, ties to the lower class), the examples within a class drawn by RandomState(seed)."""
    classes, counts = np.unique(y, return_counts=True)
    # In integers, so that equal remainders are equal: size * n_c / N = share + remainder / N.
    share, remainder = np.divmod(counts * size, len(y))
    # A stable sort on the negated remainders: the largest first, equal ones in class order.
    by_remainder = np.argsort(-remainder, kind="stable")
    share[by_remainder[: size - share.sum()]] += 1
    rng = np.random.RandomState(seed)
    mask = np.zeros(len(y), dtype=bool)
    for c, n in zip(classes, share):
        members = np.flatnonzero(y == c)
        mask[members[rng.permutation(len(members))[:n]]] = True
    return mask


def _stratified_mask_within(pool: np.ndarray, y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A boolean mask over all of y: `size` of the examples where `pool` is True, stratified over
    the pool's own class counts (_stratified_mask)."""
    members = np.flatnonzero(pool)
    mask = np.zeros(len(y), dtype=bool)
    mask[members[_stratified_mask(y[members], size, seed)]] = True
    return mask


# The four standard MNIST files: (size in bytes, SHA-256). The digests and sizes are TensorFlow
# Datasets' record of these files (tensorflow_datasets/url_checksums/mnist.txt); torchvision's MNIST
# class publishes MD5s of the same files (f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
# Tried in order for each file (LeCun's original site now refuses most downloads).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Seconds a connection or a read may stall before the mirror counts as unreachable.
DOWNLOAD_TIMEOUT_S = 30.0


class DataUnavailableError(OSError):
    """A dataset could not be downloaded or read from the cache; the message says why and what to
    use instead."""


def mnist(cache_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """The real MNIST: of the 60000 training images, validation 5000 and train the other 55000;
    transfer = the same 55000 as train (tensors of its own); test the standard 10000. Pixels
    (0..255) divided by 255: float32 (N, 784) in [0, 1]; labels int64.

    validation: a twelfth of the training file's images, rounded half up (5000 of the standard
    60000), stratified by class by the module docstring's rule, drawn by RandomState(1). Each
    split keeps the files' order.

    The four standard IDX files (about 11 MB) are downloaded once, from the first mirror in
    MNIST_MIRRORS that answers, and kept in cache_dir, by default $KDLEARN_CACHE/mnist, else
    $XDG_CACHE_HOME/kdlearn/mnist, else ~/.cache/kdlearn/mnist. Each file is checked against its
    published SHA-256 when downloaded (into a temporary file, renamed into place only once it is
    complete and correct) and again on every load: a damaged cached file is removed and, with
    download=True, fetched again. When no mirror can be reached (or download=False and the files are
    not cached), DataUnavailableError says so, lists what was tried and points to the embedded
    kdlearn.data.digits(). To work offline, copy the four files into the cache folder by hand.
    """
    folder = _mnist_folder(cache_dir)
    paths = {name: _cached_or_downloaded(folder, name, download) for name in MNIST_FILES}
    everything = _mnist_split(paths["train-images-idx3-ubyte.gz"], paths["train-labels-idx1-ubyte.gz"])
    test = _mnist_split(paths["t10k-images-idx3-ubyte.gz"], paths["t10k-labels-idx1-ubyte.gz"])
    y = everything.y.numpy()
    validation = torch.from_numpy(_stratified_mask(y, _mnist_validation_size(len(y)), MNIST_VALIDATION_SEED))
    train = Split(everything.x[~validation], everything.y[~validation])  # boolean indexing copies
    return Dataset(name="mnist", image_shape=(28, 28), num_classes=10, train=train,
                   transfer=Split(train.x.clone(), train.y.clone()), test=test,
                   validation=Split(everything.x[validation], everything.y[validation]))


# MNIST's validation split: 5000 of the 60000 training images, drawn by its own seed.
MNIST_VALIDATION_SIZE = 5_000
MNIST_TRAIN_SIZE = 60_000
MNIST_VALIDATION_SEED = 1


def _mnist_validation_size(train_images: int) -> int:
    """How many of a training file's images mnist() holds out for validation: a twelfth
    (MNIST_VALIDATION_SIZE of MNIST_TRAIN_SIZE), rounded half up."""
    return (train_images * MNIST_VALIDATION_SIZE * 2 + MNIST_TRAIN_SIZE) // (2 * MNIST_TRAIN_SIZE)


def _mnist_folder(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("KDLEARN_CACHE"):
        return Path(os.environ["KDLEARN_CACHE"]).expanduser() / "mnist"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG specification says to ignore a relative path.
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "kdlearn" / "mnist"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_or_downloaded(folder: Path, name: str, download: bool) -> Path:
    """The path of a verified copy of one MNIST file, downloading it if it is missing or damaged."""
    path = folder / name
    _, sha256 = MNIST_FILES[name]
    damaged = ""
    if path.exists():
        if _sha256(path) == sha256:
            return path
        path.unlink()
        damaged = f"the cached {path} did not match its SHA-256 (damaged or incomplete) and was removed; "
        if download:
            warnings.warn(damaged + "downloading it again", RuntimeWarning, stacklevel=3)
    if not download:
        raise DataUnavailableError(
            f"MNIST is not available offline: {damaged or f'{path} is missing and '}download=False. "
            f"{_where_and_instead(folder)}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name
        try:
            _download_verified(url, path)
            return path
        except (OSError, http.client.HTTPException, _ChecksumMismatch) as error:  # URLError is an OSError
            failures.append(f"  {url}: {_reason(error)}")
    raise DataUnavailableError(
        f"MNIST could not be downloaded: {name} failed on every mirror:\n" + "\n".join(failures) + "\n"
        + _where_and_instead(folder)
    )


class _ChecksumMismatch(Exception):
    pass


def _download_verified(url: str, path: Path) -> None:
    """Download url into a temporary file beside path; rename it to path only when its size and
    SHA-256 are right, so that path never holds a partial or wrong file (the rename is atomic)."""
    size, sha256 = MNIST_FILES[path.name]
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
            out.flush()
            os.fsync(out.fileno())
        if received != size or digest.hexdigest() != sha256:
            raise _ChecksumMismatch(f"received {received} bytes with SHA-256 {digest.hexdigest()}, "
                                    f"expected {size} bytes with SHA-256 {sha256}")
        os.replace(temporary, path)
    except BaseException:  # an interrupt (Ctrl-C in a notebook) too: leave nothing behind
        Path(temporary).unlink(missing_ok=True)
        raise


def _reason(error: BaseException) -> str:
    if isinstance(error, _ChecksumMismatch):
        return f"wrong file: {error}"
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return f"{type(error).__name__}: {error.reason}"
    return f"{type(error).__name__}: {error}"


def _where_and_instead(folder: Path) -> str:
    return (
        f"Looked in the cache folder {folder} (choose another with cache_dir= or the KDLEARN_CACHE "
        f"environment variable; to work offline, copy the four MNIST files {', '.join(MNIST_FILES)} "
        f"there). Without network, use the embedded digits instead: kdlearn.data.digits(), "
        f"or --data digits on the command line."
    )


# IDX data types: the third byte of the magic number -> the big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a numpy array in native byte order.

    IDX layout: a 4-byte magic number (0, 0, data type code, number of dimensions d), then d
    big-endian uint32 sizes, then the values, big-endian, in row-major order. A malformed file
    raises ValueError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # the gzip magic number
            raw = gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path} is not a valid gzip file ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path} is not an IDX file: its magic number is {raw[:4].hex() or 'missing'}, expected "
                         f"0000TTDD with a data type TT in {', '.join(f'{t:02x}' for t in IDX_DTYPES)} "
                         f"and DD >= 1 dimensions")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header announces {ndim} dimensions but the file ends "
                         f"after {len(raw)} bytes")
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(f"{path} is {problem}: shape {shape} of {dtype.name} needs {expected} bytes, "
                         f"the file holds {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _mnist_split(images_path: Path, labels_path: Path) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path} must hold uint8 images of shape (N, 28, 28), "
                         f"got {images.dtype} of shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path} must hold {len(images)} uint8 labels (one per image in "
                         f"{images_path.name}), got {labels.dtype} of shape {labels.shape}")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{labels_path} holds a label {labels.max()}, MNIST's are 0..9")
    x = images.reshape(len(images), -1).astype(np.float32)
    x /= 255.0
    return Split(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))


def load(name: str, *, cache_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """A dataset by name: "digits" (embedded, no network; ignores cache_dir and download) or
    "mnist" (see mnist())."""
    check_choice("name", name, DATASETS)
    return digits() if name == "digits" else mnist(cache_dir=cache_dir, download=download)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
