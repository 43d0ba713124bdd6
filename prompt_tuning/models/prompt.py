"""The prompt: a learned [P, D] array joined to the encoder's embedded inputs.

Owns the prompt module, its placements and mask, where the prompt sits in the parameter tree
(`PROMPT_PATH`) and the trainable/frozen split of that tree. Initial values: prompt_init.py;
files: prompt_files.py.

Where it enters the model: `Encoder.__call__` in models/t5.py calls `PromptConfig.module(...)`
right after the token embedding. That module owns the only trainable parameter,
`encoder/prompt/prompt/prompt` (float32, logical axes ('prompt', 'prompt_embed') so it stays
replicated), and returns the combined embeddings; `PromptConfig.mask` says which are real.

Placements:
  prefix  [prompt, x_1 .. x_n, pad]            the paper's
  suffix  [x_1 .. x_{n-1}, prompt, EOS, pad]    prompt just before the final (EOS) token

Relative positions simply count the combined sequence, so a prefix prompt sits at 0..P-1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, cast, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.vocab import token_mask

PROMPT_AXES = ('prompt', 'prompt_embed')
PROMPT_PATH = ('encoder', 'prompt', 'prompt', 'prompt')
PROMPT_VARIABLE = '/'.join(PROMPT_PATH)  # its name in a T5X checkpoint
Placement = Literal['prefix', 'suffix']
PLACEMENTS: tuple[str, ...] = get_args(Placement)


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How long the prompt is and where it goes; passed to `EncoderDecoder(config, prompt=...)`."""
  length: int = 100
  placement: Placement = 'prefix'

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f'Prompt length (PROMPT_LENGTH) must be at least 1, got {self.length}.')
    if self.placement not in PLACEMENTS:
      raise ValueError(f'Unknown prompt placement {self.placement!r}; choose one of {PLACEMENTS}.')

  def module(self, dtype: Any, name: str) -> 'Prompt':
    return Prompt(self, dtype=dtype, name=name)

  def mask(self, tokens_BxL: jax.Array) -> jax.Array:
    """Which positions of the combined sequence [B, L + P] are real (prompt positions always)."""
    valid_BxL = token_mask(tokens_BxL)
    batch, length = tokens_BxL.shape
    if self.placement == 'prefix':
      return jnp.concatenate([jnp.ones((batch, self.length), bool), valid_BxL], axis=1)
    n_B = jnp.sum(valid_BxL, axis=1)
    return jnp.arange(length + self.length)[None, :] < (n_B + self.length)[:, None]


class PromptParameter(nn.Module):
  """Holds the prompt variable itself; stored float32 whatever the activation dtype.

  Its flax initializer only matters for `model.init`; training sets the value from an
  initializer of prompt_init.py, which may need the embedding table.
  """
  length: int

  @nn.compact
  def __call__(self, features: int) -> jax.Array:
    init = lambda rng, shape, dtype: jax.random.uniform(rng, shape, dtype, -0.5, 0.5)
    # Stored boxed (LogicallyPartitioned); flax hands the module the unboxed array.
    return cast(jax.Array, self.param('prompt', nn.with_logical_partitioning(init, PROMPT_AXES),
                                      (self.length, features), jnp.float32))


class Prompt(nn.Module):
  """Combines the prompt with embedded inputs according to the placement."""
  config: PromptConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, embedded_BxLxD: jax.Array) -> jax.Array:
    prompt_PxD = PromptParameter(self.config.length, name='prompt')(embedded_BxLxD.shape[-1])
    prompt_PxD = prompt_PxD.astype(self.dtype)
    if self.config.placement == 'prefix':
      return prefix_prompt(prompt_PxD, embedded_BxLxD)
    return suffix_prompt(prompt_PxD, tokens_BxL, embedded_BxLxD)


def prefix_prompt(prompt_PxD: jax.Array, embedded_BxLxD: jax.Array) -> jax.Array:
  batch = embedded_BxLxD.shape[0]
  prompt_BxPxD = jnp.broadcast_to(prompt_PxD[None], (batch,) + prompt_PxD.shape)
  return jnp.concatenate([prompt_BxPxD, embedded_BxLxD.astype(prompt_PxD.dtype)], axis=1)


def suffix_prompt(prompt_PxD: jax.Array, tokens_BxL: jax.Array,
                  embedded_BxLxD: jax.Array) -> jax.Array:
  """Inserts the prompt before each row's last real token (its EOS)."""
  p = prompt_PxD.shape[0]
  batch, length, _ = embedded_BxLxD.shape
  n_B = jnp.sum(token_mask(tokens_BxL), axis=1)
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
  """The [P, D] array of a trainable tree (inverse of `prompt_tree`)."""
  node = trainable
  for key in PROMPT_PATH:
    node = node[key]
  return node
