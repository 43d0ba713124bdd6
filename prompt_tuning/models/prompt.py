"""The prompt: a learned [P, D] array (or a table of K of them) joined to the encoder's inputs.

Owns the prompt module, its placements and mask, where the prompt sits in the parameter tree
(`PROMPT_PATH`) and the trainable/frozen split of that tree. Initial values: prompt_init.py;
files: prompt_files.py.

Where it enters the model: `Encoder.__call__` in models/t5.py calls `PromptConfig.module(...)`
right after the token embedding. That module owns the only trainable parameter,
`encoder/prompt/prompt/prompt` (float32, logical axes ('prompt', 'prompt_embed') so it stays
replicated; deep prompts, below, add a second), and returns the combined embeddings;
`PromptConfig.mask` says which are real.

Placements:
  prefix  [prompt, x_1 .. x_n, pad]            the paper's
  suffix  [x_1 .. x_{n-1}, prompt, EOS, pad]    prompt just before the final (EOS) token

  after_bos  decoder-only models only (train/decoder_trainer.py); an encoder refuses it

Relative positions simply count the combined sequence, so a prefix prompt sits at 0..P-1.

A prompt table (`PromptConfig.num_prompts` K > 1): the same parameter path holds [K, P, D]
(logical axes ('prompts', 'prompt', 'prompt_embed'), replicated too), and each row of a batch
picks its prompt by the integer feature `prompt_ids` [B] (a task of a mixture, a member of an
ensemble). Rows never see each other's prompt, so a mixed batch gives what each prompt's rows
give alone. K = 1 is the single prompt exactly: shape [P, D], no `prompt_ids` needed (given,
they must be 0 and change nothing).

Shared + task prompts (`PromptConfig.shared`, a table only; the anchor's multi-task forms): a
second parameter `encoder/prompt/shared/prompt` [P, D] that every task trains, combined with
each row's task prompt by addition ('add': shared + task, length P) or concatenation ('concat':
[shared; task], length 2P). `effective_prompts` gives the combined [K, P', D] table, which is
what checkpoints' numpy files, exports and readers hold: a reader needs no shared parameter.
Deep prompts (`PromptConfig.deep`, opt-in; P-tuning v2 style, NOT the paper's method, which
prompts the input alone): a second trainable parameter `encoder/prompt/deep/prompt` [L-1, P, D]
(L = the encoder's layers; logical axes ('prompt_layers', 'prompt', 'prompt_embed'),
replicated). Layer 0 sees the input prompt as above; before each later layer i the hidden states
at the prompt positions are replaced by deep[i-1] (`replace_prompt_positions`), so every layer
gets prompt values of its own. One prompt only (no table). Decoder-only models take all of
these too (train/decoder_trainer.py, the same paths; models/decoder_only.py places the deep
prompts at its own placements).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Optional, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.data.vocab import token_mask

PROMPT_AXES = ('prompt', 'prompt_embed')
TABLE_AXES = ('prompts',) + PROMPT_AXES  # a table of K prompts [K, P, D]
PROMPT_PATH = ('encoder', 'prompt', 'prompt', 'prompt')
PROMPT_VARIABLE = '/'.join(PROMPT_PATH)  # its name in a T5X checkpoint
SHARED_PATH = ('encoder', 'prompt', 'shared', 'prompt')
DEEP_AXES = ('prompt_layers',) + PROMPT_AXES  # deep prompts [L-1, P, D]
DEEP_PATH = ('encoder', 'prompt', 'deep', 'prompt')
# PLACEMENTS are what an encoder takes; 'after_bos' (after a decoder-only model's first token)
# is accepted for decoder-only models alone.
Placement = Literal['prefix', 'suffix', 'after_bos']
PLACEMENTS: tuple[str, ...] = ('prefix', 'suffix')
DECODER_ONLY_PLACEMENTS: tuple[str, ...] = ('after_bos',)
SharedMode = Optional[Literal['add', 'concat']]
SHARED_MODES = ('add', 'concat')


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How long the prompt is, where it goes and how many prompts the model holds; passed to
  `EncoderDecoder(config, prompt=...)`. num_prompts K > 1 makes the parameter a table [K, P, D],
  selected per row by `prompt_ids`. deep=True adds per-layer prompts [L-1, P, D] (P-tuning v2
  style, not the paper's method; see the module docstring)."""
  length: int = 100
  placement: Placement = 'prefix'
  num_prompts: int = 1
  shared: SharedMode = None  # a table's shared prompt: 'add' or 'concat' (see the module doc)
  deep: bool = False  # per-layer prompts (P-tuning v2 style; see the module doc)

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f'Prompt length (PROMPT_LENGTH) must be at least 1, got {self.length}.')
    if self.placement not in PLACEMENTS + DECODER_ONLY_PLACEMENTS:
      raise ValueError(f'Unknown prompt placement {self.placement!r}; choose one of {PLACEMENTS}.')
    k = self.num_prompts
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f'PromptConfig.num_prompts (the number of prompts K) must be an integer '
                       f'of at least 1, got {k!r}.')
    object.__setattr__(self, 'num_prompts', int(k))  # a plain int (hashed with the model)
    if self.shared is not None and self.shared not in SHARED_MODES:
      raise ValueError(f'PromptConfig.shared (PROMPT_SHARED) = {self.shared!r}: choose None, '
                       f"'add' or 'concat'.")
    if not isinstance(self.deep, (bool, np.bool_)):
      raise ValueError(f'PromptConfig.deep must be True or False, got {self.deep!r}.')
    object.__setattr__(self, 'deep', bool(self.deep))
    if self.deep and self.num_prompts > 1:
      raise ValueError(f'deep prompts take one prompt; num_prompts must be 1 (got '
                       f'num_prompts={self.num_prompts} with deep=True).')

  @property
  def is_table(self) -> bool:
    return self.num_prompts > 1

  @property
  def combined_length(self) -> int:
    """Positions the prompt takes in the encoder: P, or 2P with a concatenated shared prompt."""
    return 2 * self.length if self.shared == 'concat' else self.length

  def shape(self, d_model: int) -> tuple[int, ...]:
    """The parameter's shape: [P, D], or [K, P, D] for a table."""
    return ((self.num_prompts,) if self.is_table else ()) + (self.length, d_model)

  def reader(self) -> 'PromptConfig':
    """The config of a model that reads this one's `effective_prompts` (no shared parameter)."""
    return PromptConfig(self.combined_length, self.placement, self.num_prompts)
  def deep_shape(self, num_layers: int, d_model: int) -> tuple[int, int, int]:
    """The deep parameter's shape [L-1, P, D] for an encoder of `num_layers` layers."""
    if num_layers < 2:
      raise ValueError(f'Deep prompts (PromptConfig.deep) need at least 2 encoder layers (one '
                       f'per layer after the first); this encoder has {num_layers}.')
    return (num_layers - 1, self.length, d_model)

  def module(self, dtype: Any, name: str) -> 'Prompt':
    return Prompt(self, dtype=dtype, name=name)

  def mask(self, tokens_BxL: jax.Array) -> jax.Array:
    """Which positions of the combined sequence [B, L + P] are real (prompt positions always)."""
    valid_BxL = token_mask(tokens_BxL)
    batch, length = tokens_BxL.shape
    p = self.combined_length
    if self.placement == 'prefix':
      return jnp.concatenate([jnp.ones((batch, p), bool), valid_BxL], axis=1)
    n_B = jnp.sum(valid_BxL, axis=1)
    return jnp.arange(length + p)[None, :] < (n_B + p)[:, None]


