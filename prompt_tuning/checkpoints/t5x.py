"""T5X's legacy checkpoint format, read and written without t5x.

A checkpoint directory `checkpoint_<step>/` holds a msgpack file `checkpoint` (written by
flax.serialization) of
`{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}`.
Large arrays are not inline: their leaf is a TensorStore spec whose kvstore path is relative to
the directory (`target.encoder.layers_0.attention.query.kernel`), and the array is a zarr v2 store
there.

The directory may be local or a gs:// URL: its files go through storage.py, its arrays through
tensorstore (t5x_arrays.py).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Mapping, Optional, Sequence

import msgpack
import numpy as np
from flax import serialization

from prompt_tuning import storage
from prompt_tuning.checkpoints import t5x_arrays
from prompt_tuning.checkpoints.common import (CheckpointError, check_dtypes, first_line,
                                              storage_errors, to_numpy_tree, unflatten)
from prompt_tuning.checkpoints.t5x_arrays import absolute_spec as absolute_spec  # (its API)

VERSION = 3
CHECKPOINT_FILE = 'checkpoint'
_TS_KEYS = {'driver', 'kvstore', 'metadata'}


def is_t5x_checkpoint(path: str) -> bool:
  return find_dir(path) is not None


@storage_errors
def resolve_dir(path: str) -> str:
  """The checkpoint directory at `path` (see find_dir); CheckpointError where there is none."""
  ckpt_dir = find_dir(path)
  if ckpt_dir is None:
    raise CheckpointError(f'{_absolute(path)}: no T5X checkpoint here (no {CHECKPOINT_FILE!r} '
                          f'file and no checkpoint_<step>/ subdirectory).')
  return ckpt_dir


@storage_errors
def find_dir(path: str) -> Optional[str]:
  """Accepts `checkpoint_N/`, its `checkpoint` file, or a dir of `checkpoint_N/` (latest wins);
  a local path or a URL (gs://bucket/...). None where there is no checkpoint."""
  path = _absolute(path)
  if storage.basename(path) == CHECKPOINT_FILE and storage.isfile(path):
    return storage.dirname(path)
  if storage.isfile(storage.join(path, CHECKPOINT_FILE)):
    return path
  steps = all_steps(path) if storage.isdir(path) else []
  if steps:
    return storage.join(path, f'checkpoint_{steps[-1]}')
  return None


def _absolute(path: str) -> str:
  return str(path).rstrip('/') if storage.is_remote(path) else os.path.abspath(path)


@storage_errors
def all_steps(model_dir: str) -> list[int]:
  return storage.checkpoint_steps(model_dir, CHECKPOINT_FILE)


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
  flat.update(t5x_arrays.read_arrays(
      {key: leaf for key, leaf in flat.items() if _is_ts_spec(leaf)}, ckpt_dir))
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


def _select(target: dict, keys: Sequence[str], file: str) -> dict:
  """The part of the undecoded target tree under `keys` (so nothing else is decoded or read)."""
  subset: dict[str, Any] = {}
  missing: list[str] = []
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
  t5x_arrays.gcs_location(final)  # a URL tensorstore can write to
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
  target: dict[str, Any] = {}
  zarrs = []
  for key, value in flat.items():
    if _goes_to_zarr(key, value):
      target[key] = t5x_arrays.zarr_spec('target.' + key.replace('/', '.'), value)
      zarrs.append((target[key], value))
    else:
      target[key] = value
  t5x_arrays.write_arrays(ckpt_dir, zarrs)

  state = {'step': np.asarray(step, np.int32),
           'param_states': unflatten(adafactor_initial_state(flat))}
  contents = {'version': VERSION, 'optimizer': {'state': state, 'target': unflatten(target)}}
  return serialization.msgpack_serialize(contents)
