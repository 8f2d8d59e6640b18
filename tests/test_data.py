"""kdlearn.data: the digits splits, the IDX parser, and MNIST's download cache (against a fake
web server that serves small IDX files written here; no test reaches the network)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import math
import socket
import struct
import sys
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from kdlearn import data


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any real network access fails the test; tests that download install a fake server."""
    def refuse(*args, **kwargs):
        pytest.fail(f"a test tried to reach the network: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- digits -------------------------------------------------------------------------------------

def rows(split: data.Split) -> np.ndarray:
    """Each example as one row (64 pixels, then its label), sorted: the split as a multiset."""
    table = np.concatenate([split.x.numpy(), split.y.numpy()[:, None].astype(np.float32)], axis=1)
    return table[np.lexsort(table.T[::-1])]


def largest_remainder(counts: list[int], size: int) -> list[int]:
    """The documented allocation, written independently of kdlearn.data: size * n_c / N rounded
    down, then one more to each of the largest remainders (ties to the lower class)."""
    total = sum(counts)
    exact = [Fraction(size * n, total) for n in counts]
    share = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(counts)), key=lambda c: (-(exact[c] - share[c]), c))
    for c in by_remainder[: size - sum(share)]:
        share[c] += 1
    return share


def class_counts(split: data.Split) -> list[int]:
    return np.bincount(split.y.numpy(), minlength=10).tolist()


def all_splits(ds: data.Dataset) -> dict[str, data.Split]:
    return {"train": ds.train, "transfer": ds.transfer, "validation": ds.validation, "test": ds.test}


def test_digits_sizes_shapes_and_range():
    ds = data.digits()
    assert (ds.name, ds.image_shape, ds.num_classes) == ("digits", (8, 8), 10)
    for split, n in ((ds.train, 987), (ds.transfer, 987), (ds.validation, 270), (ds.test, 540)):
        assert split.x.shape == (n, 64) and split.x.dtype == torch.float32
        assert split.y.shape == (n,) and split.y.dtype == torch.int64
        assert len(split) == n
        assert split.x.min() == 0.0 and split.x.max() == 1.0
        assert torch.equal(split.x * 16, (split.x * 16).round())  # scikit-learn's 0..16, divided by 16


def test_digits_train_validation_and_test_partition_the_dataset():
    ds = data.digits()
    bunch = load_digits()
    everything = data.Split(torch.from_numpy((bunch.data / 16).astype(np.float32)),
                            torch.from_numpy(bunch.target.astype(np.int64)))
    parts = (ds.train, ds.validation, ds.test)
    assert sum(len(part) for part in parts) == 1797
    together = data.Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    np.testing.assert_array_equal(rows(together), rows(everything))
    # No image (pixels and label) in two splits: the digits hold no duplicate images, so the
    # multiset equality above already implies it; here it is checked directly, pair by pair.
    assert len(np.unique(rows(everything), axis=0)) == 1797
    for a, b in ((ds.train, ds.validation), (ds.train, ds.test), (ds.validation, ds.test)):
        shared = set(map(bytes, a.x.numpy())) & set(map(bytes, b.x.numpy()))
        assert not shared


def test_digits_test_split_is_stratified():
    ds = data.digits()
    total = np.bincount(load_digits().target, minlength=10)
    assert class_counts(ds.test) == largest_remainder(total.tolist(), 540)
    # Each class gets its proportional share, rounded to an adjacent integer.
    assert np.all(np.abs(np.array(class_counts(ds.test)) - 540 * total / total.sum()) < 1)


def test_digits_validation_split_is_stratified_over_the_non_test_images():
    ds = data.digits()
    not_test = (np.bincount(load_digits().target, minlength=10) - class_counts(ds.test)).tolist()
    assert sum(not_test) == 1257
    assert class_counts(ds.validation) == largest_remainder(not_test, 270)
    assert class_counts(ds.validation) == [27, 27, 27, 28, 27, 27, 27, 27, 26, 27]  # as the docstring says
    assert class_counts(ds.train) == [n - v for n, v in zip(not_test, class_counts(ds.validation))]


def test_digits_split_is_deterministic_and_pinned():
    first, second = data.digits(), data.digits()
    for name, split in all_splits(first).items():
        other = all_splits(second)[name]
        assert torch.equal(split.x, other.x) and torch.equal(split.y, other.y), name
    # The documented splits, fixed for good: a change of seed or of the allocation fails here.
    assert fingerprint(first.test) == DIGITS_TEST_SHA256
    assert first.test.y[:12].tolist() == [3, 5, 7, 3, 6, 9, 2, 6, 5, 0, 8, 7]
    assert fingerprint(first.validation) == DIGITS_VALIDATION_SHA256


