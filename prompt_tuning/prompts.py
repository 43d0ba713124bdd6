"""The prompt: a learned [P, D] array that joins the encoder's embedded inputs.

Where it enters the model: `Encoder.__call__` in models/t5.py calls `PromptConfig.module(...)`
right after the token embedding. That module owns the only trainable parameter,
`encoder/prompt/prompt/prompt` (float32, logical axes ('prompt', 'prompt_embed') so it stays
replicated), and returns the combined embeddings plus which positions are real.

Placements:
  prefix  [prompt, x_1 .. x_n, pad]            the paper's
  suffix  [x_1 .. x_{n-1}, prompt, EOS, pad]    prompt just before the final (EOS) token

Relative positions simply count the combined sequence, so a prefix prompt sits at 0..P-1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

PROMPT_AXES = ('prompt', 'prompt_embed')
PROMPT_PATH = ('encoder', 'prompt', 'prompt', 'prompt')
PLACEMENTS = ('prefix', 'suffix')
PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How long the prompt is and where it goes; passed to `EncoderDecoder(config, prompt=...)`."""
  length: int = 100
  placement: str = 'prefix'

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f'Prompt length (PROMPT_LENGTH) must be at least 1, got {self.length}.')
    if self.placement not in PLACEMENTS:
      raise ValueError(f'Unknown prompt placement {self.placement!r}; choose one of {PLACEMENTS}.')

  def module(self, dtype: Any, name: str) -> 'Prompt':
    return Prompt(self, dtype=dtype, name=name)

  def mask(self, tokens_BxL: jax.Array) -> jax.Array:
    """Which positions of the combined sequence [B, L + P] are real (prompt positions always)."""
    valid_BxL = tokens_BxL > PAD_ID
    batch, length = tokens_BxL.shape
    if self.placement == 'prefix':
      return jnp.concatenate([jnp.ones((batch, self.length), bool), valid_BxL], axis=1)
    n_B = jnp.sum(valid_BxL, axis=1)
    return jnp.arange(length + self.length)[None, :] < (n_B + self.length)[:, None]


class PromptParameter(nn.Module):
  """Holds the prompt variable itself; stored float32 whatever the activation dtype.

  Its flax initializer only matters for `model.init`; training sets the value from a
  `PromptConfig`-independent initializer (below) that may need the embedding table.
  """
  length: int

  @nn.compact
  def __call__(self, features: int) -> jax.Array:
    init = lambda rng, shape, dtype: jax.random.uniform(rng, shape, dtype, -0.5, 0.5)
    return self.param('prompt', nn.with_logical_partitioning(init, PROMPT_AXES),
                      (self.length, features), jnp.float32)


class Prompt(nn.Module):
  """Combines the prompt with embedded inputs according to the placement."""
  config: PromptConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, embedded_BxLxD: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    prompt_PxD = PromptParameter(self.config.length, name='prompt')(embedded_BxLxD.shape[-1])
    prompt_PxD = prompt_PxD.astype(self.dtype)
    if self.config.placement == 'prefix':
      combined = prefix_prompt(prompt_PxD, embedded_BxLxD)
    else:
      combined = suffix_prompt(prompt_PxD, tokens_BxL, embedded_BxLxD)
    return combined, self.config.mask(tokens_BxL)


def prefix_prompt(prompt_PxD: jax.Array, embedded_BxLxD: jax.Array) -> jax.Array:
  batch = embedded_BxLxD.shape[0]
  prompt_BxPxD = jnp.broadcast_to(prompt_PxD[None], (batch,) + prompt_PxD.shape)
  return jnp.concatenate([prompt_BxPxD, embedded_BxLxD.astype(prompt_PxD.dtype)], axis=1)


