"""Greedy decoding and scoring of decoder-only models (models/decoder_only.py) on their KV cache.

Batches are right-padded with per-row lengths (the models' convention): `tokens_BxL` holds each
row's real tokens first, `lengths_B` how many. A prompt ([P, D] or [B, P, D], float32) goes where
the model's `prompt_placement` puts it, and a deep run's per-layer prompts `deep` ([L-1, P, D])
replace its positions before each later layer (prefilled into the cache, so decoding needs
nothing more); the cache is sized here for prompt + inputs + what follows. Each function is
one jitted program per shape (the model is a static argument).

`score` is rank classification's log-likelihood: inputs prefilled once, then the targets
teacher-forced through the cache in one step; `score_candidates` shares one prefill among K
candidate continuations of each row.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from prompt_tuning.inference.decoding import argmax
from prompt_tuning.models.decoder_only import DecoderOnly


def _prefill(model: DecoderOnly, params, tokens_BxL, lengths_B, prompt, extra: int, deep=None):
  """(next-token logits [B, V], the filled cache) with room for `extra` more positions."""
  p = 0 if prompt is None else prompt.shape[-2]
  batch, length = tokens_BxL.shape
  cache = model.init_cache(batch, length + p + extra)
  logits_BxV, variables = model.apply({'params': params, 'cache': cache}, tokens_BxL, lengths_B,
                                      prompt, deep, method=model.prefill, mutable=['cache'])
  return logits_BxV, variables['cache']


@functools.partial(jax.jit, static_argnames=('model', 'steps'))
def greedy(model: DecoderOnly, params, tokens_BxL: jax.Array, lengths_B: jax.Array, steps: int,
           prompt: Optional[jax.Array] = None, deep: Optional[jax.Array] = None) -> jax.Array:
  """The `steps` most likely next tokens [B, steps] of each row, one at a time (no stop at EOS:
  callers cut there)."""
  logits_BxV, cache = _prefill(model, params, tokens_BxL, lengths_B, prompt, steps, deep)
  first_B = argmax(logits_BxV)

  def step(carry, _):
    cache, token_B = carry
    logits_Bx1xV, variables = model.apply({'params': params, 'cache': cache}, token_B[:, None],
                                          method=model.decode_step, mutable=['cache'])
    following_B = argmax(logits_Bx1xV[:, 0])
    return (variables['cache'], following_B), following_B

  _, rest_SxB = jax.lax.scan(step, (cache, first_B), None, length=steps - 1)
  return jnp.concatenate([first_B[:, None], rest_SxB.T], axis=1)


def _target_logp(first_BxV, cache, model, params, targets_BxT, target_lengths_B):
  """Summed log-probabilities [B] of each row's first target_lengths_B targets, given the cache
  after its inputs and `first_BxV`, the logits that follow them."""
  step_BxTxV, _ = model.apply({'params': params, 'cache': cache}, targets_BxT,
                              method=model.decode_step, mutable=['cache'])
  # Target j is predicted after target j - 1; the first one by the prefill's logits.
  logits_BxTxV = jnp.concatenate([first_BxV[:, None], step_BxTxV[:, :-1]], axis=1)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  token_logp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  real_BxT = jnp.arange(targets_BxT.shape[1])[None, :] < target_lengths_B[:, None]
  return jnp.sum(jnp.where(real_BxT, token_logp_BxT, 0.0), axis=1)


@functools.partial(jax.jit, static_argnames=('model',))
def score(model: DecoderOnly, params, tokens_BxL: jax.Array, lengths_B: jax.Array,
          targets_BxT: jax.Array, target_lengths_B: jax.Array,
          prompt: Optional[jax.Array] = None, deep: Optional[jax.Array] = None) -> jax.Array:
  """log p(targets | prompt, inputs) [B] (float32), each row's targets right-padded to T."""
  first_BxV, cache = _prefill(model, params, tokens_BxL, lengths_B, prompt,
                              targets_BxT.shape[1], deep)
  return _target_logp(first_BxV, cache, model, params, targets_BxT,
                      jnp.asarray(target_lengths_B, jnp.int32))


@functools.partial(jax.jit, static_argnames=('model',))
def score_candidates(model: DecoderOnly, params, tokens_BxL: jax.Array, lengths_B: jax.Array,
                     candidates_KxT: jax.Array, candidate_lengths_K: jax.Array,
                     prompt: Optional[jax.Array] = None,
                     deep: Optional[jax.Array] = None) -> jax.Array:
  """log p(candidate k | prompt, row b's inputs) [B, K]: one prefill per row, its cache copied
  for the K candidates (rank classification over class verbalizers)."""
  batch, num = tokens_BxL.shape[0], candidates_KxT.shape[0]
  first_BxV, cache = _prefill(model, params, tokens_BxL, lengths_B, prompt,
                              candidates_KxT.shape[1], deep)
  copies = lambda x: jnp.repeat(x, num, axis=0)  # row b's copies are rows b*K .. b*K + K - 1
  targets_NxT = jnp.tile(candidates_KxT, (batch, 1))
  lengths_N = jnp.tile(jnp.asarray(candidate_lengths_K, jnp.int32), batch)
  logp_N = _target_logp(copies(first_BxV), jax.tree.map(copies, cache), model, params,
                        targets_NxT, lengths_N)
  return logp_N.reshape(batch, num)
