"""Prompt initializers: where a prompt's first values come from.

Each factory returns `init(rng, shape, dtype=float32) -> [P, D]`, the signature flax's
`self.param` calls, so any of them can serve as `PromptParameter`'s. Work that can fail
(tokenizing, reading files) happens in the factory, so errors surface before training.
`initializer_by_name` is what gin configures (gin/prompts/*.gin).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Literal, Optional, Sequence, get_args

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts.files import load_prompt_file

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


InitializerName = Literal['random_uniform', 'sampled_vocab', 'class_labels', 'from_string',
                          'from_file']
INITIALIZERS: tuple[str, ...] = get_args(InitializerName)
FallbackName = Literal['sampled_vocab', 'random_uniform']


def initializer_by_name(name: InitializerName, embedding_VxD: Any, vocab: Any = None, *,
                        labels: Optional[Sequence[Any]] = None, text: Any = None,
                        path: Optional[str] = None, variable: Optional[str] = None,
                        scale: float = 0.5, population: int = 5000,
                        fallback: FallbackName = 'sampled_vocab') -> Initializer:
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