def suffix_prompt(prompt_PxD: jax.Array, tokens_BxL: jax.Array,
                  embedded_BxLxD: jax.Array) -> jax.Array:
  """Inserts the prompt before each row's last real token (its EOS)."""
  p = prompt_PxD.shape[0]
  batch, length, _ = embedded_BxLxD.shape
  n_B = jnp.sum(tokens_BxL > PAD_ID, axis=1)
  insert_Bx1 = jnp.maximum(n_B - 1, 0)[:, None]
  j_1xM = jnp.arange(length + p)[None, :]
  in_prompt_BxM = (j_1xM >= insert_Bx1) & (j_1xM < insert_Bx1 + p)
  source_BxM = jnp.where(j_1xM < insert_Bx1, j_1xM, j_1xM - p)
  source_BxM = jnp.clip(source_BxM, 0, length - 1)
  from_inputs = jnp.take_along_axis(embedded_BxLxD.astype(prompt_PxD.dtype),
                                    source_BxM[..., None], axis=1)
  from_prompt = prompt_PxD[jnp.clip(j_1xM - insert_Bx1, 0, p - 1)]
  return jnp.where(in_prompt_BxM[..., None], from_prompt, from_inputs)


# ----------------------------------------------------------------------------------------------
# Trainable/frozen split. The prompt is the only trainable subtree.


def split_params(params: dict) -> tuple[dict, dict]:
  """(frozen, trainable): trainable is {'encoder': {'prompt': ...}}; frozen is everything else."""
  encoder = dict(params.get('encoder', {}))
  prompt = encoder.pop('prompt', None)
  frozen = {**params, 'encoder': encoder}
  trainable = {'encoder': {'prompt': prompt}} if prompt is not None else {}
  return frozen, trainable


def merge_params(frozen: dict, trainable: dict) -> dict:
  """Inverse of `split_params`."""
  if not trainable:
    return frozen
  return {**frozen, 'encoder': {**frozen['encoder'], **trainable['encoder']}}


def prompt_tree(prompt_PxD: Any) -> dict:
  """The trainable tree holding a prompt array."""
  return {'encoder': {'prompt': {'prompt': {'prompt': prompt_PxD}}}}


def get_prompt(trainable: dict) -> Any:
  return trainable['encoder']['prompt']['prompt']['prompt']


# ----------------------------------------------------------------------------------------------
# Initializers. Each factory returns `init(rng, shape, dtype=float32) -> [P, D]`: the signature
# flax's `self.param` calls, so any of them can serve as `PromptParameter.init`. Work that can
# fail (tokenizing, reading files) happens in the factory, so errors surface before training.

DEFAULT_VARIABLE = '/'.join(PROMPT_PATH)
NUMPY_MAGIC = b'\x93NUMPY'
PEFT_CONFIG = 'adapter_config.json'
PEFT_WEIGHTS = 'adapter_model.safetensors'
PEFT_TENSOR = 'prompt_embeddings'
_ACCEPTED = ('a numpy .npy file (also the extension-less files of a T5X numpy_checkpoints/ '
             'directory), a T5X checkpoint (checkpoint_<step>/, its checkpoint file, or a model '
             'directory) read at `variable`, or a PEFT prompt-tuning adapter (a directory with '
             f'{PEFT_CONFIG} and {PEFT_WEIGHTS}, or the .safetensors file)')

Initializer = Callable[..., jax.Array]


def _prompt_shape(shape: Sequence[int], who: str, width: Optional[int] = None) -> tuple[int, int]:
  if len(shape) != 2:
    raise ValueError(f'{who}: a prompt is [P, D]; asked for shape {tuple(shape)}.')
  p, d = int(shape[0]), int(shape[1])
  if width is not None and d != width:
    raise ValueError(f'{who}: the embedding table is [V, {width}] but the prompt asked for is '
                     f'{(p, d)}; their widths must match.')
  return p, d


def _table(embedding_VxD: Any, who: str) -> np.ndarray:
  # Host copy in its stored dtype; rows become float32 only once picked (Base's table: 98 MB).
  table_VxD = np.asarray(jax.device_get(embedding_VxD))
  if table_VxD.ndim != 2:
    raise ValueError(f'{who}: the embedding table must be [V, D], got shape {table_VxD.shape}.')
  return table_VxD


