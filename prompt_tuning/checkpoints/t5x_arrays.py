"""The zarr arrays of a T5X checkpoint, through tensorstore (t5x.py holds the msgpack file).

A large parameter's leaf in the `checkpoint` file is a TensorStore spec whose kvstore path is
relative to the checkpoint directory; the array is a zarr v2 store there. This module resolves
those specs (local paths, or gs:// through tensorstore's `gcs` driver, which honours
TENSORSTORE_GCS_HTTP_URL), reads the arrays after checking that every chunk file is present, and
writes them in T5X's layout.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from concurrent import futures
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np
import tensorstore as ts

from prompt_tuning import storage
from prompt_tuning.checkpoints.common import (FLOAT_DTYPES, CheckpointError, first_line,
                                              is_floating)

_CHUNK_BYTES = 64 * 1024 * 1024  # T5X's target zarr chunk size.


def absolute_spec(spec: Mapping[str, Any], ckpt_dir: str) -> dict:
  """Resolves a stored spec's relative kvstore path against the checkpoint directory."""
  spec = {**spec, 'kvstore': dict(spec['kvstore'])}
  kv = spec['kvstore']
  rel = kv.get('path', spec.pop('path', None))
  if rel is None:
    raise CheckpointError(f'{ckpt_dir}: TensorStore spec without a path: {spec}')
  if storage.is_remote(ckpt_dir):
    bucket, inner = gcs_location(ckpt_dir)
    spec['kvstore'] = {'driver': 'gcs', 'bucket': bucket,
                       'path': f'{inner}/{rel}' if inner else rel}
  else:
    # T5X writes 'gfile' (its TF filesystem) or 'gcs' with a dummy bucket; both are local here.
    spec['kvstore'] = {'driver': 'file', 'path': os.path.join(ckpt_dir, rel)}
  return spec


def gcs_location(url: str) -> tuple[str, str]:
  """(bucket, path in it) of a gs:// URL, for tensorstore's gcs driver (which honours
  TENSORSTORE_GCS_HTTP_URL and retries transient errors itself)."""
  m = re.fullmatch(r'gs://([^/]+)/?(.*)', str(url).rstrip('/'))
  if not m:
    raise CheckpointError(f'{url}: T5X zarr arrays are read and written on local paths or gs:// '
                          f'URLs only; copy the checkpoint to one of those.')
  return m.group(1), m.group(2)


# ----------------------------------------------------------------------------------------------
# Reading.


def read_arrays(specs: Mapping[str, Mapping[str, Any]], ckpt_dir: str) -> dict[str, np.ndarray]:
  """{key: array} of the stored (relative) `specs` of a checkpoint directory.

  Every array is opened and checked (floating dtype, no chunk file missing) before any is read.
  """
  absolute = {key: absolute_spec(spec, ckpt_dir) for key, spec in specs.items()}
  where = {key: _location(spec) for key, spec in absolute.items()}
  stores = _open_zarrs(absolute, ckpt_dir)
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
  arrays = {}
  for key, future in reads.items():
    try:
      arrays[key] = np.asarray(future.result())
    except Exception as e:
      raise CheckpointError(f'{ckpt_dir}: array {key!r} is corrupt or truncated '
                            f'({first_line(e)}); its zarr store is {where[key]}.') from e
  return arrays


class _Listed:
  """A finished listing, answering `.result()` as tensorstore's list futures do."""

  def __init__(self, keys: Sequence[str] = (), error: Union[BaseException, None] = None):
    self.keys, self.error = list(keys), error

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


def _check_chunks(metadata: Mapping[str, Any], listing: Any, key: str, where: str, ckpt_dir: str,
                  limit: int = 5) -> None:
  """Raises CheckpointError naming the chunk files of a zarr array absent from its `listing`
  (a tensorstore list future or a _Listed)."""
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


def _open_zarrs(specs: Mapping[str, dict], ckpt_dir: str) -> dict[str, Any]:
  """{key: opened zarr array}; every open is started before any is waited for (on object storage
  one round trip of latency in all, not one per array). The first failure, in key order, raises."""
  pending: dict[str, Union[ts.Future[ts.TensorStore], Exception]] = {}
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


# ----------------------------------------------------------------------------------------------
# Writing.


def zarr_spec(name: str, value: np.ndarray) -> dict[str, Any]:
  """The spec T5X stores for an array written as zarr at `name` (relative to the checkpoint)."""
  metadata = {'chunks': _chunk_shape(value.shape, value.dtype.itemsize),
              'compressor': {'id': 'gzip', 'level': 1},
              'dtype': _zarr_dtype(value.dtype), 'shape': list(value.shape)}
  return {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': name}, 'metadata': metadata}


def write_arrays(ckpt_dir: str, arrays: Sequence[tuple[Mapping[str, Any], np.ndarray]]) -> None:
  """Writes each (stored spec, value) under `ckpt_dir`; every array is created before any is
  waited for (see _open_zarrs)."""
  opening = [(ts.open(absolute_spec(spec, ckpt_dir), create=True, open=False), value)
             for spec, value in arrays]
  writes = [store.result().write(value) for store, value in opening]
  for w in writes:
    w.result()


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
