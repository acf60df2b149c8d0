"""The datasets of `optax-extras compare`, as normalized NHWC float32 arrays.

``digits`` ships with scikit-learn (8x8 grey images, 1797 of them; a fixed
stratified split keeps 360 for validation). ``mnist`` reads the four IDX
files (raw or ``.gz``) from a directory; ``cifar10`` reads the python pickle
batches from ``cifar-10-batches-py`` or from the directory itself, with an
unpickler that admits only what those batches hold (dicts, lists, strings,
bytes, numbers, numpy arrays and dtypes) and builds arrays only from the
bytes stored in the file, so a crafted file cannot run code or make the
loader allocate memory the file does not fill. IDX files are read no further
than one byte past the size their header declares. Labels must be in 0..9. Pixels are
scaled to [0, 1] and normalized as in the hypergradient repo's train.py:
MNIST with mean 0.1307 and std 0.3081, CIFAR-10 per channel with train.py's
means and stds; digits with the mean and std of its training pixels. Nothing
is downloaded.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import pickle
import zlib

import numpy as np

DATASETS = ("digits", "mnist", "cifar10")

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "valid_images": "t10k-images-idx3-ubyte",
    "valid_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_VALID = "test_batch"
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)


class DataError(Exception):
  """A data directory or file that is missing or not in the expected format."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Training and validation images (N, H, W, C) float32, labels int32."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  valid_images: np.ndarray
  valid_labels: np.ndarray
  num_classes: int = 10


def load(name: str, data_dir: str | None = None) -> Dataset:
  """Loads dataset `name` (one of DATASETS).

  Raises:
    DataError: bad or missing files, an empty training or validation set (or
      images of no pixels), training and validation images of different
      shapes, or running out of memory while loading.
  """
  if name == "digits":
    return load_digits()
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
  if data_dir is None:
    raise DataError(f"{name} needs --data-dir, the directory holding its files")
  if not os.path.isdir(data_dir):
    raise DataError(f"{name}: data directory {data_dir} does not exist")
  try:
    dataset = (load_mnist if name == "mnist" else load_cifar10)(data_dir)
  except MemoryError:
    raise DataError(f"{name}: out of memory loading the files in "
                    f"{data_dir}: more images than this machine holds") from None
  for split in ("train", "valid"):
    images = getattr(dataset, f"{split}_images")
    if not len(images) or not images[0].size:
      raise DataError(f"{name}: the {split} set in {data_dir} has no images "
                      f"(shape {images.shape}, NHWC)")
  if dataset.train_images.shape[1:] != dataset.valid_images.shape[1:]:
    raise DataError(
        f"{name}: the training images are {dataset.train_images.shape[1:]} "
        f"but the validation images {dataset.valid_images.shape[1:]} (HWC) in "
        f"{data_dir}")
  return dataset


def load_digits() -> Dataset:
  """scikit-learn's digits, 1437 training and 360 validation images."""
  from sklearn import datasets, model_selection
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  train_x, valid_x, train_y, valid_y = model_selection.train_test_split(
      images, digits.target.astype(np.int32), test_size=360,
      stratify=digits.target, random_state=0)
  mean, std = train_x.mean(), train_x.std()
  return Dataset("digits", (train_x - mean) / std, train_y,
                 (valid_x - mean) / std, valid_y)


def _mnist_path(data_dir: str, stem: str) -> str:
  for directory in (data_dir, os.path.join(data_dir, "MNIST", "raw")):
    for name in (stem, stem + ".gz"):
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        return path
  raise DataError(f"mnist: expected {stem} or {stem}.gz in {data_dir} "
                  "(not found)")


def _read_at_most(f, limit: int) -> bytes:
  """Up to `limit` bytes of `f`, read (and decompressed) a chunk at a time,
  so that a file longer than `limit` is never held whole."""
  chunks, size = [], 0
  while size < limit:
    chunk = f.read(min(limit - size, 1 << 20))
    if not chunk:
      break
    chunks.append(chunk)
    size += len(chunk)
  return b"".join(chunks)


def read_idx(path: str, ndim: int) -> np.ndarray:
  """An IDX file of unsigned bytes with `ndim` dimensions (gzipped or not).

  The header is read first and the body only up to one byte past the size
  the header declares, so a file (or a gzip stream) longer than it says is
  refused without being read or decompressed whole.
  """
  magic = 0x800 | ndim
  header = 4 + 4 * ndim
  try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
      head = _read_at_most(f, header)
      found = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
      if found != magic:
        raise DataError(
            f"{path}: bad magic number "
            f"{'(file too short)' if found is None else f'0x{found:08x}'}, "
            f"expected 0x{magic:08x} (IDX, unsigned bytes, {ndim} dimensions)")
      if len(head) < header:
        raise DataError(f"{path}: truncated header ({len(head)} bytes, "
                        f"expected {header})")
      shape = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big")
                    for i in range(ndim))
      size = math.prod(shape)  # Python ints: no overflow
      body = _read_at_most(f, size + 1)
  except (OSError, EOFError, zlib.error) as error:
    raise DataError(f"{path}: cannot read it ({error})") from None
  if len(body) != size:
    length = (f"{header + len(body)} bytes" if len(body) < size
              else f"more than {header + size} bytes")
    raise DataError(
        f"{path}: {'truncated' if len(body) < size else 'too long'}: "
        f"the header says shape {shape} ({header + size} bytes), the file "
        f"has {length}")
  return np.frombuffer(body, np.uint8).reshape(shape)