def _token_ids(item: Any, vocab: Any, who: str) -> list[int]:
  if isinstance(item, str):
    if vocab is None:
      raise ValueError(f'{who}: {item!r} is text; pass vocab= (e.g. SentencePieceVocab) to '
                       f'tokenize it, or give token ids.')
    return list(vocab.encode(item))
  if isinstance(item, (int, np.integer)):
    return [int(item)]
  return [int(i) for i in np.asarray(item).reshape(-1)]


def _embed(table_VxD: np.ndarray, ids: list[int], item: Any, who: str) -> np.ndarray:
  bad = [i for i in ids if not 0 <= i < table_VxD.shape[0]]
  if bad:
    raise ValueError(f'{who}: {item!r} has token ids {bad[:5]} outside the embedding table '
                     f'[0, {table_VxD.shape[0]}).')
  return table_VxD[ids].astype(np.float32)


def _with_fallback(rows_KxD: np.ndarray, fallback: Initializer, rng: jax.Array, p: int,
                   d: int, dtype: Any) -> jax.Array:
  head_KxD = jnp.asarray(rows_KxD[:p], dtype)
  if p <= rows_KxD.shape[0]:
    return head_KxD
  rest = jnp.asarray(fallback(rng, (p - rows_KxD.shape[0], d), dtype), dtype)
  return jnp.concatenate([head_KxD, rest], axis=0)


def random_uniform(scale: float = 0.5) -> Initializer:
  """U[-scale, scale], the paper's random initialisation."""
  def init(rng, shape, dtype=jnp.float32):
    _prompt_shape(shape, 'random_uniform')
    return jax.random.uniform(rng, tuple(shape), dtype, -scale, scale)
  return init


def sampled_vocab(embedding_VxD: Any, population: int = 5000) -> Initializer:
  """Rows drawn from the first `population` vocabulary embeddings (SentencePiece orders pieces
  by frequency, so these are the common tokens), without replacement while P <= population."""
  table_VxD = _table(embedding_VxD, 'sampled_vocab')
  if population < 1:
    raise ValueError(f'sampled_vocab: population must be >= 1, got {population}.')
  n = min(int(population), table_VxD.shape[0])
  rows_NxD = table_VxD[:n].astype(np.float32)

  def init(rng, shape, dtype=jnp.float32):
    p, _ = _prompt_shape(shape, 'sampled_vocab', rows_NxD.shape[1])
    if p > n:
      logging.info('sampled_vocab: prompt length %d > population %d; sampling with replacement.',
                   p, n)
    idx_P = jax.random.choice(rng, n, (p,), replace=p > n)
    return jnp.take(jnp.asarray(rows_NxD), idx_P, axis=0).astype(dtype)
  return init


def class_labels(embedding_VxD: Any, labels: Sequence[Any], vocab: Any = None,
                 fallback: Optional[Initializer] = None) -> Initializer:
  """Row i = mean embedding of label i's pieces; rows past the labels come from `fallback`
  (default: `sampled_vocab(embedding, 5000)`, as in the paper).

  `labels`: strings (tokenized with `vocab.encode`) or token-id lists (or single ids).
  """
  if isinstance(labels, str):
    raise ValueError(f'class_labels: labels must be a sequence of labels, got the single string '
                     f'{labels!r}; write [{labels!r}].')
  table_VxD = _table(embedding_VxD, 'class_labels')
  if len(labels) == 0:
    raise ValueError('class_labels: no labels given.')
  means = []
  for label in labels:
    ids = _token_ids(label, vocab, 'class_labels')
    if not ids:
      raise ValueError(f'class_labels: label {label!r} tokenizes to no pieces.')
    means.append(_embed(table_VxD, ids, label, 'class_labels').mean(axis=0))
  means_LxD = np.stack(means)
  fallback = fallback or sampled_vocab(table_VxD, 5000)

  def init(rng, shape, dtype=jnp.float32):
    p, d = _prompt_shape(shape, 'class_labels', table_VxD.shape[1])
    if len(labels) > p:
      logging.warning('class_labels: %d labels but the prompt has %d positions; using the first '
                      '%d labels.', len(labels), p, p)
    return _with_fallback(means_LxD, fallback, rng, p, d, dtype)
  return init


