"""One file layer for every path prompt-tuning reads or writes: local, or a URL on object storage
(`gs://bucket/...`, as T5X launches on TPU pods use it).

Built on etils.epath, the layer orbax itself writes checkpoints through, with fsspec's backends
(gcsfs for gs://, s3fs for s3://) behind URLs; orbax's arrays go through tensorstore's own gcs
driver. epath would pick TensorFlow's gfile for URLs whenever TensorFlow is installed; this
module sets EPATH_USE_TF=false (unless the user set it) so one client, gcsfs, serves every URL:
TF's GCS client ignores the emulator variables (STORAGE_EMULATOR_HOST) that gcsfs, Google's
clients and tensorstore (TENSORSTORE_GCS_HTTP_URL) honour, and it would mean two retry policies.

Local paths keep plain `os` calls, so their behaviour and bytes are what they always were. A URL
is never turned into a local path. Object stores have no rename: `write_atomic` on a URL is one
object write (an object appears whole or not at all), and MODEL_DIR's commit protocol
(model_dir.py) rests on that and on orbax's commit file.

Transient errors (HTTP 429/5xx, dropped connections) are retried with backoff by gcsfs and by
tensorstore; errors that will not go away become a `StorageError` naming the URL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
from typing import IO, Any, Callable, Iterator, Optional

os.environ.setdefault('EPATH_USE_TF', 'false')
# gcsfs logs every retry with a traceback, and a warning per bucket when no credentials are
# found (an emulator, a public bucket); what fails for good reaches the user as a StorageError.
logging.getLogger('gcsfs').setLevel(logging.CRITICAL)
logging.getLogger('fsspec').setLevel(logging.WARNING)  # a line per file opened, at INFO



def _configure_clients() -> None:
  """Defaults for every gcsfs client made through fsspec (ours, and epath's inside orbax).

  No cached listings: orbax, tensorstore (which bypasses gcsfs) and the other hosts of a run all
  write the same MODEL_DIR, so a listing kept from before their writes would be wrong (orbax
  would try to delete a step folder that repair already removed).
  """
  try:
    import fsspec.config
  except ImportError:
    return
  conf = fsspec.config.conf.setdefault('gs', {})
  conf.setdefault('use_listings_cache', False)


_configure_clients()

_URL = re.compile(r'^([a-zA-Z][a-zA-Z0-9+.-]*)://')
# URL schemes with a backend here, and the package that brings it.
BACKENDS = {'gs': 'gcsfs', 's3': 's3fs'}


class StorageError(ValueError):
  """A path cannot be read or written as asked; the message names it and what to do."""


def scheme(path: str) -> Optional[str]:
  m = _URL.match(str(path))
  return m.group(1).lower() if m else None


def is_remote(path: Any) -> bool:
  return scheme(str(path)) is not None


def join(path: str, *parts: str) -> str:
  if is_remote(path):
    return posixpath.join(str(path), *parts)
  return os.path.join(path, *parts)


def dirname(path: str) -> str:
  if is_remote(path):
    return posixpath.dirname(str(path).rstrip('/'))
  return os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(str(path).rstrip('/')) if is_remote(path) else os.path.basename(path)


def relpath(path: str, start: str) -> str:
  if is_remote(path):
    return posixpath.relpath(str(path).split('://', 1)[1], str(start).split('://', 1)[1])
  return os.path.relpath(path, start)


def absolute(path: str) -> str:
  """A local path made absolute; a URL as it is."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def epath(path: str):
  """The etils.epath.Path of `path` (what orbax takes), checked to have a backend."""
  _check_scheme(path)
  from etils import epath as epath_lib
  return epath_lib.Path(path)


def _check_scheme(path: str) -> None:
  s = scheme(path)
  if s is None:
    return
  if s not in BACKENDS:
    raise StorageError(f'{path}: no storage backend handles {s}:// URLs here; use a local path '
                       f'or one of {", ".join(k + "://" for k in BACKENDS)}.')
  try:
    __import__(BACKENDS[s])
  except ImportError:
    raise StorageError(f'{path}: {s}:// URLs need the {BACKENDS[s]} package: pip install '
                       f'{BACKENDS[s]} (or prompt-tuning[cloud]).') from None


def _fs(path: str):
  """(fsspec filesystem, path inside it) of a URL."""
  _check_scheme(path)
  import fsspec
  fs, inner = fsspec.core.url_to_fs(path)
  return fs, inner


def _wrap(path: str, e: BaseException, what: str) -> StorageError:
  text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return StorageError(f'{path}: cannot {what} ({text[:300]}).')


# ----------------------------------------------------------------------------------------------
# Queries.


def _remote(path: str, what: str, fn: Callable[[Any], Any]) -> Any:
  """`fn(epath(path))` for a URL, its backend's errors made one StorageError line naming the URL
  (a missing file stays FileNotFoundError, which callers handle)."""
  try:
    return fn(epath(path))
  except (StorageError, FileNotFoundError):
    raise
  except Exception as e:  # noqa: BLE001 (backends raise many types)
    raise _wrap(path, e, what) from e


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  return _remote(path, 'look it up', lambda p: p.exists())


def isdir(path: str) -> bool:
  """A local directory; on object storage, a prefix that holds objects."""
  if not is_remote(path):
    return os.path.isdir(path)
  return _remote(path, 'look it up', lambda p: p.is_dir())


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  return _remote(path, 'look it up', lambda p: p.is_file())


def listdir(path: str) -> list[str]:
  """Names directly under `path` ([] when it does not exist)."""
  if not is_remote(path):
    return os.listdir(path) if os.path.isdir(path) else []
  return _remote(path, 'list it', lambda p: sorted(c.name for c in p.iterdir())
                 if p.is_dir() else [])


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
  if not is_remote(path):
    yield from os.walk(path)
    return
  fs, inner = _fs(path)
  prefix = path[:len(path) - len(inner)] if path.endswith(inner) else path.split('://')[0] + '://'
  for root, dirs, files in fs.walk(inner):
    yield prefix + root, dirs, files


# ----------------------------------------------------------------------------------------------
# Reads and writes.


def open_file(path: str, mode: str = 'rb', encoding: Optional[str] = None) -> IO:
  """open(); on a URL a file object of the backend (a write appears when it is closed)."""
  if not is_remote(path):
    return open(path, mode, encoding=encoding)  # noqa: SIM115
  return _remote(path, 'open it', lambda p: p.open(mode))


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, 'rb') as f:
      return f.read()
  return _remote(path, 'read it', lambda p: p.read_bytes())