def fingerprint(split: data.Split) -> str:
    return hashlib.sha256(split.x.numpy().tobytes() + split.y.numpy().tobytes()).hexdigest()


DIGITS_TEST_SHA256 = "ec880b97938d8198b2f638ec1cb3cdf1eff23acbb2aac3c9655f5ae1f38f9b74"
DIGITS_VALIDATION_SHA256 = "042d41e6db1b0771797c77172ad68c4602343c27c1cd56a17fb67fcf07fb8e88"


def test_digits_transfer_is_train_but_independent():
    ds = data.digits()
    assert torch.equal(ds.transfer.x, ds.train.x) and torch.equal(ds.transfer.y, ds.train.y)
    ds.transfer.x[0].fill_(0.5)
    ds.transfer.y[0] = 9 - ds.transfer.y[0]
    assert not torch.equal(ds.transfer.x, ds.train.x) and not torch.equal(ds.transfer.y, ds.train.y)
    # Nor does a change reach a later call.
    fresh = data.digits()
    assert torch.equal(fresh.transfer.x, fresh.train.x) and torch.equal(fresh.train.x, data.digits().train.x)


@pytest.mark.parametrize("changed", ["train", "transfer", "validation", "test"])
def test_changing_one_split_changes_no_other(changed):
    ds, pristine = data.digits(), data.digits()
    split = all_splits(ds)[changed]
    split.x.fill_(0.5)
    split.y.fill_(3)
    for name, other in all_splits(ds).items():
        if name != changed:
            original = all_splits(pristine)[name]
            assert torch.equal(other.x, original.x) and torch.equal(other.y, original.y), name
    assert torch.equal(all_splits(data.digits())[changed].x, all_splits(pristine)[changed].x)


def test_a_dataset_built_without_validation_still_works():
    ds = data.digits()
    by_hand = data.Dataset(ds.name, ds.image_shape, ds.num_classes, ds.train, ds.transfer, ds.test)
    assert by_hand.validation is None


def test_dataset_and_split_are_frozen():
    ds = data.digits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.train = ds.test
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.train.x = ds.test.x


def test_without_class_removes_exactly_that_class():
    transfer = data.digits().transfer
    kept = transfer.without_class(3)
    assert 3 not in kept.y.tolist()
    others = transfer.y != 3
    assert torch.equal(kept.x, transfer.x[others]) and torch.equal(kept.y, transfer.y[others])
    assert len(kept) == len(transfer) - int((transfer.y == 3).sum())
    kept.x.fill_(0.25)
    assert not torch.equal(transfer.x[others], kept.x)
    # Removing a class that is already gone changes nothing.
    assert torch.equal(kept.without_class(3).y, kept.y)


@pytest.mark.parametrize("c", [-1, 10, 2.0, True, "3", None])
def test_without_class_rejects_a_non_class(c):
    with pytest.raises(ValueError, match="c must be a class in"):
        data.digits().train.without_class(c)


def test_split_checks_its_tensors():
    with pytest.raises(ValueError, match="x must be a float32"):
        data.Split(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="y must be an int64"):
        data.Split(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="same number of examples"):
        data.Split(torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"classes in \[0, 10\)"):
        data.Split(torch.zeros(1, 4), torch.tensor([10]))


def test_load_by_name():
    assert torch.equal(data.load("digits").test.x, data.digits().test.x)
    with pytest.raises(ValueError, match="name must be one of 'digits', 'mnist'"):
        data.load("cifar10")


def test_digits_without_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    data._digits_arrays.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install "kdlearn\[course\]"'):
            data.digits()
    finally:
        data._digits_arrays.cache_clear()


