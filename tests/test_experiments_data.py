"""Tests of the study tool's data loaders: digits, MNIST IDX files, CIFAR-10
python batches, and what they refuse (crafted pickles, bad headers, labels)."""

import gzip
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from optax_extras.experiments import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _idx(array, magic=None):
  array = np.asarray(array, np.uint8)
  magic = 0x800 | array.ndim if magic is None else magic
  header = magic.to_bytes(4, "big") + b"".join(
      n.to_bytes(4, "big") for n in array.shape)
  return header + array.tobytes()


def _write_mnist(directory, gz, train_n=6, valid_n=4, mutate=None):
  rng = np.random.default_rng(0)
  arrays = {
      "train-images-idx3-ubyte": rng.integers(0, 256, (train_n, 28, 28)),
      "train-labels-idx1-ubyte": rng.integers(0, 10, train_n),
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (valid_n, 28, 28)),
      "t10k-labels-idx1-ubyte": rng.integers(0, 10, valid_n),
  }
  for name, array in arrays.items():
    content = _idx(array)
    if mutate:
      content = mutate(name, content)
    if gz:
      with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
        f.write(content)
    else:
      with open(os.path.join(directory, name), "wb") as f:
        f.write(content)
  return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_idx_files(tmp_path, gz):
  arrays = _write_mnist(tmp_path, gz)
  dataset = data.load("mnist", str(tmp_path))
  assert dataset.train_images.shape == (6, 28, 28, 1)
  assert dataset.valid_images.shape == (4, 28, 28, 1)
  assert dataset.train_images.dtype == np.float32
  np.testing.assert_array_equal(dataset.train_labels,
                                arrays["train-labels-idx1-ubyte"])
  expected = (arrays["t10k-images-idx3-ubyte"] / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(dataset.valid_images[..., 0], expected, rtol=1e-5)


def test_mnist_missing_file_names_it(tmp_path):
  _write_mnist(tmp_path, gz=False)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(data.DataError) as error:
    data.load("mnist", str(tmp_path))
  assert str(error.value) == (
      f"mnist: expected t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz "
      f"in {tmp_path} (not found)")


def test_mnist_bad_magic_number(tmp_path):
  _write_mnist(tmp_path, gz=True, mutate=lambda name, c: (
      (0x801).to_bytes(4, "big") + c[4:] if name.startswith("train-images")
      else c))
  with pytest.raises(data.DataError) as error:
    data.load("mnist", str(tmp_path))
  message = str(error.value)
  assert "train-images-idx3-ubyte.gz: bad magic number 0x00000801" in message
  assert "expected 0x00000803" in message


def test_mnist_truncated_file(tmp_path):
  _write_mnist(tmp_path, gz=False, mutate=lambda name, c: (
      c[:-10] if name.startswith("t10k-images") else c))
  with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte: truncated"):
    data.load("mnist", str(tmp_path))


def test_mnist_corrupt_gzip(tmp_path):
  _write_mnist(tmp_path, gz=True)
  (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
  with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz: cannot "
                     "read it"):
    data.load("mnist", str(tmp_path))


def test_missing_data_dir(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load("cifar10", str(tmp_path / "nowhere"))
  with pytest.raises(data.DataError, match="needs --data-dir"):
    data.load("mnist")


def _write_cifar(directory, n=3):
  rng = np.random.default_rng(1)
  batches = {}
  for name in (*data.CIFAR10_TRAIN, data.CIFAR10_VALID):
    batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             b"labels": list(rng.integers(0, 10, n)),
             b"batch_label": name.encode()}
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump(batch, f)
    batches[name] = batch
  return batches


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_loader_reads_pickle_batches(tmp_path, nested):
  directory = tmp_path / "cifar-10-batches-py" if nested else tmp_path
  directory.mkdir(exist_ok=True)
  batches = _write_cifar(directory)
  dataset = data.load("cifar10", str(tmp_path))
  assert dataset.train_images.shape == (15, 32, 32, 3)
  assert dataset.valid_images.shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(dataset.valid_labels,
                                batches["test_batch"][b"labels"])
  raw = batches["data_batch_2"][b"data"][0]  # channel-major rows of 1024
  pixel = raw.reshape(3, 32, 32)[:, 4, 7] / 255.0
  np.testing.assert_allclose(
      dataset.train_images[3, 4, 7],
      (pixel - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD),
      rtol=1e-5)


def test_cifar10_missing_batch_names_it(tmp_path):
  _write_cifar(tmp_path)
  os.remove(tmp_path / "data_batch_4")
  with pytest.raises(data.DataError) as error:
    data.load("cifar10", str(tmp_path))
  assert str(error.value) == (
      f"cifar10: expected the batch file {tmp_path / 'data_batch_4'} "
      "(not found)")


def test_cifar10_malformed_batch(tmp_path):
  _write_cifar(tmp_path)
  (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
  with pytest.raises(data.DataError, match="test_batch: not a CIFAR-10 python "
                     "batch, the pickle does not load"):
    data.load("cifar10", str(tmp_path))
  with open(tmp_path / "test_batch", "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(data.DataError, match=r"'data' is uint8 \(2, 100\)"):
    data.load("cifar10", str(tmp_path))



# --- what the loaders refuse --------------------------------------------------


class _MakesDirectory:
  """A pickle payload that creates a directory when loaded by pickle.load."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.mkdir, (self.path,))


def test_crafted_cifar_pickle_runs_no_code_and_is_refused(tmp_path):
  _write_cifar(tmp_path)
  marker = tmp_path / "code-ran"
  with open(tmp_path / "data_batch_1", "wb") as f:
    pickle.dump({b"data": _MakesDirectory(str(marker)), b"labels": [0]}, f)
  with pytest.raises(data.DataError) as error:
    data.load("cifar10", str(tmp_path))
  assert not marker.exists()
  message = str(error.value)
  assert str(tmp_path / "data_batch_1") in message
  assert "refused global posix.mkdir" in message or "refused global os.mkdir" in (
      message)


def test_crafted_cifar_pickle_exits_2_from_the_command_line(tmp_path):
  _write_cifar(tmp_path)
  marker = tmp_path / "code-ran"
  with open(tmp_path / "test_batch", "wb") as f:
    pickle.dump(_MakesDirectory(str(marker)), f)
  completed = subprocess.run(
      [sys.executable, "-m", "optax_extras.experiments", "compare",
       "--dataset", "cifar10", "--data-dir", str(tmp_path), "--optimizers",
       "sgd", "--epochs", "1", "--out", str(tmp_path / "out")],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert completed.returncode == 2, completed.stderr
  assert not marker.exists()
  assert "test_batch: not a CIFAR-10 python batch" in completed.stderr
  assert "Traceback" not in completed.stderr


def test_real_cifar_layout_with_numpy_label_scalars_still_loads(tmp_path):
  rng = np.random.default_rng(2)
  for name in (*data.CIFAR10_TRAIN, data.CIFAR10_VALID):
    batch = {b"data": rng.integers(0, 256, (2, 3072)).astype(np.uint8),
             b"labels": [np.int64(3), 7], b"batch_label": "training batch",
             b"filenames": [b"a.png", "b.png"]}
    with open(tmp_path / name, "wb") as f:
      pickle.dump(batch, f, protocol=2)
  dataset = data.load("cifar10", str(tmp_path))
  np.testing.assert_array_equal(dataset.valid_labels, [3, 7])


@pytest.mark.parametrize("labels", [[0, -1, 2], [0, 10, 2]])
def test_cifar_labels_outside_0_to_9_are_refused(tmp_path, labels):
  _write_cifar(tmp_path)
  with open(tmp_path / "data_batch_3", "wb") as f:
    pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}, f)
  with pytest.raises(data.DataError, match=rf"data_batch_3: label {labels[1]} "
                     r"out of range 0\.\.9"):
    data.load("cifar10", str(tmp_path))


def test_mnist_label_above_9_is_refused(tmp_path):
  _write_mnist(tmp_path, gz=False, mutate=lambda name, c: (
      c[:-1] + bytes([200]) if name.startswith("train-labels") else c))
  with pytest.raises(data.DataError, match=r"label 200 out of range 0\.\.9"):
    data.load("mnist", str(tmp_path))


def test_idx_header_whose_sizes_overflow_is_a_clear_error(tmp_path):
  # 2**31 * 2**31 * 4 = 2**64: np.prod wraps around to 0 in int64, which
  # matches a file holding the header alone.
  dims = (2**31, 2**31, 4)
  content = (0x803).to_bytes(4, "big") + b"".join(
      d.to_bytes(4, "big") for d in dims)
  path = tmp_path / "huge-idx3-ubyte"
  path.write_bytes(content)
  with pytest.raises(data.DataError) as error:
    data.read_idx(str(path), 3)
  assert "truncated" in str(error.value)
  assert f"shape {dims}" in str(error.value)


def test_idx_header_disagreeing_with_the_file_length(tmp_path):
  path = tmp_path / "labels-idx1-ubyte"
  path.write_bytes((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big")
                   + bytes(5))
  with pytest.raises(data.DataError, match="too long: the header says shape "
                     r"\(3,\) \(11 bytes\), the file has more than 11 bytes"):
    data.read_idx(str(path), 1)


def test_idx_gzip_longer_than_its_header_says_is_not_decompressed_whole(
    tmp_path):
  import tracemalloc
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write((0x801).to_bytes(4, "big") + (10).to_bytes(4, "big"))
    f.write(bytes(64 << 20))  # 64 MB of zeros, 64 KB compressed
  tracemalloc.start()
  try:
    with pytest.raises(data.DataError, match="too long: the header says shape "
                       r"\(10,\) \(18 bytes\)"):
      data.read_idx(str(path), 1)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 8 << 20


def _cifar_with(directory, name, payload):
  _write_cifar(directory)
  (directory / name).write_bytes(payload)


def _reconstructed_without_contents(n):
  """A pickle of {b"data": _reconstruct(ndarray, (n, 3072), uint8)} with no
  BUILD: numpy would hand back n * 3072 bytes of uninitialised memory."""
  def global_(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

  def array(shape, dtype):
    return (global_("numpy.core.multiarray", "_reconstruct") + b"("
            + global_("numpy", "ndarray") + b"("
            + b"".join(b"J" + struct.pack("<i", d) for d in shape) + b"t"
            + global_("numpy", "dtype") + b"(X" + struct.pack("<I", len(dtype))
            + dtype.encode() + b"\x89\x88tRtR")

  return (b"\x80\x02}(C\x04data" + array((n, 3072), "u1") + b"C\x06labels"
          + array((n,), "i8") + b"u.")


def test_cifar_array_without_contents_is_refused(tmp_path):
  _cifar_with(tmp_path, "data_batch_1", _reconstructed_without_contents(1000))
  with pytest.raises(data.DataError, match="data_batch_1: not a CIFAR-10 "
                     r"python batch.*refused array reconstruction of shape "
                     r"\(1000, 3072\)"):
    data.load("cifar10", str(tmp_path))


@pytest.mark.parametrize("batch, message", [
    ({b"\xff\xfe": 1, b"data": np.zeros((3, 3072), np.uint8),
      b"labels": [0] * 3}, r"key b'\\xff\\xfe' is not UTF-8 text"),
    ({1: 2, "x": 3}, "key 1 is not text"),
])
def test_cifar_keys_that_are_not_text_are_refused(tmp_path, batch, message):
  _cifar_with(tmp_path, "data_batch_2", pickle.dumps(batch, protocol=2))
  with pytest.raises(data.DataError, match=message):
    data.load("cifar10", str(tmp_path))


def test_cifar_empty_test_set_is_refused(tmp_path):
  _cifar_with(tmp_path, "test_batch", pickle.dumps(
      {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=4))
  with pytest.raises(data.DataError, match="cifar10: the valid set in .* has "
                     "no images"):
    data.load("cifar10", str(tmp_path))


def test_mnist_train_and_test_images_of_different_shapes_are_refused(tmp_path):
  _write_mnist(tmp_path, gz=False)
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
      _idx(np.zeros((4, 14, 14))))
  with pytest.raises(data.DataError, match=r"training images are \(28, 28, "
                     r"1\) but the validation images \(14, 14, 1\)"):
    data.load("mnist", str(tmp_path))


def test_memory_error_while_loading_is_a_data_error(tmp_path, monkeypatch):
  _write_cifar(tmp_path)

  def out_of_memory(path):
    raise MemoryError

  monkeypatch.setattr(data, "read_cifar10_batch", out_of_memory)
  with pytest.raises(data.DataError, match="cifar10: out of memory"):
    data.load("cifar10", str(tmp_path))
