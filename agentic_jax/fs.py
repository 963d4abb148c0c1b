"""Files of a run that may live on local disk or on object storage (gs://, s3://, az://).

Every job writes its WORKDIR (checkpoints, metrics.jsonl, summary.json, TensorBoard events, the
tokenizer, generated data) through this module, so `--workdir=gs://bucket/run` works as a
local directory does. Paths are strings throughout; a remote one goes through `etils.epath`
(orbax's own path type: gs:// needs `gcsfs`, the `gcs` extra, or TensorFlow's gfile), a local
one through `os` directly - the common case pays nothing and keeps POSIX semantics.

Object stores differ from a disk in two ways this module hides:
  * no rename: a local write goes to a temporary file renamed into place (a crash never leaves
    half a file); a remote object upload is atomic by itself, so it is written directly;
  * no append: `AppendFile` keeps a remote file's content in memory and uploads it whole on
    `flush` (at most every `flush_secs`, and on close) - what TensorFlow's GCS file system does
    for event files. TensorBoard event files on remote paths use the same writer, registered
    with tensorboardX for every remote scheme (`tensorboard_logdir`).

Checkpoints themselves go to orbax with the path string (its TensorStore driver writes gs://
natively; see train/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import glob as _glob
import importlib.util
import io
import os
import shutil
import tempfile
import time
from typing import IO, Iterator, Union

REMOTE_SCHEMES = ("gs", "s3", "az", "hf")


def is_remote(path: Union[str, os.PathLike]) -> bool:
  """True for an object-storage URI (gs://bucket/..., s3://..., az://..., hf://...)."""
  head, sep, _ = os.fspath(path).partition("://")
  return bool(sep) and head in REMOTE_SCHEMES


# The package that gives epath (through fsspec) each scheme, and the extra that installs it.
_BACKENDS = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", None), "az": ("adlfs", None),
             "hf": ("huggingface_hub", None)}


def check_backend(path: str) -> None:
  """ValueError (one line) when `path` is remote and nothing here can open its scheme: epath
  reads gs:// through gcsfs (the `gcs` extra) or TensorFlow's gfile, s3:// through s3fs, ...
  Called before a run starts, so a missing package is not found at the first checkpoint."""
  if not is_remote(path):
    return
  scheme = path.partition("://")[0]
  module, extra = _BACKENDS[scheme]
  for candidate in (module, "tensorflow"):
    if importlib.util.find_spec(candidate) is not None:
      return
  hint = f"pip install 'agentic_jax[{extra}]'" if extra else f"pip install {module}"
  raise ValueError(f"{path}: {scheme}:// paths need the {module} package ({hint}) or "
                   "TensorFlow, and neither is installed")


def _epath(path: str):
  from etils import epath  # pylint: disable=import-outside-toplevel  (orbax's dependency)
  return epath.Path(path)


def resolve(path: Union[str, os.PathLike]) -> str:
  """The canonical form of a run path: a local one absolute with ~ expanded, a remote URI as
  given without a trailing slash."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  """os.path.join for local and remote paths alike (a URI joins with '/')."""
  return os.path.join(path, *parts) if not is_remote(path) else "/".join(
      [path.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  if is_remote(path):
    p = _epath(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def makedirs(path: str) -> None:
  """Creates `path` and its parents (exist_ok). On object storage directories are implicit;
  this creates the marker fsspec uses, which is harmless."""
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Entry names in `path` (FileNotFoundError if it does not exist)."""
  if is_remote(path):
    p = _epath(path)
    if not p.exists():
      raise FileNotFoundError(path)
    return [c.name for c in p.iterdir()]
  return os.listdir(path)


def glob(pattern: str) -> list[str]:
  """Paths matching `pattern` (only the last component may hold wildcards for remote ones)."""
  if is_remote(pattern):
    parent, _, leaf = pattern.rpartition("/")
    p = _epath(parent)
    return [join(parent, c.name) for c in p.glob(leaf)] if p.exists() else []
  return _glob.glob(pattern)