# --- the IDX parser -----------------------------------------------------------------------------

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
             np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(array: np.ndarray, compress: bool = True) -> bytes:
    """The IDX encoding of array, written independently of the parser: struct for the header,
    big-endian values."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    return gzip.compress(raw, mtime=0) if compress else raw


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_round_trips(tmp_path, compress, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5, 4)) * 100).astype(dtype)
    path = tmp_path / "array.idx"
    path.write_bytes(idx_bytes(array, compress))
    back = data.read_idx(path)
    assert back.shape == (3, 5, 4) and back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_read_idx_one_dimension(tmp_path):
    labels = np.array([7, 0, 255, 3], dtype=np.uint8)
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(data.read_idx(path), labels)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"PK\x03\x04"])
def test_read_idx_rejects_a_wrong_magic_number(tmp_path, magic):
    path = tmp_path / "bad-magic.gz"
    path.write_bytes(gzip.compress(magic + struct.pack(">I", 2) + b"\x01\x02"))
    with pytest.raises(ValueError, match="bad-magic.gz is not an IDX file"):
        data.read_idx(path)


@pytest.mark.parametrize("cut", [1, 100])
def test_read_idx_rejects_truncated_data(tmp_path, cut):
    raw = idx_bytes(np.zeros((2, 28, 28), np.uint8), compress=False)
    path = tmp_path / "short.idx"
    path.write_bytes(raw[:-cut])
    with pytest.raises(ValueError, match="short.idx is truncated"):
        data.read_idx(path)


def test_read_idx_rejects_a_truncated_header(tmp_path):
    path = tmp_path / "header.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(ValueError, match="header.idx is truncated: its header announces 3 dimensions"):
        data.read_idx(path)


def test_read_idx_rejects_trailing_bytes(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8), compress=False) + b"\x00")
    with pytest.raises(ValueError, match="long.idx is longer than its header says"):
        data.read_idx(path)


def test_read_idx_rejects_a_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 100) % 7)[:-10])
    with pytest.raises(ValueError, match="cut.gz is not a valid gzip file"):
        data.read_idx(path)


# --- MNIST: the cache, the checksums, the offline error ----------------------------------------

TRAIN, TEST = 36, 4
VALIDATION = 3  # a twelfth of TRAIN, as a twelfth of MNIST's 60,000 is 5,000


def small_mnist() -> dict[str, bytes]:
    """The four MNIST files, gzip-compressed IDX, with a few random images each."""
    rng = np.random.default_rng(1)
    files = {}
    for prefix, n in (("train", TRAIN), ("t10k", TEST)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = idx_bytes(rng.integers(0, 10, n, dtype=np.uint8))
    return files


MIRRORS = ("https://mirror-a.invalid/mnist/", "https://mirror-b.invalid/mnist/")


class FakeWeb:
    """Stands in for urllib.request.urlopen: serves files by URL, records each request, and plays
    an unreachable mirror (URLError), a wrong file, or a connection that breaks mid-download."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        self.unreachable: set[str] = set()
        self.wrong: set[str] = set()
        self.breaks_with: BaseException | None = None
        self.during_read = None  # called on every read: lets a test look at the disk mid-download

    def urlopen(self, url, timeout=None):
        assert timeout is not None, "a download without a timeout can hang forever"
        self.requests.append(url)
        mirror, name = url.rsplit("/", 1)[0] + "/", url.rsplit("/", 1)[1]
        if mirror in self.unreachable:
            raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
        body = self.files[name]
        if mirror in self.wrong:
            body = body[:-1] + bytes([body[-1] ^ 1])
        return FakeResponse(body, self)


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, web: FakeWeb):
        super().__init__(body)
        self.web = web

    def read(self, size=-1):
        if self.web.during_read is not None:
            self.web.during_read()
        if self.web.breaks_with is not None and self.tell() > 0:
            raise self.web.breaks_with
        return super().read(min(size, 64) if size and size > 0 else 64)  # small reads: many of them


@pytest.fixture
def web(monkeypatch):
    files = small_mnist()
    monkeypatch.setattr(data, "MNIST_FILES", {
        name: (len(body), hashlib.sha256(body).hexdigest()) for name, body in files.items()})
    monkeypatch.setattr(data, "MNIST_MIRRORS", MIRRORS)
    fake = FakeWeb(files)
    monkeypatch.setattr(urllib.request, "urlopen", fake.urlopen)
    return fake


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in data.MNIST_FILES)