def read_text(path: str) -> str:
  return read_bytes(path).decode('utf-8')


def makedirs(path: str) -> None:
  """Local: os.makedirs; object storage has no directories (a prefix exists once it holds an
  object), so nothing is written."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


TMP_MARK = '.tmp-'  # what repair looks for: `<name>.tmp-<pid>`


def tmp_name(path: str) -> str:
  return f'{path}{TMP_MARK}{os.getpid()}'


def write_atomic(path: str, data: bytes | str) -> str:
  """Readers see the old content or the new, never a part: locally a temporary sibling synced
  and renamed into place; on object storage one object write."""
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    _remote(path, 'write it', lambda p: p.write_bytes(data))
    return path
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = tmp_name(path)
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def save_atomic(path: str, save) -> str:
  """Runs `save(local_path)` (a writer that wants a local path), then puts the file in place:
  renamed locally, uploaded as one object to a URL."""
  if is_remote(path):
    with tempfile.TemporaryDirectory(prefix='prompt-tuning-') as tmp_dir:
      local = os.path.join(tmp_dir, basename(path))
      save(local)
      with open(local, 'rb') as f:
        write_atomic(path, f.read())
    return path
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = tmp_name(path)
  save(tmp)
  os.replace(tmp, path)
  return path


def remove(path: str) -> None:
  if not is_remote(path):
    os.remove(path)
    return
  try:
    epath(path).unlink()
  except FileNotFoundError:
    pass


def rmtree(path: str) -> None:
  """Removes a directory (every object under a prefix); absent is fine."""
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  fs, inner = _fs(path)
  try:
    if fs.exists(inner):
      fs.rm(inner, recursive=True)
  except FileNotFoundError:
    pass
  fs.invalidate_cache()


def copy_tree(src: str, dst: str) -> None:
  """Copies a directory tree, local or remote on either side (file by file)."""
  for root, _, files in walk(src):
    rel = relpath(root, src)
    for name in files:
      target = join(dst, name) if rel in ('.', '') else join(dst, rel, name)
      write_atomic(target, read_bytes(join(root, name)))


def local_copy(path: str) -> str:
  """A local file with `path`'s bytes, for libraries that open files themselves (SentencePiece,
  TensorFlow's readers): the path itself when local; a URL's object downloaded once into a
  per-user cache keyed by the URL and its size/generation."""
  if not is_remote(path):
    return path
  fs, inner = _fs(path)
  try:
    info = fs.info(inner)
  except FileNotFoundError:
    raise StorageError(f'{path}: no such object; check the URL (bucket and path).') from None
  except Exception as e:  # noqa: BLE001
    raise _wrap(path, e, 'read it') from e
  version = str(info.get('generation') or info.get('etag') or info.get('mtime') or '')
  key = hashlib.sha256(f'{path}\0{info.get("size")}\0{version}'.encode()).hexdigest()[:24]
  local = os.path.join(_cache_dir(key), basename(path))
  if not os.path.exists(local):
    save_atomic(local, lambda tmp: _download(path, tmp))
  return local


def _cache_dir(key: str) -> str:
  """Where a URL's local copy lives: $PROMPT_TUNING_CACHE (default ~/.cache/prompt_tuning)."""
  root = os.environ.get('PROMPT_TUNING_CACHE',
                        os.path.join(os.path.expanduser('~'), '.cache', 'prompt_tuning'))
  return os.path.join(root, 'remote', key)


