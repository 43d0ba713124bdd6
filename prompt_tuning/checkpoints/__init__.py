"""Checkpoint formats: T5X legacy (msgpack + zarr) and Hugging Face safetensors.

`load_params(path)` detects the format and returns `(T5Config, params)` with T5X parameter paths
(no `target/` prefix). Every path may be local or a URL (gs://bucket/...): files go through
storage.py, T5X's zarr arrays through tensorstore's gcs driver. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from prompt_tuning import storage
from prompt_tuning.checkpoints import hf, hf_decoder, t5x
from prompt_tuning.checkpoints.common import (CheckpointError, check_params, derive_config,
                                              flatten, storage_errors, unflatten)
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import split_params

__all__ = ['CheckpointError', 'convert', 'detect_format', 'load_base', 'load_embedding',
           'load_params', 'read_step', 'save_hf', 'save_t5x']

EMBEDDING = 'token_embedder/embedding'
# Trainable additions that may ride along in a full checkpoint (e.g. a prompt inserted for T5X).
_EXTRA_PREFIXES = ('encoder/prompt/',)


@storage_errors
def detect_format(path: str) -> str:
  """'t5x' or 'hf'; raises CheckpointError naming what was expected."""
  if storage.is_remote(path):
    # Unknown scheme or bucket, unreachable service, no such object: one line naming the URL.
    storage.check_readable(path, 'checkpoint')
  elif not storage.exists(path):
    raise CheckpointError(f'{path}: no such file or directory.')
  if t5x.is_t5x_checkpoint(path):
    return 't5x'
  if storage.isdir(path) and hf.is_hf_dir(path):
    return 'hf'
  raise CheckpointError(
      f'{path}: unknown checkpoint format. Expected a T5X checkpoint (a directory with a '
      f"'checkpoint' msgpack file, or one holding checkpoint_<step>/ directories) or a Hugging "
      f"Face T5 directory ('config.json' with 'model.safetensors' or "
      f"'model.safetensors.index.json').")


def load_params(path: str, config: Optional[t5.T5Config] = None
                ) -> tuple[t5.T5Config, dict[str, Any]]:
  """Reads parameters and the model config from a T5X or Hugging Face checkpoint.

  The config comes from the checkpoint where the format carries it (array shapes; HF's
  config.json). `config`, when given, is used instead and every array is checked against it;
  it also supplies what a T5X checkpoint cannot carry (relative-position max distance) and the
  storage dtype (arrays are cast to `config.param_dtype`).

  Nothing is loaded silently wrong: a missing zarr chunk, a non-float array, a shape that
  disagrees or a corrupt file raises one single-line CheckpointError naming the file and array.
  """
  fmt = detect_format(path)
  if fmt == 't5x':
    flat, _, ckpt_dir = t5x.read_params(path)
    source = storage.join(ckpt_dir, t5x.CHECKPOINT_FILE)
    resolved = derive_config(flat, source, base=config)
  else:
    source = f'{path} (Hugging Face safetensors)'
    resolved, flat = hf.read_params(path, config)
  check_params(flat, resolved, source, ignore=_EXTRA_PREFIXES)
  if config is not None:
    flat = {k: v if k.startswith(_EXTRA_PREFIXES) else v.astype(config.weight_dtype, copy=False)
            for k, v in flat.items()}
  return resolved, unflatten(flat)


def load_base(path: Optional[str], config: Optional[t5.T5Config] = None
              ) -> tuple[t5.T5Config, dict[str, Any]]:
  """(config, frozen params) from INITIAL_CHECKPOINT_PATH; a prompt stored there is dropped."""
  if not path:
    raise ValueError('No base checkpoint: set INITIAL_CHECKPOINT_PATH to a T5X checkpoint or a '
                     'Hugging Face T5 1.1 directory.')
  try:
    config, params = load_params(path, config)
  except CheckpointError as e:
    raise CheckpointError(f'Cannot load the base checkpoint (INITIAL_CHECKPOINT_PATH): {e}') from e
  frozen, _ = split_params(params)
  return config, frozen


def load_embedding(path: str) -> tuple[np.ndarray, str]:
  """(the token embedding table [vocab, d_model], where it was read) of a T5X checkpoint or a
  Hugging Face directory (T5, or a decoder-only model: hf_decoder.is_decoder_dir), reading only
  that array."""
  if detect_format(path) == 't5x':
    flat, _, ckpt_dir = t5x.read_params(path, keys=[EMBEDDING])
    value, source = flat[EMBEDDING], f'{storage.join(ckpt_dir, t5x.CHECKPOINT_FILE)} [{EMBEDDING}]'
  elif hf_decoder.is_decoder_dir(path):
    value, source = hf_decoder.read_embedding(path)
  else:
    value, source = hf.read_embedding(path)
  value = np.asarray(value)
  if value.ndim != 2:
    raise CheckpointError(f'{source}: the token embedding is a 2-D [vocab, d_model] table; this '
                          f'one has shape {value.shape}.')
  return value, source


def read_step(path: str) -> int:
  """The training step stored in a T5X checkpoint (1,100,000 for lm100k); 0 for other formats."""
  if detect_format(path) != 't5x':
    return 0
  return t5x.read_step(path)


def save_t5x(directory: str, params: Mapping[str, Any], step: int,
             overwrite: bool = False) -> str:
  """Writes `directory/checkpoint_<step>` in T5X's legacy format (a local directory or a gs://
  URL); returns its path."""
  return t5x.save_checkpoint(directory, params, step, overwrite=overwrite)


def save_hf(directory: str, config: t5.T5Config, params: Mapping[str, Any],
            max_shard_bytes: int = 10 * 1024**3) -> str:
  """Writes a Hugging Face T5 directory (`config.json` + safetensors); returns its path."""
  check_params(flatten(params), config, directory,
               ignore=_EXTRA_PREFIXES)
  return hf.save(directory, config, params, max_shard_bytes=max_shard_bytes)


@storage_errors
def convert(source: str, output: str, to: str) -> str:
  """`prompt-tuning convert`: T5X <-> Hugging Face safetensors, each side a local path or a URL;
  returns what it wrote. The output's bucket is checked before the source is read."""
  if to not in ('t5x', 'hf'):
    raise ValueError(f"Unknown target format {to!r}; choose 't5x' or 'hf'.")
  storage.check_writable(output, 'output')
  config, params = load_params(source)
  if to == 'hf':
    return save_hf(output, config, params)
  return save_t5x(output, params, read_step(source))
