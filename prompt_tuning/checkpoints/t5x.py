"""T5X's legacy checkpoint format, read and written without t5x.

A checkpoint directory `checkpoint_<step>/` holds a msgpack file `checkpoint` (written by
flax.serialization) of
`{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`.
Large arrays are not inline: their leaf is a TensorStore spec whose kvstore path is relative to
the directory (`target.encoder.layers_0.attention.query.kernel`), and the array is a zarr v2 store
there.

The directory may be local or a gs:// URL: its files go through storage.py, its arrays through
tensorstore's `gcs` driver (which honours TENSORSTORE_GCS_HTTP_URL).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import time
from concurrent import futures
from typing import Any, Iterator, Mapping, Optional, Sequence

import msgpack
import numpy as np
import tensorstore as ts
from flax import serialization

from prompt_tuning import storage
from prompt_tuning.checkpoints.common import (FLOAT_DTYPES, CheckpointError, check_dtypes,
                                              first_line, is_floating, storage_errors,
                                              to_numpy_tree, unflatten)

VERSION = 3
CHECKPOINT_FILE = 'checkpoint'
_CHUNK_BYTES = 64 * 1024 * 1024  # T5X's target zarr chunk size.
_TS_KEYS = {'driver', 'kvstore', 'metadata'}


def is_t5x_checkpoint(path: str) -> bool:
  return resolve_dir(path, must_exist=False) is not None


@storage_errors
def resolve_dir(path: str, must_exist: bool = True) -> Optional[str]:
  """Accepts `checkpoint_N/`, its `checkpoint` file, or a dir of `checkpoint_N/` (latest wins);
  a local path or a URL (gs://bucket/...)."""
  path = str(path).rstrip('/') if storage.is_remote(path) else os.path.abspath(path)
  if storage.basename(path) == CHECKPOINT_FILE and storage.isfile(path):
    return storage.dirname(path)
  if storage.isfile(storage.join(path, CHECKPOINT_FILE)):
    return path
  steps = all_steps(path) if storage.isdir(path) else []
  if steps:
    return storage.join(path, f'checkpoint_{steps[-1]}')
  if must_exist:
    raise CheckpointError(f'{path}: no T5X checkpoint here (no {CHECKPOINT_FILE!r} file and no '
                          f'checkpoint_<step>/ subdirectory).')
  return None


@storage_errors
def all_steps(model_dir: str) -> list[int]:
  steps = []
  for name in storage.listdir(model_dir):
    m = re.fullmatch(r'checkpoint_(\d+)', name)
    if m and storage.isfile(storage.join(model_dir, name, CHECKPOINT_FILE)):
      steps.append(int(m.group(1)))
  return sorted(steps)


def _read_contents(ckpt_dir: str) -> dict:
  """The msgpack tree with array payloads left undecoded (msgpack ExtType)."""
  file = storage.join(ckpt_dir, CHECKPOINT_FILE)
  try:
    raw = storage.read_bytes(file)
  except storage.StorageError as e:
    raise CheckpointError(str(e)) from e
  except OSError as e:
    raise CheckpointError(f'{file}: cannot read T5X checkpoint file '
                          f'({e.strerror or first_line(e)}).') from e
  try:
    # Keep array payloads as raw ExtType so optimizer state is never decoded.
    contents = msgpack.unpackb(raw, ext_hook=msgpack.ExtType, strict_map_key=False, raw=False)
  except Exception as e:  # msgpack raises several unrelated types on bad bytes.
    raise CheckpointError(f'{file}: corrupt or truncated T5X checkpoint ({type(e).__name__}: '
                          f'{first_line(e)}).') from e
  if not isinstance(contents, dict):
    raise CheckpointError(f'{file}: not a T5X checkpoint (top level is {type(contents).__name__}).')
  return contents


def _target_subtree(contents: dict, file: str) -> dict:
  if isinstance(contents.get('optimizer'), dict) and 'target' in contents['optimizer']:
    return contents['optimizer']['target']
  if 'target' in contents:
    return contents['target']
  raise CheckpointError(f'{file}: no parameters found (expected key optimizer/target or target; '
                        f'found {sorted(contents)}).')


def _is_ts_spec(x: Any) -> bool:
  return isinstance(x, dict) and _TS_KEYS <= set(x)


def _flatten_with_specs(tree: Any, prefix: str = '') -> dict[str, Any]:
  if _is_ts_spec(tree) or not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten_with_specs(v, f'{prefix}/{k}' if prefix else k))
  return out