def open_file(path: str, mode: str = "r", **kwargs) -> IO:
  """open() for local and remote paths (remote: read, or write a whole object)."""
  if is_remote(path):
    return _epath(path).open(mode, **kwargs)
  return open(path, mode, **kwargs)  # pylint: disable=unspecified-encoding


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` whole, atomically: local through a temporary file renamed into place, remote
  as one object upload (which is atomic)."""
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def copy(src: str, dst: str) -> None:
  """Copies a file atomically (either side may be remote)."""
  if not is_remote(src) and not is_remote(dst):
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return
  write_bytes(dst, read_bytes(src))


def move(src: str, dst: str) -> None:
  """Renames a file or directory (remote: copy and delete, object by object - not atomic, which
  is why nothing that must survive a crash relies on it)."""
  if is_remote(src):
    _epath(src).rename(_epath(dst))
  else:
    os.replace(src, dst)


def remove(path: str) -> None:
  """Deletes a file (missing is fine)."""
  if is_remote(path):
    p = _epath(path)
    if p.exists():
      p.unlink()
  elif os.path.exists(path):
    os.remove(path)


def rmtree(path: str) -> None:
  """Deletes a directory tree (or a file); missing is fine."""
  if is_remote(path):
    p = _epath(path)
    if p.exists():
      p.rmtree()
  elif os.path.isdir(path):
    shutil.rmtree(path)
  elif os.path.exists(path):
    os.remove(path)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """A local file name holding `path`'s content, for APIs that take only a local file name; a
  local `path` is handed back as it is."""
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="agentic_jax_") as d:
    local = os.path.join(d, os.path.basename(path))
    with open(local, "wb") as f:
      f.write(read_bytes(path))
    yield local


class AppendFile:
  """A file opened for appending text lines, locally or on object storage (module docstring):
  local: open(path, "a") flushed on every `flush`; remote: the existing object's content is read
  once, appends collect in memory and `flush` uploads the whole object again when `flush_secs`
  have passed since the last upload (`close` always does)."""

  def __init__(self, path: str, *, flush_secs: float = 10.0):
    self.path = path
    self._remote = is_remote(path)
    self._flush_secs = flush_secs
    self._last_upload = 0.0
    if self._remote:
      self._buf = io.StringIO()
      if exists(path):
        self._buf.write(read_text(path))
      self._dirty = False
    else:
      self._file = open(path, "a")  # pylint: disable=unspecified-encoding,consider-using-with

  def write(self, text: str) -> None:
    if self._remote:
      self._buf.write(text)
      self._dirty = True
    else:
      self._file.write(text)

  def flush(self, force: bool = False) -> None:
    if not self._remote:
      self._file.flush()
      return
    if self._dirty and (force or time.monotonic() - self._last_upload >= self._flush_secs):
      write_text(self.path, self._buf.getvalue())
      self._last_upload, self._dirty = time.monotonic(), False

  def close(self) -> None:
    if self._remote:
      self.flush(force=True)
    else:
      self._file.close()


class _RemoteRecordWriter:
  """tensorboardX's file object for a remote event file: bytes collect in memory and every
  flush (tensorboardX's own, each flush_secs, and close) uploads the whole object."""

  def __init__(self, path: str):
    self.path = path
    self._buf = io.BytesIO()
    self._uploaded = -1

  def write(self, data: bytes) -> None:
    self._buf.write(data)

  def flush(self) -> None:
    if self._buf.tell() != self._uploaded:
      write_bytes(self.path, self._buf.getvalue())
      self._uploaded = self._buf.tell()

  def close(self) -> None:
    self.flush()


class _RemoteRecordWriterFactory:
  def open(self, path: str) -> _RemoteRecordWriter:
    return _RemoteRecordWriter(path)

  def directory_check(self, path: str) -> None:
    del path  # object storage needs no directory before its files


def tensorboard_logdir(path: str) -> str:
  """`path` ready for tensorboardX.SummaryWriter: for a remote path, tensorboardX's writer for
  its scheme is replaced by this module's (the same epath backend and credentials as every
  other file of the run, and any scheme epath knows; tensorboardX's own gs:// writer needs
  google-cloud-storage). Call before creating the SummaryWriter."""
  if is_remote(path):
    from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel
    record_writer.register_writer_factory(path.partition("://")[0], _RemoteRecordWriterFactory())
  return path