def _labeled(images: np.ndarray, labels: np.ndarray, where: str):
  if len(images) != len(labels):
    raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
  if labels.ndim != 1 or (labels.size
                          and not np.issubdtype(labels.dtype, np.integer)):
    raise DataError(f"{where}: labels are {labels.dtype} {labels.shape}, "
                    "expected one integer per image")
  bad = labels[(labels < 0) | (labels > 9)]
  if bad.size:
    raise DataError(f"{where}: label {bad[0]} out of range 0..9")
  return images, labels.astype(np.int32)


def load_mnist(data_dir: str) -> Dataset:
  """MNIST from the four IDX files in `data_dir` (or `data_dir/MNIST/raw`)."""
  arrays = {}
  for split in ("train", "valid"):
    images_path = _mnist_path(data_dir, MNIST_FILES[f"{split}_images"])
    labels_path = _mnist_path(data_dir, MNIST_FILES[f"{split}_labels"])
    images, labels = _labeled(read_idx(images_path, 3),
                              read_idx(labels_path, 1), images_path)
    images = (images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    arrays[split] = images[..., None], labels
  return Dataset("mnist", *arrays["train"], *arrays["valid"])


def _reconstruct_empty(subtype, shape, dtype):
  """numpy's array reconstructor, admitted only as numpy's pickles call it:
  an empty ndarray whose contents the pickle then sets from its own bytes
  (``ndarray.__setstate__`` checks their length against the shape). A crafted
  pickle that asks for a large shape here would get uninitialised memory of
  that size from a file of a few bytes."""
  if subtype is not np.ndarray or tuple(shape) != (0,):
    raise pickle.UnpicklingError(
        f"refused array reconstruction of shape {shape!r}: numpy's pickles "
        "rebuild an array from its stored bytes, starting from shape (0,)")
  return np.ndarray((0,), dtype)


class _BatchUnpickler(pickle.Unpickler):
  """Admits only the globals a CIFAR-10 python batch refers to (numpy's array
  and scalar reconstructors and dtype, and `_codecs.encode`, which rebuilds
  bytes in a protocol-2 pickle written by Python 3); any other global (a
  function a crafted pickle would call) is refused before it is looked up.
  The array reconstructor is `_reconstruct_empty`, so that every array's
  contents come from the file."""

  ALLOWED = frozenset(
      (module, name)
      for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")) | {
          ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(
          f"refused global {module}.{name}: a CIFAR-10 batch holds only "
          "dicts, lists, strings, numbers and numpy arrays")
    if name == "_reconstruct":
      return _reconstruct_empty
    return super().find_class(module, name)


def _text_keys(batch: dict, path: str) -> dict:
  """`batch` with its keys as text (a batch's keys are UTF-8 bytes)."""
  keys = {}
  for key in batch:
    try:
      keys[key] = key.decode() if isinstance(key, bytes) else key
    except UnicodeDecodeError:
      raise DataError(f"{path}: not a CIFAR-10 python batch (key {key!r} is "
                      "not UTF-8 text)") from None
    if not isinstance(keys[key], str):
      raise DataError(f"{path}: not a CIFAR-10 python batch (key {key!r} is "
                      "not text)")
  return {keys[k]: v for k, v in batch.items()}


def read_cifar10_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A CIFAR-10 python batch: uint8 images (N, 32, 32, 3) and labels.

  Read with `_BatchUnpickler`: a pickle that refers to anything else (e.g. a
  function to call) or builds an array without its contents is a DataError,
  and none of its code runs. The keys must be text (UTF-8 bytes or str).
  """
  if not os.path.isfile(path):
    raise DataError(f"cifar10: expected the batch file {path} (not found)")
  try:
    with open(path, "rb") as f:
      batch = _BatchUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
  except Exception as error:
    raise DataError(f"{path}: not a CIFAR-10 python batch, the pickle does not "
                    f"load ({type(error).__name__}: {error})") from None
  if not isinstance(batch, dict):
    raise DataError(f"{path}: not a CIFAR-10 python batch (a "
                    f"{type(batch).__name__}, expected a dict)")
  batch = _text_keys(batch, path)
  if "data" not in batch or "labels" not in batch:
    raise DataError(f"{path}: not a CIFAR-10 python batch (keys "
                    f"{sorted(batch)}, expected 'data' and 'labels')")
  data = np.asarray(batch["data"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected "
                    "uint8 (N, 3072)")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return _labeled(images, np.asarray(batch["labels"]), path)


def load_cifar10(data_dir: str) -> Dataset:
  """CIFAR-10 from `data_dir/cifar-10-batches-py` or `data_dir` itself."""
  nested = os.path.join(data_dir, "cifar-10-batches-py")
  directory = nested if os.path.isdir(nested) else data_dir

  def read(names):
    images, labels = zip(*(read_cifar10_batch(os.path.join(directory, name))
                           for name in names))
    images = np.concatenate(images).astype(np.float32) / 255.0
    images = (images - np.float32(CIFAR10_MEAN)) / np.float32(CIFAR10_STD)
    return images, np.concatenate(labels)

  return Dataset("cifar10", *read(CIFAR10_TRAIN), *read([CIFAR10_VALID]))