def absolute_spec(spec: Mapping[str, Any], ckpt_dir: str) -> dict:
  """Resolves a stored spec's relative kvstore path against the checkpoint directory."""
  spec = {**spec, 'kvstore': dict(spec['kvstore'])}
  kv = spec['kvstore']
  rel = kv.get('path', spec.pop('path', None))
  if rel is None:
    raise CheckpointError(f'{ckpt_dir}: TensorStore spec without a path: {spec}')
  if storage.is_remote(ckpt_dir):
    bucket, inner = _gcs_location(ckpt_dir)
    spec['kvstore'] = {'driver': 'gcs', 'bucket': bucket,
                       'path': f'{inner}/{rel}' if inner else rel}
  else:
    # T5X writes 'gfile' (its TF filesystem) or 'gcs' with a dummy bucket; both are local here.
    spec['kvstore'] = {'driver': 'file', 'path': os.path.join(ckpt_dir, rel)}
  return spec


def _gcs_location(url: str) -> tuple[str, str]:
  """(bucket, path in it) of a gs:// URL, for tensorstore's gcs driver (which honours
  TENSORSTORE_GCS_HTTP_URL and retries transient errors itself)."""
  m = re.fullmatch(r'gs://([^/]+)/?(.*)', str(url).rstrip('/'))
  if not m:
    raise CheckpointError(f'{url}: T5X zarr arrays are read and written on local paths or gs:// '
                          f'URLs only; copy the checkpoint to one of those.')
  return m.group(1), m.group(2)


@storage_errors
def read_params(path: str, keys: Optional[Sequence[str]] = None
                ) -> tuple[dict[str, np.ndarray], int, str]:
  """Reads only the parameters (`target`) of a T5X checkpoint: (flat params, step, directory).

  `keys` (flat paths such as 'encoder/prompt/prompt/prompt', or a subtree such as 'encoder/prompt')
  limits what is decoded and read; None reads everything. A key that is not in the checkpoint
  raises CheckpointError.
  """
  ckpt_dir = resolve_dir(path)
  file = storage.join(ckpt_dir, CHECKPOINT_FILE)
  contents = _read_contents(ckpt_dir)
  target = _target_subtree(contents, file)
  if keys is not None:
    target = _select(target, [keys] if isinstance(keys, str) else keys, file)
  target = _decode_inline(target, file)
  step = _read_step(contents)

  flat = _flatten_with_specs(target)
  for key, leaf in flat.items():
    if not _is_ts_spec(leaf) and not isinstance(leaf, np.ndarray):
      raise CheckpointError(f'{file}: parameter {key!r} is not an array ({type(leaf).__name__}).')
  # Inline arrays: checked before any zarr array is read.
  check_dtypes({k: v for k, v in flat.items() if not _is_ts_spec(v)}, file)
  specs = {key: absolute_spec(leaf, ckpt_dir) for key, leaf in flat.items() if _is_ts_spec(leaf)}
  where = {key: _location(spec) for key, spec in specs.items()}
  stores = _open_zarrs(specs, ckpt_dir)
  for key, store in stores.items():
    if not is_floating(store.dtype.numpy_dtype):
      raise CheckpointError(f'{where[key]}: parameter {key!r} has dtype {store.dtype.name}; '
                            f'checkpoint parameters must be floating point ({FLOAT_DTYPES}).')
  # tensorstore reads a missing chunk file as zeros: verify every chunk is there first.
  metadata = {key: store.spec().to_json().get('metadata', {}) for key, store in stores.items()}
  # An explicit fill value makes an absent chunk meaningful (all fill); T5X never writes one.
  unfilled = [key for key, md in metadata.items() if md.get('fill_value') is None]
  listings = _list_chunks(ckpt_dir, unfilled, where, stores)
  for key, listing in listings.items():
    _check_chunks(metadata[key], listing, key, where[key], ckpt_dir)
  reads = {key: store.read() for key, store in stores.items()}
  for key, future in reads.items():
    try:
      flat[key] = np.asarray(future.result())
    except Exception as e:
      raise CheckpointError(f'{ckpt_dir}: array {key!r} is corrupt or truncated '
                            f'({first_line(e)}); its zarr store is {where[key]}.') from e
  return flat, step, ckpt_dir