def file_images_and_labels(web: FakeWeb, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """A small file's images (N, 784) and labels, read without kdlearn's parser."""
    images = np.frombuffer(gzip.decompress(web.files[f"{prefix}-images-idx3-ubyte.gz"])[16:], np.uint8)
    labels = np.frombuffer(gzip.decompress(web.files[f"{prefix}-labels-idx1-ubyte.gz"])[8:], np.uint8)
    return images.reshape(len(labels), 784), labels


def test_mnist_downloads_verifies_and_parses(web, tmp_path):
    ds = data.mnist(cache_dir=tmp_path)
    assert (ds.name, ds.image_shape, ds.num_classes) == ("mnist", (28, 28), 10)
    assert web.requests == [MIRRORS[0] + name for name in data.MNIST_FILES]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(data.MNIST_FILES)
    images, labels = file_images_and_labels(web, "t10k")
    assert ds.test.x.shape == (TEST, 784) and ds.test.x.dtype == torch.float32
    torch.testing.assert_close(ds.test.x, torch.from_numpy(images / 255.0).float(), rtol=0, atol=1e-7)
    assert ds.test.y.dtype == torch.int64 and ds.test.y.tolist() == labels.tolist()
    assert torch.equal(ds.transfer.x, ds.train.x) and torch.equal(ds.transfer.y, ds.train.y)
    ds.transfer.x.zero_()
    assert ds.train.x.max() > 0


def test_mnist_holds_out_a_stratified_validation_split(web, tmp_path):
    ds = data.mnist(cache_dir=tmp_path)
    images, labels = file_images_and_labels(web, "train")
    assert (len(ds.train), len(ds.validation), len(ds.transfer)) == (TRAIN - VALIDATION, VALIDATION,
                                                                     TRAIN - VALIDATION)
    assert class_counts(ds.validation) == largest_remainder(np.bincount(labels, minlength=10).tolist(), VALIDATION)
    # Train and validation split the training file between them, each in the file's order.
    pixels = torch.from_numpy(images / 255.0).float()
    held_out = [next(i for i in range(TRAIN) if torch.equal(pixels[i], x)) for x in ds.validation.x]
    kept = [i for i in range(TRAIN) if i not in held_out]
    assert held_out == sorted(held_out) and len(set(held_out)) == VALIDATION
    torch.testing.assert_close(ds.train.x, pixels[kept], rtol=0, atol=1e-7)
    assert ds.train.y.tolist() == labels[kept].tolist() and ds.validation.y.tolist() == labels[held_out].tolist()
    # The same split on every load; each split's tensors its own.
    again = data.mnist(cache_dir=tmp_path)
    assert torch.equal(again.validation.x, ds.validation.x) and torch.equal(again.train.y, ds.train.y)
    ds.validation.x.fill_(0.5)
    ds.train.y.fill_(0)
    assert torch.equal(ds.transfer.y, again.transfer.y) and torch.equal(ds.test.x, again.test.x)
    assert not torch.equal(ds.validation.x, again.validation.x)


@pytest.mark.parametrize("train_images, held_out", [(60_000, 5_000), (36, 3), (30, 3), (6, 1), (5, 0)])
def test_mnist_validation_is_a_twelfth_rounded_half_up(train_images, held_out):
    assert data._mnist_validation_size(train_images) == held_out


def test_mnist_loads_from_the_cache_without_network(web, tmp_path):
    first = data.mnist(cache_dir=tmp_path)
    web.requests.clear()
    web.unreachable.update(MIRRORS)
    again = data.mnist(cache_dir=tmp_path)
    assert web.requests == []
    assert torch.equal(again.test.x, first.test.x)
    assert torch.equal(data.load("mnist", cache_dir=tmp_path, download=False).train.y, first.train.y)


def test_mnist_falls_back_to_the_next_mirror(web, tmp_path):
    web.unreachable.add(MIRRORS[0])
    data.mnist(cache_dir=tmp_path)
    name = next(iter(data.MNIST_FILES))
    assert web.requests[:2] == [MIRRORS[0] + name, MIRRORS[1] + name]


def test_mnist_rejects_a_file_with_the_wrong_checksum(web, tmp_path):
    web.wrong.add(MIRRORS[0])
    data.mnist(cache_dir=tmp_path)  # the second mirror's copy is right
    web.wrong.add(MIRRORS[1])
    other = tmp_path / "other"
    with pytest.raises(data.DataUnavailableError, match="wrong file: received .* with SHA-256"):
        data.mnist(cache_dir=other)
    assert leftovers(other) == [] and not any(other.iterdir())


def test_mnist_writes_to_a_temporary_file_and_renames_it(web, tmp_path):
    final = tmp_path / next(iter(data.MNIST_FILES))
    seen = []

    def look():
        if not final.exists():  # only while the first file downloads
            seen.append(leftovers(tmp_path))

    web.during_read = look
    data.mnist(cache_dir=tmp_path)
    # Mid-download: one temporary file beside the final one, under another name; none after.
    assert seen and all(len(names) == 1 and names[0].endswith(".part") for names in seen)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), ConnectionResetError(104, "Connection reset by peer")])