def from_string(embedding_VxD: Any, text_or_ids: Any, vocab: Any = None,
                fallback: Optional[Initializer] = None) -> Initializer:
  """Rows 0..k-1 = the embeddings of the text's k pieces; the rest from `fallback`
  (default `sampled_vocab(embedding, 5000)`)."""
  table_VxD = _table(embedding_VxD, 'from_string')
  ids = _token_ids(text_or_ids, vocab, 'from_string')
  if not ids:
    raise ValueError(f'from_string: {text_or_ids!r} tokenizes to no pieces.')
  rows_KxD = _embed(table_VxD, ids, text_or_ids, 'from_string')
  fallback = fallback or sampled_vocab(table_VxD, 5000)

  def init(rng, shape, dtype=jnp.float32):
    p, d = _prompt_shape(shape, 'from_string', table_VxD.shape[1])
    if len(ids) > p:
      logging.warning('from_string: %d pieces but the prompt has %d positions; truncating.',
                      len(ids), p)
    return _with_fallback(rows_KxD, fallback, rng, p, d, dtype)
  return init


def from_array(array: Any, source: Optional[str] = None) -> Initializer:
  """Initializes with `array` itself; `source` (e.g. the file it came from) names it in errors."""
  array_PxD = np.asarray(jax.device_get(array)).astype(np.float32)
  name = source or 'from_array'

  def init(rng, shape, dtype=jnp.float32):
    del rng
    if array_PxD.shape != tuple(shape):
      raise ValueError(f'{name}: the prompt array has shape {array_PxD.shape} but the model '
                       f'needs {tuple(shape)} (prompt length, d_model).')
    return jnp.asarray(array_PxD, dtype)
  return init


def from_file(path: Any, variable: Optional[str] = None) -> Initializer:
  """`from_array(load_prompt_file(path, variable))`; the file is read now, not at init."""
  return from_array(load_prompt_file(path, variable), source=os.fspath(path))


# ----------------------------------------------------------------------------------------------
# Prompt files.


def load_prompt_file(path: Any, variable: Optional[str] = None) -> np.ndarray:
  """A [P, D] float32 prompt from a numpy file, a T5X checkpoint or a PEFT adapter.

  `variable` is the parameter read from a T5X checkpoint (default 'encoder/prompt/prompt/prompt';
  'target/...' and the dotted names of numpy_checkpoints/ files are accepted); other formats hold
  a single prompt and ignore it.
  """
  path = os.fspath(path)
  remote = path.startswith('gs://')
  if not remote and not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such prompt file or directory.')
  if not remote and os.path.isfile(path) and _starts_with(path, NUMPY_MAGIC):
    prompt, source = _load_numpy(path), path
  elif not remote and os.path.isfile(path) and path.endswith('.npy'):
    raise ValueError(f'{path}: named .npy but is not a numpy file (no numpy header).')
  elif not remote and (peft := _peft_files(path)) is not None:
    prompt, source = _load_peft(*peft), peft[0]
  elif remote or _is_t5x(path):
    prompt, source = _load_t5x(path, variable)
  else:
    raise ValueError(f'{path}: not a prompt file this loader knows. Accepted: {_ACCEPTED}.')
  return _check_prompt(prompt, source)


def _is_t5x(path: str) -> bool:
  from prompt_tuning.checkpoints import t5x  # Lazy: pulls in tensorstore.
  return t5x.is_t5x_checkpoint(path)


def _starts_with(path: str, magic: bytes) -> bool:
  with open(path, 'rb') as f:
    return f.read(len(magic)) == magic