def _decode_inline(target: dict, file: str) -> dict:
  """Lets flax decode the (small) target subtree's inline arrays; names the leaf that fails."""
  try:
    return serialization.msgpack_restore(msgpack.packb(target))
  except Exception as e:
    culprit = ''
    for key, leaf in _flatten_with_specs(target).items():
      if isinstance(leaf, msgpack.ExtType):
        try:
          serialization.msgpack_restore(msgpack.packb(leaf))
        except Exception:  # pylint: disable=broad-except
          culprit = f' of {key!r}'
          break
    raise CheckpointError(f'{file}: cannot decode the inline array{culprit} (corrupt or '
                          f'inconsistent shape/dtype/bytes: {first_line(e)}).') from e


class _Listed:
  """A finished listing, answering `.result()` as tensorstore's list futures do."""

  def __init__(self, keys: Optional[list[str]] = None, error: Optional[BaseException] = None):
    self.keys, self.error = keys, error

  def result(self) -> list[str]:
    if self.error is not None:
      raise self.error
    return self.keys


def _list_chunks(ckpt_dir: str, keys: Sequence[str], where: Mapping[str, str],
                 stores: Mapping[str, Any]) -> dict[str, Any]:
  """{key: listing of the keys in its zarr store}: tensorstore's listing locally; on object
  storage the file layer's (one listing per array, a few at a time), so one client lists every
  URL the project reads."""
  if not storage.is_remote(ckpt_dir):
    return {key: stores[key].kvstore.list() for key in keys}

  def listing(key: str) -> _Listed:
    root = where[key]
    try:
      return _Listed([storage.relpath(storage.join(r, name), root)
                      for r, _, names in storage.walk(root) for name in names])
    except Exception as e:  # noqa: BLE001 (reported by _check_chunks, naming the array)
      return _Listed(error=e)

  with futures.ThreadPoolExecutor(max_workers=8) as pool:
    return dict(zip(keys, pool.map(listing, keys)))


def _location(spec: Mapping[str, Any]) -> str:
  """Where an absolute spec's array lives, for messages: a local path or gs://bucket/path."""
  kv = spec['kvstore']
  path = str(kv.get('path', '')).rstrip('/')
  return f"gs://{kv['bucket']}/{path}" if kv.get('driver') == 'gcs' else path


