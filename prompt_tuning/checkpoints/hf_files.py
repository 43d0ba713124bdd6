"""The files of a Hugging Face checkpoint directory, whatever the model: `config.json` and the
safetensors weights (one `model.safetensors`, or shards listed by `model.safetensors.index.json`),
read and written through storage.py (local paths or URLs), every failure one CheckpointError
line naming the file (and tensor). The T5 and decoder-only name maps (hf.py, hf_decoder.py) sit on
top of it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from prompt_tuning import storage
from prompt_tuning.checkpoints.common import (FLOAT_DTYPES, CheckpointError, first_line,
                                              is_floating, storage_errors)

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


@storage_errors
def is_hf_dir(path: str) -> bool:
  return storage.isfile(storage.join(path, CONFIG_FILE)) and (
      storage.isfile(storage.join(path, WEIGHTS_FILE)) or
      storage.isfile(storage.join(path, INDEX_FILE)))


def read_config(path: str, what: str = 'model') -> dict[str, Any]:
  """The directory's config.json as a dict; `what` names the expected model in errors."""
  file = storage.join(path, CONFIG_FILE)
  try:
    config = json.loads(storage.read_text(file))
  except storage.StorageError:
    raise
  except ValueError as e:
    raise CheckpointError(f'{file}: not valid JSON ({first_line(e)}).') from e
  if not isinstance(config, dict):
    raise CheckpointError(f'{file}: not a {what} config (top level is {type(config).__name__}).')
  return config


def weight_files(path: str) -> list[str]:
  """The safetensors files of a directory: the index's shards, else `model.safetensors`."""
  index = storage.join(path, INDEX_FILE)
  if storage.isfile(index):
    try:
      weight_map = json.loads(storage.read_text(index))['weight_map']
    except storage.StorageError:
      raise
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f'{index}: not a valid safetensors index '
                            f'({type(e).__name__}: {first_line(e)}).') from e
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
      raise CheckpointError(f'{index}: not a valid safetensors index (weight_map is not a map '
                            f'of tensor name to file name).')
    return sorted({storage.join(path, v) for v in weight_map.values()})
  return [storage.join(path, WEIGHTS_FILE)]


def check_listed_files(files: list[str]) -> None:
  for file in files:
    if not storage.isfile(file):
      raise CheckpointError(f'{file}: listed in {INDEX_FILE} but missing.')


def open_file(file: str):
  """safetensors' reader of `file`; a URL's object is read through a local copy (downloaded once
  into the cache, see storage.local_copy), which safetensors maps lazily as a local file."""
  return safe_open(storage.local_copy(file), framework='numpy')


def read_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, the file each came from); a tensor stored twice is an error, not a silent pick."""
  tensors: dict[str, np.ndarray] = {}
  files: dict[str, str] = {}
  for file in weight_files(path):
    check_listed_files([file])
    try:
      with open_file(file) as f:
        for name in f.keys():
          if name in files:
            raise CheckpointError(f'{file}: tensor {name!r} is also stored in {files[name]}; '
                                  f'which one is meant is ambiguous.')
          tensors[name], files[name] = f.get_tensor(name), file
    except (CheckpointError, storage.StorageError):
      raise
    except Exception as e:  # safetensors raises SafetensorError, OSError, TypeError, ...
      raise CheckpointError(f'{file}: corrupt or truncated safetensors file '
                            f'({first_line(e)}).') from e
  return tensors, files


def read_one(path: str, names: tuple[str, ...], what: str) -> tuple[np.ndarray, str]:
  """(the first of `names` found, 'file [name]'), reading no other tensor; checked to be
  floating point. Raises CheckpointError naming `what` when none is stored."""
  files = weight_files(path)
  check_listed_files(files)
  for name in names:
    for file in files:
      try:
        with open_file(file) as f:
          if name not in f.keys():
            continue
          value = f.get_tensor(name)
      except storage.StorageError:
        raise
      except Exception as e:  # safetensors raises SafetensorError, OSError, TypeError, ...
        raise CheckpointError(f'{file}: corrupt or truncated safetensors file '
                              f'({first_line(e)}).') from e
      source = f'{file} [{name}]'
      if not is_floating(value.dtype):
        raise CheckpointError(f'{source}: has dtype {value.dtype}; checkpoint parameters must be '
                              f'floating point ({FLOAT_DTYPES}).')
      return value, source
  raise CheckpointError(f'{path} (Hugging Face safetensors): no {what} in '
                        f'{", ".join(files)}.')


def check_floating(tensors: Mapping[str, np.ndarray], files: Mapping[str, str],
                   ours: Mapping[str, str], label: str = 'T5X') -> None:
  """Refuses a non-float tensor (it would be cast silently), naming its file, its HF name and,
  from `ours` (HF name -> our key, called `label`), what it would have become."""
  for name, value in tensors.items():
    if not is_floating(value.dtype):
      what = f' ({label} {ours[name]!r})' if name in ours else ''
      raise CheckpointError(f'{files[name]}: tensor {name!r}{what} has dtype {value.dtype}; '
                            f'checkpoint parameters must be floating point ({FLOAT_DTYPES}).')


def write(directory: str, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any],
          max_shard_bytes: int) -> str:
  """Writes `config.json` and the tensors (sharded with an index above `max_shard_bytes`, in the
  given order), each file whole or not at all (storage.save_atomic), into a local directory or
  under a URL; returns the directory."""
  storage.check_writable(directory, 'output')
  storage.makedirs(directory)
  shards: list[dict[str, np.ndarray]] = []
  current: dict[str, np.ndarray] = {}
  size = 0
  for name, value in tensors.items():
    if current and size + value.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = value
    size += value.nbytes
  shards.append(current)

  metadata = {'format': 'pt'}
  if len(shards) == 1:
    _save_file(shards[0], storage.join(directory, WEIGHTS_FILE), metadata)
  else:
    weight_map = {}
    for i, shard in enumerate(shards, 1):
      name = f'model-{i:05d}-of-{len(shards):05d}.safetensors'
      _save_file(shard, storage.join(directory, name), metadata)
      weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    storage.write_atomic(storage.join(directory, INDEX_FILE), json.dumps(
        {'metadata': {'total_size': total}, 'weight_map': weight_map}, indent=2))
  storage.write_atomic(storage.join(directory, CONFIG_FILE), json.dumps(config, indent=2))
  return directory


def _save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str]) -> None:
  storage.save_atomic(path, lambda tmp: save_file(dict(tensors), tmp, metadata=dict(metadata)))
