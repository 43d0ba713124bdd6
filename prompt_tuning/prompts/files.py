"""Prompt files: reading and writing every format a prompt travels in.

  numpy    a float32 [P, D] .npy (also the extension-less files of a T5X numpy_checkpoints/
           directory, which is how the paper's released prompts ship)
  PEFT     a prompt-tuning adapter: adapter_config.json + adapter_model.safetensors
  T5X      one variable of a T5X checkpoint (default encoder/prompt/prompt/prompt)

`load_prompt_file` detects the format; `write_npy`, `write_peft` and `write_t5x` write each one
atomically. Paths may be local or URLs (gs://bucket/...): files are read and written through
prompt_tuning.storage, never as local paths. Where MODEL_DIR keeps its prompts is model_dir.py's
business; exporting a run's prompt is export.py's.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any, Optional

import numpy as np
from safetensors import SafetensorError, safe_open

from prompt_tuning import storage
from prompt_tuning.storage import save_atomic, write_atomic
from prompt_tuning.models.prompt import PROMPT_VARIABLE, merge_params, prompt_tree

DEFAULT_VARIABLE = PROMPT_VARIABLE
NUMPY_MAGIC = b'\x93NUMPY'
PEFT_CONFIG = 'adapter_config.json'
PEFT_WEIGHTS = 'adapter_model.safetensors'
PEFT_TENSOR = 'prompt_embeddings'
_ACCEPTED = ('a numpy .npy file (also the extension-less files of a T5X numpy_checkpoints/ '
             'directory), a T5X checkpoint (checkpoint_<step>/, its checkpoint file, or a model '
             'directory) read at `variable`, or a PEFT prompt-tuning adapter (a directory with '
             f'{PEFT_CONFIG} and {PEFT_WEIGHTS}, or the .safetensors file)')


# ----------------------------------------------------------------------------------------------
# Reading.


def load_prompt_file(path: Any, variable: Optional[str] = None,
                     allow_table: bool = False) -> np.ndarray:
  """A [P, D] float32 prompt from a numpy file, a T5X checkpoint or a PEFT adapter; with
  `allow_table` also a table of prompts [K, P, D] (a multi-task run's numpy files).

  `variable` is the parameter read from a T5X checkpoint (default 'encoder/prompt/prompt/prompt';
  'target/...' and the dotted names of numpy_checkpoints/ files are accepted); other formats hold
  a single prompt and ignore it.
  """
  path = os.fspath(path)
  if storage.is_remote(path):
    prompt, source = _load_remote(path, variable)
    return _check_prompt(prompt, source, allow_table)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such prompt file or directory.')
  if os.path.isfile(path) and _starts_with(path, NUMPY_MAGIC):
    prompt, source = _load_numpy(path), path
  elif os.path.isfile(path) and path.endswith('.npy'):
    raise ValueError(f'{path}: named .npy but is not a numpy file (no numpy header).')
  elif (peft := _peft_files(path)) is not None:
    prompt, source = _load_peft(*peft), peft[0]
  elif _is_t5x(path):
    prompt, source = _load_t5x(path, variable)
  else:
    raise ValueError(f'{path}: not a prompt file this loader knows. Accepted: {_ACCEPTED}.')
  return _check_prompt(prompt, source, allow_table)


def _load_remote(path: str, variable: Optional[str]) -> tuple[np.ndarray, str]:
  """The prompt at a URL (gs://...), in the same formats as a local path; read through
  storage, never as a local path. A missing object or bucket, or a scheme without a backend,
  is one line naming the URL."""
  if not storage.exists(path):  # raises StorageError for a scheme without a backend
    storage.check_writable(path, 'prompt file')  # names a missing bucket (writes nothing)
    raise FileNotFoundError(f'{path}: no such prompt file or directory.')
  is_file = storage.isfile(path)
  if is_file and _starts_with(path, NUMPY_MAGIC):
    return _load_numpy(path), path
  if is_file and path.endswith('.npy'):
    raise ValueError(f'{path}: named .npy but is not a numpy file (no numpy header).')
  if (peft := _peft_files(path)) is not None:
    return _load_peft(*peft), peft[0]
  if _is_t5x(path):
    return _load_t5x(path, variable)
  raise ValueError(f'{path}: not a prompt file this loader knows. Accepted: {_ACCEPTED}.')


def _is_t5x(path: str) -> bool:
  from prompt_tuning.checkpoints import t5x  # Lazy: pulls in tensorstore.
  return t5x.is_t5x_checkpoint(path)


def _starts_with(path: str, magic: bytes) -> bool:
  with storage.open_file(path, 'rb') as f:
    return f.read(len(magic)) == magic


def _load_numpy(path: str) -> np.ndarray:
  try:
    if storage.is_remote(path):
      return np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
    return np.load(path, allow_pickle=False)
  except storage.StorageError:
    raise
  except Exception as e:  # Truncated data and object arrays both land here.
    raise ValueError(f'{path}: cannot read the numpy array ({e}).') from e


def _check_prompt(prompt: np.ndarray, source: str, allow_table: bool = False) -> np.ndarray:
  if allow_table and prompt.ndim == 3:
    pass  # a table [K, P, D]
  elif prompt.ndim != 2:
    raise ValueError(f'{source}: a prompt is a 2-D [P, D] array; this one has shape '
                     f'{prompt.shape}.')
  if not (prompt.dtype.kind == 'f' or prompt.dtype.name == 'bfloat16'):
    raise ValueError(f'{source}: a prompt holds floats; this one is {prompt.dtype} with shape '
                     f'{prompt.shape}.')
  prompt = prompt.astype(np.float32)
  if not np.all(np.isfinite(prompt)):
    raise ValueError(f'{source}: the prompt of shape {prompt.shape} has non-finite values.')
  return prompt


def _load_t5x(path: str, variable: Optional[str]) -> tuple[np.ndarray, str]:
  from prompt_tuning.checkpoints import t5x
  key = variable or DEFAULT_VARIABLE
  if '/' not in key:
    key = key.replace('.', '/')  # numpy_checkpoints/ file names: 'encoder.prompt.prompt.prompt'.
  key = key[len('target/'):] if key.startswith('target/') else key
  flat, _, ckpt_dir = t5x.read_params(path, keys=[key])
  source = f'{storage.join(ckpt_dir, t5x.CHECKPOINT_FILE)} [{key}]'
  if key not in flat:
    raise ValueError(f'{source}: names a subtree ({", ".join(sorted(flat)[:4])}, ...), not one '
                     f'array; pass the full variable path.')
  return flat[key], source


def _peft_files(path: str) -> Optional[tuple[str, Optional[str]]]:
  """(weights, config or None) when `path` is a PEFT adapter directory or its .safetensors."""
  if storage.isdir(path):
    config, weights = storage.join(path, PEFT_CONFIG), storage.join(path, PEFT_WEIGHTS)
    if not storage.isfile(config) and not storage.isfile(weights):
      return None
    if not storage.isfile(weights):
      raise ValueError(f'{path}: a PEFT adapter without {PEFT_WEIGHTS} (only safetensors adapters '
                       f'are read; adapter_model.bin is a torch pickle).')
    return weights, config if storage.isfile(config) else None
  if path.endswith('.safetensors'):
    config = storage.join(storage.dirname(storage.absolute(path)), PEFT_CONFIG)
    return path, config if storage.isfile(config) else None
  return None


def _load_peft(weights: str, config_file: Optional[str]) -> np.ndarray:
  prompt = _read_safetensor(weights, PEFT_TENSOR)
  if prompt.ndim != 2:
    return prompt  # _check_prompt names the shape.
  if config_file is None:
    logging.warning('%s: no %s beside it; assuming an encoder-only prompt '
                    '(num_transformer_submodules=1).', weights, PEFT_CONFIG)
    return prompt
  try:
    config = json.loads(storage.read_text(config_file))
  except (OSError, ValueError) as e:
    raise ValueError(f'{config_file}: cannot read the PEFT adapter config ({e}).') from e
  if config.get('peft_type') != 'PROMPT_TUNING':
    raise ValueError(f'{config_file}: peft_type is {config.get("peft_type")!r}; only '
                     f'PROMPT_TUNING adapters hold a prompt for the encoder input.')
  submodules = config.get('num_transformer_submodules')
  if submodules is None:  # PEFT's own default when unset: two for seq2seq, else one.
    submodules = 2 if config.get('task_type') == 'SEQ_2_SEQ_LM' else 1
  tokens = config.get('num_virtual_tokens')
  if int(submodules) > 1 and tokens is not None:
    # PEFT's seq2seq prompt tuning prepends only the first P rows (to the encoder input); the
    # rest is never used, so the encoder prompt is exactly what PEFT runs.
    logging.info('%s: num_transformer_submodules is %s; using the first %s rows of %s %s, '
                 'the encoder prompt PEFT applies.', config_file, submodules, tokens,
                 PEFT_TENSOR, prompt.shape)
    prompt = prompt[:int(tokens)]
  tokens = config.get('num_virtual_tokens')
  if tokens is not None and prompt.shape[0] != int(tokens):
    raise ValueError(f'{weights}: {PEFT_TENSOR} has shape {prompt.shape} but {config_file} says '
                     f'num_virtual_tokens={tokens}.')
  return prompt


def _read_safetensor(file: str, name: str) -> np.ndarray:
  """One float tensor of a safetensors file, as float32."""
  try:
    if storage.is_remote(file):  # read whole: safetensors opens local files only
      from safetensors.numpy import load
      tensors = load(storage.read_bytes(file))
      if name not in tensors:
        raise ValueError(f'{file}: not a PEFT prompt-tuning adapter: no tensor {name!r} '
                         f'(it has {sorted(tensors)[:8]}).')
      tensor = tensors[name]
    else:
      with safe_open(file, framework='numpy') as f:
        if name not in f.keys():
          raise ValueError(f'{file}: not a PEFT prompt-tuning adapter: no tensor {name!r} '
                           f'(it has {sorted(f.keys())[:8]}).')
        tensor = f.get_tensor(name)
  except storage.StorageError:
    raise
  except (SafetensorError, OSError) as e:
    raise ValueError(f'{file}: cannot read as safetensors ({e}).') from e
  if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype.name != 'bfloat16':
    raise ValueError(f'{file}: tensor {name!r} has dtype {tensor.dtype}, not a float type.')
  return tensor.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Writing.


def npy_bytes(prompt_PxD: Any) -> bytes:
  """The bytes `write_npy` writes: float32 .npy content."""
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(prompt_PxD, np.float32))
  return buffer.getvalue()


def write_npy(path: str, prompt_PxD: Any) -> str:
  """float32 .npy content at `path` (extension-less paths too, as T5X writes them; a gs:// URL:
  one object write), whole or not at all."""
  if storage.is_remote(path):
    return write_atomic(path, npy_bytes(prompt_PxD))
  value = np.asarray(prompt_PxD, np.float32)

  def write(tmp):
    with open(tmp, 'wb') as f:
      np.save(f, value)
  return save_atomic(path, write)


def write_peft(directory: str, prompt_PxD: Any, model_config: Any,
               base_model_name_or_path: Optional[str] = None,
               placement: str = 'prefix') -> str:
  """A PEFT prompt-tuning adapter: `PeftModel.from_pretrained(model, directory)` loads it.

  For T5 (`model_config` a T5Config): SEQ_2_SEQ_LM with num_transformer_submodules 1, the prompt
  prepended to the encoder only, as here. For a decoder-only model (a DecoderConfig): CAUSAL_LM,
  which PEFT prepends before every token; a prompt trained after BOS (`placement` 'after_bos')
  would run in another place, so it is refused (export it as .npy).
  """
  from safetensors.numpy import save_file
  prompt_PxD = np.ascontiguousarray(np.asarray(prompt_PxD, np.float32))
  length, width = prompt_PxD.shape
  if width != model_config.d_model:
    raise ValueError(f'Prompt width {width} does not match the model d_model '
                     f'{model_config.d_model}.')
  causal = hasattr(model_config, 'num_kv_heads')  # a models.decoder_config.DecoderConfig
  if causal and placement != 'prefix':
    raise ValueError(f"PEFT places a CAUSAL_LM prompt before every token ('prefix'); this "
                     f"prompt was trained at {placement!r}, which PEFT cannot place. Export it as "
                     f".npy instead.")
  storage.makedirs(directory)
  save_atomic(storage.join(directory, PEFT_WEIGHTS), lambda tmp: save_file(
      {PEFT_TENSOR: prompt_PxD}, tmp, metadata={'format': 'pt'}))
  adapter_config = {
      'peft_type': 'PROMPT_TUNING', 'task_type': 'CAUSAL_LM' if causal else 'SEQ_2_SEQ_LM',
      'num_virtual_tokens': length, 'token_dim': width, 'num_transformer_submodules': 1,
      'num_attention_heads': model_config.num_heads,
      'num_layers': model_config.num_layers if causal else model_config.num_encoder_layers,
      'prompt_tuning_init': 'RANDOM', 'prompt_tuning_init_text': None,
      'tokenizer_name_or_path': None, 'base_model_name_or_path': base_model_name_or_path,
      'inference_mode': True, 'revision': None,
  }
  write_atomic(storage.join(directory, PEFT_CONFIG), json.dumps(adapter_config, indent=2))
  return directory


def write_t5x(directory: str, frozen_params: dict, prompt_PxD: Any, step: int,
              overwrite: bool = False) -> str:
  """The base model with the prompt at encoder/prompt/prompt/prompt, in T5X's format."""
  from prompt_tuning import checkpoints  # Lazy: pulls in tensorstore.
  params = merge_params(frozen_params, prompt_tree(np.asarray(prompt_PxD, np.float32)))
  return checkpoints.save_t5x(directory, params, step, overwrite=overwrite)