def _chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> list[int]:
  """Chunks per dimension; a zero-size dimension has none."""
  return [-(-n // max(c, 1)) for n, c in zip(shape, chunks)]


def chunk_keys(grid: Sequence[int], separator: str = '.') -> Iterator[str]:
  """The zarr v2 key of every chunk in a grid, in order ('0' for a 0-d array)."""
  if not grid:
    yield '0'
    return
  for index in itertools.product(*(range(g) for g in grid)):
    yield separator.join(map(str, index))


def _in_grid(key: str, grid: Sequence[int], separator: str) -> bool:
  if not grid:
    return key == '0'
  parts = key.split(separator)
  return len(parts) == len(grid) and all(
      p.isascii() and p.isdigit() and str(int(p)) == p and int(p) < g for p, g in zip(parts, grid))


def _check_chunks(metadata: Mapping[str, Any], listing, key: str, where: str, ckpt_dir: str,
                  limit: int = 5) -> None:
  """Raises CheckpointError naming the chunk files of a zarr array absent from its `listing`."""
  try:
    present = {k.decode() if isinstance(k, bytes) else k for k in listing.result()}
  except Exception as e:
    raise CheckpointError(f'{ckpt_dir}: cannot list the chunk files of array {key!r} at {where} '
                          f'({first_line(e)}).') from e
  grid = _chunk_grid(metadata['shape'], metadata['chunks'])
  separator = metadata.get('dimension_separator') or '.'
  absent = math.prod(grid) - sum(_in_grid(k, grid, separator) for k in present)
  if absent:
    # Walks at most len(present) + limit keys of the grid.
    shown = list(itertools.islice(
        (k for k in chunk_keys(grid, separator) if k not in present), limit))
    more = ', ...' if absent > len(shown) else ''
    raise CheckpointError(
        f'{ckpt_dir}: array {key!r} is missing {absent} of its {math.prod(grid)} zarr chunk '
        f'file(s) ({", ".join(shown)}{more}) under {where}; a missing chunk would read as zeros.')


def _select(target: dict, keys: Sequence[str], file: str) -> dict:
  """The part of the undecoded target tree under `keys` (so nothing else is decoded or read)."""
  subset, missing = {}, []
  for key in keys:
    node, parts = target, key.split('/')
    for part in parts:
      if not isinstance(node, dict) or _is_ts_spec(node) or part not in node:
        missing.append(key)
        break
      node = node[part]
    else:
      out = subset
      for part in parts[:-1]:
        out = out.setdefault(part, {})
      out[parts[-1]] = node
  if missing:
    available = sorted(_flatten_with_specs(target))
    # Names sharing the last component are the likely intended ones (e.g. '.../prompt').
    word = missing[0].rsplit('/', 1)[-1]
    similar = [k for k in available if word in k]
    hint = (f'parameters containing {word!r}: {_listing(similar)}' if similar else
            f'none contains {word!r}; it has {_listing(available)}')
    raise CheckpointError(f'{file}: no parameter {", ".join(map(repr, missing))} in this '
                          f'checkpoint; {hint}.')
  return subset


def _listing(keys: list[str], limit: int = 8) -> str:
  return ', '.join(keys[:limit]) + (f', ... (+{len(keys) - limit} more)' if len(keys) > limit
                                    else '')


def _open_zarrs(specs: Mapping[str, dict], ckpt_dir: str) -> dict[str, Any]:
  """{key: opened zarr array}; every open is started before any is waited for (on object storage
  one round trip of latency in all, not one per array). The first failure, in key order, raises."""
  pending = {}
  for key, spec in specs.items():
    try:
      pending[key] = ts.open(spec, open=True, read=True)
    except Exception as e:  # an invalid spec fails at once
      pending[key] = e
  stores = {}
  for key, future in pending.items():
    try:
      if isinstance(future, Exception):
        raise future
      stores[key] = future.result()
    except Exception as e:
      raise CheckpointError(f'{ckpt_dir}: cannot open the zarr array of {key!r} at '
                            f'{_location(specs[key])} ({first_line(e)}).') from e
  return stores


@storage_errors
def read_step(path: str) -> int:
  """The step stored with a checkpoint (without reading any array)."""
  return _read_step(_read_contents(resolve_dir(path)))


def _read_step(contents: dict) -> int:
  state = contents.get('optimizer', contents).get('state', {})
  step = state.get('step') if isinstance(state, dict) else None
  if isinstance(step, msgpack.ExtType):
    step = serialization.msgpack_restore(msgpack.packb(step))
  return int(step) if step is not None else 0


# ----------------------------------------------------------------------------------------------
# Writing.


def _zarr_dtype(dtype: np.dtype) -> str:
  return 'bfloat16' if dtype.name == 'bfloat16' else dtype.str


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """Largest divisor-shaped chunk under 64 MiB, halving the largest dimension first (as T5X)."""
  target = max(1, _CHUNK_BYTES // itemsize)
  factors = [[d for d in range(1, n + 1) if n % d == 0] for n in shape]
  while int(np.prod([f[-1] for f in factors])) > target:
    i = max(range(len(shape)), key=lambda j: factors[j][-1])
    factors[i].pop()
  return [f[-1] for f in factors]


def _goes_to_zarr(key: str, value: np.ndarray) -> bool:
  # Same split as T5X's own files: kernels and embeddings as zarr, norms and biases inline.
  return value.ndim >= 2 and key.rsplit('/', 1)[-1] in ('kernel', 'embedding')


def adafactor_initial_state(flat: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """T5X Adafactor's freshly initialised per-parameter state (factored, no momentum).

  Written so that T5X, configured with its default Adafactor, restores the checkpoint as is.
  """
  states = {}
  for key, value in flat.items():
    zeros1 = np.zeros((1,), np.float32)
    state = {'m': zeros1, 'v': zeros1, 'v_col': zeros1, 'v_row': zeros1}
    shape = value.shape
    if len(shape) >= 2 and sorted(shape)[-2] >= 128:
      order = np.argsort(shape)
      d1, d0 = int(order[-2]), int(order[-1])
      state['v_row'] = np.zeros(np.delete(shape, d0), np.float32)
      state['v_col'] = np.zeros(np.delete(shape, d1), np.float32)
    else:
      state['v'] = np.zeros(shape, np.float32)
    states[key] = state
  return states


@storage_errors
def save_checkpoint(directory: str, params: Mapping[str, Any], step: int,
                    overwrite: bool = False) -> str:
  """Writes `directory/checkpoint_<step>/` in T5X's legacy layout; returns that path.

  Locally the checkpoint is assembled in a temporary sibling and renamed into place, so a crash
  never leaves a half-written `checkpoint_<step>` behind and an existing one is replaced only
  whole. Object storage (a gs:// URL) has no rename: the arrays are written in place and the
  `checkpoint` file last, so a cut write is never taken for a checkpoint (readers look for that
  file); `overwrite` removes the old checkpoint first.
  """
  flat = to_numpy_tree(params)
  if storage.is_remote(directory):
    return _save_remote(str(directory).rstrip('/'), flat, step, overwrite)
  final = os.path.join(os.path.abspath(directory), f'checkpoint_{step}')
  check_dtypes(flat, final)  # Refused before anything is written.
  if os.path.exists(final) and not overwrite:
    raise CheckpointError(f'{final}: already exists; pass overwrite=True to replace it.')
  tmp = f'{final}.tmp-{int(time.time() * 1e6)}'
  os.makedirs(tmp)

  contents = _write_arrays(tmp, flat, step)
  with open(os.path.join(tmp, CHECKPOINT_FILE), 'wb') as f:
    f.write(contents)

  if os.path.exists(final):
    old = f'{final}.old-{int(time.time() * 1e6)}'
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old)
  else:
    os.rename(tmp, final)
  return final


def _save_remote(directory: str, flat: Mapping[str, np.ndarray], step: int,
                 overwrite: bool) -> str:
  final = storage.join(directory, f'checkpoint_{step}')
  check_dtypes(flat, final)  # Refused before anything is written.
  storage.check_writable(directory, 'output')
  _gcs_location(final)  # a URL tensorstore can write to
  if storage.exists(final):
    if not overwrite:
      raise CheckpointError(f'{final}: already exists; pass overwrite=True to replace it.')
    storage.rmtree(final)
  try:
    contents = _write_arrays(final, flat, step)
  except Exception as e:  # tensorstore raises ValueError for every failed request
    raise CheckpointError(f'{final}: cannot write the zarr arrays ({first_line(e)}); nothing '
                          f'there is a checkpoint until its {CHECKPOINT_FILE!r} file is '
                          f'written.') from e
  storage.write_atomic(storage.join(final, CHECKPOINT_FILE), contents)
  return final


def _write_arrays(ckpt_dir: str, flat: Mapping[str, np.ndarray], step: int) -> bytes:
  """Writes the zarr arrays of `flat` under `ckpt_dir`; returns the `checkpoint` file's bytes
  (which refer to them by paths relative to the directory, wherever it is)."""
  target = {}
  opening = []  # every array is created before any is waited for (see _open_zarrs)
  for key, value in flat.items():
    if _goes_to_zarr(key, value):
      name = 'target.' + key.replace('/', '.')
      metadata = {'chunks': _chunk_shape(value.shape, value.dtype.itemsize),
                  'compressor': {'id': 'gzip', 'level': 1},
                  'dtype': _zarr_dtype(value.dtype), 'shape': list(value.shape)}
      spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': name},
              'metadata': metadata}
      opening.append((ts.open(absolute_spec(spec, ckpt_dir), create=True, open=False), value))
      target[key] = spec
    else:
      target[key] = value
  writes = [store.result().write(value) for store, value in opening]
  for w in writes:
    w.result()

  state = {'step': np.asarray(step, np.int32),
           'param_states': unflatten(adafactor_initial_state(flat))}
  contents = {'version': VERSION, 'optimizer': {'state': state, 'target': unflatten(target)}}
  return serialization.msgpack_serialize(contents)