def _load_numpy(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except Exception as e:  # Truncated data and object arrays both land here.
    raise ValueError(f'{path}: cannot read the numpy array ({e}).') from e


def _check_prompt(prompt: np.ndarray, source: str) -> np.ndarray:
  if prompt.ndim != 2:
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
  source = f'{os.path.join(ckpt_dir, t5x.CHECKPOINT_FILE)} [{key}]'
  if key not in flat:
    raise ValueError(f'{source}: names a subtree ({", ".join(sorted(flat)[:4])}, ...), not one '
                     f'array; pass the full variable path.')
  return flat[key], source


def _peft_files(path: str) -> Optional[tuple[str, Optional[str]]]:
  """(weights, config or None) when `path` is a PEFT adapter directory or its .safetensors."""
  if os.path.isdir(path):
    config, weights = os.path.join(path, PEFT_CONFIG), os.path.join(path, PEFT_WEIGHTS)
    if not os.path.isfile(config) and not os.path.isfile(weights):
      return None
    if not os.path.isfile(weights):
      raise ValueError(f'{path}: a PEFT adapter without {PEFT_WEIGHTS} (only safetensors adapters '
                       f'are read; adapter_model.bin is a torch pickle).')
    return weights, config if os.path.isfile(config) else None
  if path.endswith('.safetensors'):
    config = os.path.join(os.path.dirname(os.path.abspath(path)), PEFT_CONFIG)
    return path, config if os.path.isfile(config) else None
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
    with open(config_file) as f:
      config = json.load(f)
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
    with safe_open(file, framework='numpy') as f:
      if name not in f.keys():
        raise ValueError(f'{file}: not a PEFT prompt-tuning adapter: no tensor {name!r} '
                         f'(it has {sorted(f.keys())[:8]}).')
      tensor = f.get_tensor(name)
  except (SafetensorError, OSError) as e:
    raise ValueError(f'{file}: cannot read as safetensors ({e}).') from e
  if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype.name != 'bfloat16':
    raise ValueError(f'{file}: tensor {name!r} has dtype {tensor.dtype}, not a float type.')
  return tensor.astype(np.float32)


INITIALIZERS = ('random_uniform', 'sampled_vocab', 'class_labels', 'from_string', 'from_file')


def initializer_by_name(name: str, embedding_VxD: Any, vocab: Any = None, *,
                        labels: Optional[Sequence[Any]] = None, text: Any = None,
                        path: Optional[str] = None, variable: Optional[str] = None,
                        scale: float = 0.5, population: int = 5000,
                        fallback: str = 'sampled_vocab') -> Initializer:
  """Selects an initializer by name; what gin configures (gin/prompts/*.gin).

  `embedding_VxD` and `vocab` come from the run (the frozen model and the task's vocabulary).
  """
  def make_fallback():
    if fallback == 'sampled_vocab':
      return sampled_vocab(embedding_VxD, population)
    if fallback == 'random_uniform':
      return random_uniform(scale)
    raise ValueError(f"Unknown fallback initializer {fallback!r}; choose 'sampled_vocab' or "
                     f"'random_uniform'.")

  if name == 'random_uniform':
    return random_uniform(scale)
  if name == 'sampled_vocab':
    return sampled_vocab(embedding_VxD, population)
  if name == 'class_labels':
    if not labels:
      raise ValueError('class_labels initialization needs labels (set CLASS_LABELS).')
    return class_labels(embedding_VxD, labels, vocab=vocab, fallback=make_fallback())
  if name == 'from_string':
    if text is None:
      raise ValueError('from_string initialization needs text.')
    return from_string(embedding_VxD, text, vocab=vocab, fallback=make_fallback())
  if name == 'from_file':
    if not path:
      raise ValueError('from_file initialization needs a path (set PROMPT_FILE).')
    return from_file(path, variable)
  raise ValueError(f'Unknown prompt initializer {name!r}; choose one of {INITIALIZERS}.')