def _download(path: str, local: str) -> None:
  with open(local, 'wb') as f:
    f.write(read_bytes(path))


def local_tree(path: str) -> str:
  """A local directory with the files under `path` (a URL's prefix downloaded once into the
  cache, keyed by the URL and its listing); the path itself when local."""
  if not is_remote(path):
    return path
  entries = []
  for root, _, files in walk(path):
    entries += [join(root, f) for f in files]
  if not entries:
    raise StorageError(f'{path}: no objects under this prefix; check the URL.')
  fs, _ = _fs(path)
  sig = hashlib.sha256()
  for entry in sorted(entries):
    info = fs.info(_fs(entry)[1])
    sig.update(f'{entry}\0{info.get("size")}\0{info.get("generation")}\n'.encode())
  local = os.path.join(_cache_dir(sig.hexdigest()[:24]), basename(path))
  if not os.path.isdir(local):
    staging = tmp_name(local)
    shutil.rmtree(staging, ignore_errors=True)
    copy_tree(path, staging)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    os.replace(staging, local)
  return local


# ----------------------------------------------------------------------------------------------
# Checks made before a run writes anything.


def check_readable(path: str, what: str = 'path') -> None:
  """A URL whose bucket is reachable and exists and whose object or prefix is there; one line
  naming it otherwise. Local paths are checked by their readers, as before."""
  if not is_remote(path):
    return
  _check_bucket(path, what)
  if not exists(path):
    raise StorageError(f'{what} {path}: no such object or prefix; check the URL.')


def check_writable(path: str, what: str = 'MODEL_DIR') -> None:
  """A URL whose bucket is reachable and exists; one line naming it otherwise. Nothing is
  written."""
  if is_remote(path):
    _check_bucket(path, what)


def _check_bucket(path: str, what: str = 'path') -> None:
  fs, inner = _fs(path)
  bucket = inner.split('/', 1)[0]
  if not bucket:
    raise StorageError(f'{what} {path}: the URL names no bucket ({scheme(path)}://BUCKET/...).')
  _check_endpoint(path, what)
  try:
    found = fs.exists(bucket)
  except Exception as e:  # noqa: BLE001 (unreachable endpoint, refused credentials, ...)
    raise StorageError(f'{what} {path}: cannot reach the storage service '
                       f'({_first_line(e)}); check the network and credentials'
                       f'{_emulator_hint()}.') from e
  if not found:
    raise StorageError(f'{what} {path}: bucket {bucket!r} does not exist (or this account '
                       f'cannot see it); create it or fix the URL.')


def _check_endpoint(path: str, what: str) -> None:
  """A quick connect to the storage endpoint: an unreachable one is named in seconds, not after
  the client's minute of retries."""
  import socket
  from urllib.parse import urlparse
  if scheme(path) != 'gs':
    return
  url = urlparse(os.environ.get('STORAGE_EMULATOR_HOST') or 'https://storage.googleapis.com')
  host = url.hostname or url.path  # STORAGE_EMULATOR_HOST may be host:port without a scheme
  port = url.port or (443 if url.scheme == 'https' else 80)
  if ':' in host and url.hostname is None:
    host, port = host.rsplit(':', 1)[0], int(host.rsplit(':', 1)[1])
  for attempt in range(3):
    try:
      socket.create_connection((host, port), timeout=5).close()
      return
    except OSError as e:
      error = e
      if attempt < 2:
        import time
        time.sleep(0.5 * (attempt + 1))
  raise StorageError(f'{what} {path}: cannot reach the storage service at {host}:{port} '
                     f'({error.strerror or error}); check the network'
                     f'{_emulator_hint() or " and credentials"}.')


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _emulator_hint() -> str:
  host = os.environ.get('STORAGE_EMULATOR_HOST')
  return f' (STORAGE_EMULATOR_HOST={host})' if host else ''


def checkpoint_steps(directory: str, marker: str) -> list[int]:
  """N of every `checkpoint_N` folder in `directory` that holds the file `marker` (T5X's
  checkpoint folders, MODEL_DIR's numpy prompts), sorted; none for a missing folder."""
  steps = []
  for name in listdir(directory):
    m = re.fullmatch(r'checkpoint_(\d+)', name)
    if m and isfile(join(directory, name, marker)):
      steps.append(int(m.group(1)))
  return sorted(steps)


def one_line(e: BaseException) -> str:
  """An error's message as the one line a user sees (the CLI's, and inside MODEL_DIR's errors):
  gin's "In call to configurable" trailer and tensorstore's spec dumps cut, caret lines dropped,
  the remaining lines joined."""
  text = str(e).split('\n  In call to configurable')[0].split(' [tensorstore_spec')[0]
  parts = [p.strip() for p in text.splitlines() if p.strip() and set(p.strip()) != {'^'}]
  return ' '.join(parts) or type(e).__name__