def test_an_interrupted_download_leaves_no_file(web, tmp_path, interruption):
    web.breaks_with = interruption
    expected = KeyboardInterrupt if isinstance(interruption, KeyboardInterrupt) else data.DataUnavailableError
    with pytest.raises(expected):
        data.mnist(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    # The next call starts afresh and succeeds.
    web.breaks_with = None
    assert len(data.mnist(cache_dir=tmp_path).train) == TRAIN - VALIDATION


def test_a_corrupt_cached_file_is_detected_and_fetched_again(web, tmp_path):
    data.mnist(cache_dir=tmp_path)
    victim = tmp_path / "t10k-images-idx3-ubyte.gz"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    web.requests.clear()
    with pytest.warns(RuntimeWarning, match="t10k-images-idx3-ubyte.gz did not match its SHA-256"):
        ds = data.mnist(cache_dir=tmp_path)
    assert web.requests == [MIRRORS[0] + "t10k-images-idx3-ubyte.gz"]
    assert victim.read_bytes() == good and len(ds.test) == TEST


def test_a_corrupt_cached_file_without_download_is_reported(web, tmp_path):
    data.mnist(cache_dir=tmp_path)
    victim = tmp_path / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(b"\x00" * 10)
    web.requests.clear()
    with pytest.raises(data.DataUnavailableError, match="train-labels-idx1-ubyte.gz did not match its SHA-256"):
        data.mnist(cache_dir=tmp_path, download=False)
    assert web.requests == [] and not victim.exists()


def test_offline_error_says_what_failed_where_and_names_digits(web, tmp_path):
    web.unreachable.update(MIRRORS)
    with pytest.raises(data.DataUnavailableError) as caught:
        data.mnist(cache_dir=tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, OSError)
    assert message.startswith("MNIST could not be downloaded")
    for needed in (*(m + "train-images-idx3-ubyte.gz" for m in MIRRORS), "Name or service not known",
                   str(tmp_path), "KDLEARN_CACHE", "kdlearn.data.digits()", "--data digits"):
        assert needed in message
    assert list(tmp_path.iterdir()) == []


def test_download_false_never_touches_the_network(web, tmp_path):
    with pytest.raises(data.DataUnavailableError, match=r"missing and download=False.*kdlearn\.data\.digits\(\)"):
        data.mnist(cache_dir=tmp_path, download=False)
    assert web.requests == []


@pytest.mark.parametrize("env, folder", [
    ({"KDLEARN_CACHE": "mine", "XDG_CACHE_HOME": "xdg"}, "mine/mnist"),
    ({"XDG_CACHE_HOME": "xdg"}, "xdg/kdlearn/mnist"),
    ({"XDG_CACHE_HOME": "relative/xdg"}, "home/.cache/kdlearn/mnist"),  # the XDG spec ignores it
    ({}, "home/.cache/kdlearn/mnist"),
])
def test_default_cache_folder(web, tmp_path, monkeypatch, env, folder):
    for name in ("KDLEARN_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value if value.startswith("relative") else str(tmp_path / value))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    data.mnist()
    assert sorted(p.name for p in (tmp_path / folder).iterdir()) == sorted(data.MNIST_FILES)


def test_mnist_rejects_files_of_the_wrong_shape(web, tmp_path, monkeypatch):
    bad = {**web.files, "t10k-images-idx3-ubyte.gz": idx_bytes(np.zeros((TEST, 27, 27), np.uint8)),
           "t10k-labels-idx1-ubyte.gz": idx_bytes(np.zeros(TEST, np.uint8))}
    monkeypatch.setattr(data, "MNIST_FILES", {
        name: (len(body), hashlib.sha256(body).hexdigest()) for name, body in bad.items()})
    web.files = bad
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz must hold uint8 images of shape \(N, 28, 28\)"):
        data.mnist(cache_dir=tmp_path)


def test_mnist_rejects_mismatched_label_count(web, tmp_path, monkeypatch):
    bad = {**web.files, "t10k-labels-idx1-ubyte.gz": idx_bytes(np.zeros(TEST + 1, np.uint8))}
    monkeypatch.setattr(data, "MNIST_FILES", {
        name: (len(body), hashlib.sha256(body).hexdigest()) for name, body in bad.items()})
    web.files = bad
    with pytest.raises(ValueError, match=f"t10k-labels-idx1-ubyte.gz must hold {TEST} uint8 labels"):
        data.mnist(cache_dir=tmp_path)


def test_the_published_mnist_table():
    """The four standard files, each with a size and a SHA-256 (64 hex digits), over HTTPS."""
    assert sorted(data.MNIST_FILES) == sorted(f"{p}-{k}.gz" for p in ("train", "t10k")
                                              for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
    for size, sha256 in data.MNIST_FILES.values():
        assert size > 0 and len(sha256) == 64 and int(sha256, 16) >= 0
    assert all(m.startswith("https://") and m.endswith("/") for m in data.MNIST_MIRRORS)