class PromptParameter(nn.Module):
  """Holds the prompt variable itself ([P, D], or [K, P, D] with num_prompts K > 1); stored
  float32 whatever the activation dtype.

  Its flax initializer only matters for `model.init`; training sets the value from an
  initializer of prompt_init.py, which may need the embedding table.
  """
  length: int
  num_prompts: int = 1

  @nn.compact
  def __call__(self, features: int) -> jax.Array:
    shape: tuple[int, ...] = (self.length, features)
    axes: tuple[str, ...] = PROMPT_AXES
    if self.num_prompts > 1:
      shape, axes = (self.num_prompts,) + shape, TABLE_AXES
    # Stored boxed (LogicallyPartitioned); flax hands the module the unboxed array.
    return cast(jax.Array, self.param('prompt', nn.with_logical_partitioning(_uniform, axes),
                                      shape, jnp.float32))


def _uniform(rng: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  return jax.random.uniform(rng, shape, dtype, -0.5, 0.5)


class DeepPromptParameter(nn.Module):
  """Holds the deep prompts [L-1, P, D] (P-tuning v2 style, not the paper's method): row i-1 is
  what encoder layer i sees at the prompt positions. float32, like the input prompt; training
  sets its value (by default the initial prompt repeated for each layer)."""
  length: int

  @nn.compact
  def __call__(self, num_layers: int, features: int) -> jax.Array:
    shape = (num_layers - 1, self.length, features)
    return cast(jax.Array, self.param('prompt', nn.with_logical_partitioning(_uniform, DEEP_AXES),
                                      shape, jnp.float32))


class Prompt(nn.Module):
  """Combines the prompt with embedded inputs according to the placement.

  With a table (num_prompts K > 1) row b gets prompt `prompt_ids_B[b]`; the ids are required
  then, and ignored with K = 1. Ids are not range-checked here (values cannot be read inside
  jit, where an id outside [0, K) gives a NaN prompt): callers check them on the host with
  `check_prompt_ids`.
  """
  config: PromptConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.prompt = PromptParameter(c.length, c.num_prompts)  # encoder/prompt/prompt/prompt
    if c.deep:
      self.deep = DeepPromptParameter(c.length)  # encoder/prompt/deep/prompt
    if c.shared is not None:
      self.shared = PromptParameter(c.length)  # encoder/prompt/shared/prompt

  def __call__(self, tokens_BxL: jax.Array, embedded_BxLxD: jax.Array,
               prompt_ids_B: Optional[jax.Array] = None) -> jax.Array:
    c = self.config
    if c.placement not in PLACEMENTS:
      raise ValueError(f'Prompt placement {c.placement!r} is for decoder-only models; an '
                       f'encoder takes one of {", ".join(PLACEMENTS)}.')
    width = embedded_BxLxD.shape[-1]
    param = self.prompt(width)
    if c.shared is not None:
      if not c.is_table:
        raise ValueError(f'PromptConfig.shared = {c.shared!r} combines a shared prompt with each '
                         f'prompt of a table: it needs num_prompts >= 2 (PROMPT_PER_TASK).')
      param = combine_shared(self.shared(width), param, c.shared)
    if c.is_table:
      if prompt_ids_B is None:
        raise ValueError(missing_ids_message(c.num_prompts))
      prompt = select_prompts(param, prompt_ids_B).astype(self.dtype)  # [B, P, D]
    else:
      prompt = param.astype(self.dtype)  # [P, D], shared by every row
    if c.placement == 'prefix':
      return prefix_prompt(prompt, embedded_BxLxD)
    return suffix_prompt(prompt, tokens_BxL, embedded_BxLxD)

  def deep_prompts(self, num_layers: int, features: int) -> jax.Array:
    """The deep prompts [L-1, P, D] (float32) of an encoder of `num_layers` layers."""
    c = self.config
    if not c.deep:
      raise ValueError('This prompt has no deep prompts: set PromptConfig.deep = True.')
    c.deep_shape(num_layers, features)  # at least 2 layers
    return self.deep(num_layers, features)


def combine_shared(shared_PxD: Any, table_KxPxD: Any, mode: str) -> Any:
  """Each task's effective prompt [K, P', D]: shared + task ('add') or [shared; task]
  ('concat'). Works on numpy and jax arrays."""
  xp = jnp if isinstance(table_KxPxD, jax.Array) or isinstance(shared_PxD, jax.Array) else np
  if mode == 'add':
    return shared_PxD[None] + table_KxPxD
  shared_KxPxD = xp.broadcast_to(shared_PxD[None], table_KxPxD.shape[:1] + shared_PxD.shape)
  return xp.concatenate([shared_KxPxD, table_KxPxD], axis=1)


def select_prompts(table_KxPxD: jax.Array, prompt_ids_B: jax.Array) -> jax.Array:
  """Each row's prompt [B, P, D] from the table (ids must be in [0, K): see check_prompt_ids)."""
  return jnp.take(table_KxPxD, jnp.asarray(prompt_ids_B, jnp.int32), axis=0)


def prefix_prompt(prompt: jax.Array, embedded_BxLxD: jax.Array) -> jax.Array:
  """[prompt, inputs]; `prompt` is one [P, D] for every row or one per row [B, P, D]."""
  batch = embedded_BxLxD.shape[0]
  prompt_BxPxD = jnp.broadcast_to(prompt, (batch,) + prompt.shape[-2:])
  return jnp.concatenate([prompt_BxPxD, embedded_BxLxD.astype(prompt.dtype)], axis=1)


def suffix_prompt(prompt: jax.Array, tokens_BxL: jax.Array,
                  embedded_BxLxD: jax.Array) -> jax.Array:
  """Inserts the prompt before each row's last real token (its EOS); `prompt` is one [P, D] for
  every row or one per row [B, P, D]."""
  p = prompt.shape[-2]
  length = embedded_BxLxD.shape[1]
  insert_Bx1, j_1xM, in_prompt_BxM = _suffix_slots(tokens_BxL, p)
  source_BxM = jnp.where(j_1xM < insert_Bx1, j_1xM, j_1xM - p)
  source_BxM = jnp.clip(source_BxM, 0, length - 1)
  from_inputs = jnp.take_along_axis(embedded_BxLxD.astype(prompt.dtype),
                                    source_BxM[..., None], axis=1)
  return _put_prompt(prompt, insert_Bx1, j_1xM, in_prompt_BxM, from_inputs)


def _suffix_slots(tokens_BxL: jax.Array, p: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Where a suffix prompt sits in the combined sequence [B, L + P]: (each row's first prompt
  position [B, 1], the positions [1, L + P], which are the prompt's [B, L + P])."""
  n_B = jnp.sum(token_mask(tokens_BxL), axis=1)
  insert_Bx1 = jnp.maximum(n_B - 1, 0)[:, None]
  j_1xM = jnp.arange(tokens_BxL.shape[1] + p)[None, :]
  in_prompt_BxM = (j_1xM >= insert_Bx1) & (j_1xM < insert_Bx1 + p)
  return insert_Bx1, j_1xM, in_prompt_BxM


def _put_prompt(prompt: jax.Array, insert_Bx1: jax.Array, j_1xM: jax.Array,
                in_prompt_BxM: jax.Array, other_BxMxD: jax.Array) -> jax.Array:
  """`prompt` ([P, D] or [B, P, D]) at the suffix slots, `other_BxMxD` everywhere else."""
  p = prompt.shape[-2]
  at_BxM = jnp.clip(j_1xM - insert_Bx1, 0, p - 1)  # which prompt position lands at each place
  if prompt.ndim == 2:
    from_prompt = prompt[at_BxM]
  else:
    from_prompt = jnp.take_along_axis(prompt, at_BxM[..., None], axis=1)
  return jnp.where(in_prompt_BxM[..., None], from_prompt, other_BxMxD)


def replace_prompt_positions(x_BxMxD: jax.Array, tokens_BxL: jax.Array, value_PxD: jax.Array,
                             config: PromptConfig) -> jax.Array:
  """Hidden states [B, L + P, D] with the prompt positions (where `config`'s placement put the
  input prompt: 0..P-1 for prefix, the P positions before each row's EOS for suffix) replaced
  by `value_PxD`, the same for every row; the other positions are untouched. Deep prompts
  (P-tuning v2 style, not the paper's method) use it before each encoder layer after the
  first."""
  p = config.length
  batch, length, _ = x_BxMxD.shape
  if value_PxD.shape[-2] != p or length != tokens_BxL.shape[1] + p:
    raise ValueError(f'replace_prompt_positions: value {value_PxD.shape} and hidden states '
                     f'{x_BxMxD.shape} do not fit a prompt of length {p} joined to inputs of '
                     f'shape {tokens_BxL.shape}.')
  value_PxD = value_PxD.astype(x_BxMxD.dtype)
  if config.placement == 'prefix':
    return prefix_prompt(value_PxD, x_BxMxD[:, p:])
  insert_Bx1, j_1xM, in_prompt_BxM = _suffix_slots(tokens_BxL, p)
  return _put_prompt(value_PxD, insert_Bx1, j_1xM, in_prompt_BxM, x_BxMxD)


# ----------------------------------------------------------------------------------------------
# Host-side checks of `prompt_ids` (inside jit an out-of-range id cannot be refused).


def missing_ids_message(num_prompts: int) -> str:
  return (f'The model holds a table of {num_prompts} prompts (num_prompts={num_prompts}): give '
          f'each row its prompt with the integer feature prompt_ids [batch], values in '
          f'[0, {num_prompts}).')


def host_values(x: Any) -> Optional[np.ndarray]:
  """The values of `x` this host can read (its own shards of a multi-host array), or None
  while tracing."""
  if isinstance(x, jax.core.Tracer):
    return None
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = [np.asarray(s.data).reshape(-1) for s in x.addressable_shards]
    return np.concatenate(shards) if shards else np.zeros((0,), np.int32)
  return np.asarray(x)


def check_prompt_ids(prompt_ids: Any, num_prompts: int, batch: Optional[int] = None) -> None:
  """Clear errors for prompt ids the model cannot use: missing with a table (K > 1), not one
  integer per row, or outside [0, K) (names the first bad id and K). Values under a jit trace
  cannot be read and are not checked."""
  if prompt_ids is None:
    if num_prompts > 1:
      raise ValueError(missing_ids_message(num_prompts))
    return
  shape = tuple(np.shape(prompt_ids))
  if len(shape) != 1 or (batch is not None and shape[0] != batch):
    rows = 'one per row' if batch is None else f'one per row, [{batch}]'
    raise ValueError(f'prompt_ids must be a vector of integers ({rows}); got shape {shape}.')
  dtype = prompt_ids.dtype if hasattr(prompt_ids, 'dtype') else np.asarray(prompt_ids).dtype
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f'prompt_ids must be integers; got dtype {dtype}.')
  values = host_values(prompt_ids)
  if values is None:
    return
  bad = (values < 0) | (values >= num_prompts)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise ValueError(f'prompt id {int(values[row])} (row {row}) is out of range: the model '
                     f'holds {num_prompts} prompt(s) (num_prompts={num_prompts}), so ids must be '
                     f'in [0, {num_prompts}).')


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


def prompt_tree(prompt_PxD: Any, deep_LxPxD: Any = None) -> dict:
  """The trainable tree holding a prompt array ([P, D], or a table [K, P, D]) and, for deep
  prompts, the [L-1, P, D] array."""
  node: dict = {'prompt': {'prompt': prompt_PxD}}
  if deep_LxPxD is not None:
    node['deep'] = {'prompt': deep_LxPxD}
  return {'encoder': {'prompt': node}}


def get_prompt(trainable: dict) -> Any:
  """The [P, D] array (or [K, P, D] table) of a trainable tree (inverse of `prompt_tree`); the
  input prompt only, never the deep prompts."""
  node = trainable
  for key in PROMPT_PATH:
    node = node[key]
  return node


def effective_prompts(trainable: dict, shared: SharedMode = None) -> Any:
  """What the encoder sees: `get_prompt`, combined with the shared prompt when `shared` is set
  (the form numpy checkpoints, exports and readers hold)."""
  table = get_prompt(trainable)
  if shared is None:
    return table
  node = trainable
  for key in SHARED_PATH:
    node = node[key]
  return combine_shared(node, table, shared)
def get_deep_prompt(trainable: dict) -> Any:
  """The deep prompts [L-1, P, D] of a trainable tree, or None when it has none."""
  node = trainable
  for key in DEEP_PATH:
    if not isinstance(node, Mapping) or key not in node:
      return None
    node = node[key]
  return node
