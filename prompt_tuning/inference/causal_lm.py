"""Decoding (greedy, sampling, beam search) and scoring of decoder-only models
(models/decoder_only.py) on their KV cache; `generate` is the one entry point that follows a
`DecodingConfig`.

Batches are right-padded with per-row lengths (the models' convention): `tokens_BxL` holds each
row's real tokens first, `lengths_B` how many. A prompt ([P, D] or [B, P, D], float32) goes where
the model's `prompt_placement` puts it, and a deep run's per-layer prompts `deep` ([L-1, P, D])
replace its positions before each later layer (prefilled into the cache, so decoding needs
nothing more); the cache is sized here for prompt + inputs + what
follows. Each function is one jitted program per shape and setting (the model, the step count,
the sampling and beam settings and `eos_ids` are static arguments).

Decoding follows T5's (inference/decoding.py), with the prefill's logits as the first step: a
row ends at its first token in `eos_ids` and is padded with 0 after it (the rows' padding
value); `eos_ids=()` never ends a row. Sampling's step i uses fold_in(rng, i). Beam search is
T5X's (decoding.beam_advance and its neighbours): each row's cache (prompt included) is copied
per beam after one prefill.

`score` is rank classification's log-likelihood: inputs prefilled once, then the targets
teacher-forced through the cache in one step; `score_candidates` shares one prefill among K
candidate continuations of each row.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from prompt_tuning.data.causal_lm import PAD_VALUE
from prompt_tuning.inference import decoding as decoding_lib
from prompt_tuning.inference.decoding import DecodingConfig, argmax
from prompt_tuning.models.decoder_only import DecoderOnly

EosIds = tuple[int, ...]


def _prefill(model: DecoderOnly, params, tokens_BxL, lengths_B, prompt, extra: int, deep=None):
  """(next-token logits [B, V], the filled cache) with room for `extra` more positions."""
  p = 0 if prompt is None else prompt.shape[-2]
  batch, length = tokens_BxL.shape
  cache = model.init_cache(batch, length + p + extra)
  logits_BxV, variables = model.apply({'params': params, 'cache': cache}, tokens_BxL, lengths_B,
                                      prompt, deep, method=model.prefill, mutable=['cache'])
  return logits_BxV, variables['cache']


def _decode(model: DecoderOnly, params, tokens_BxL, lengths_B, steps: int, prompt, pick, rng,
            eos_ids: EosIds, deep=None) -> jax.Array:
  """Runs `pick(logits_BxV, step_rng) -> token_B` until every row ended or `steps` tokens."""
  logits_BxV, cache = _prefill(model, params, tokens_BxL, lengths_B, prompt, steps, deep)

  def choose(i, logits_BxV, done_B):
    token_B = jnp.where(done_B, PAD_VALUE,
                        pick(logits_BxV, jax.random.fold_in(rng, i)).astype(jnp.int32))
    return token_B, done_B | decoding_lib.ends(token_B, eos_ids)

  first_B, done_B = choose(0, logits_BxV, jnp.zeros(logits_BxV.shape[:1], bool))
  tokens_BxS = jnp.zeros((first_B.shape[0], steps), jnp.int32).at[:, 0].set(first_B)

  def body(state):
    i, tokens_BxS, done_B, cache = state
    last_Bx1 = lax.dynamic_slice_in_dim(tokens_BxS, i - 1, 1, axis=1)
    logits_Bx1xV, variables = model.apply({'params': params, 'cache': cache}, last_Bx1,
                                          method=model.decode_step, mutable=['cache'])
    token_B, done_B = choose(i, logits_Bx1xV[:, 0], done_B)
    tokens_BxS = lax.dynamic_update_slice(tokens_BxS, token_B[:, None], (0, i))
    return i + 1, tokens_BxS, done_B, variables['cache']

  cond = lambda state: (state[0] < steps) & ~jnp.all(state[2])
  return lax.while_loop(cond, body, (jnp.array(1, jnp.int32), tokens_BxS, done_B, cache))[1]


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'eos_ids'))
def greedy(model: DecoderOnly, params, tokens_BxL: jax.Array, lengths_B: jax.Array, steps: int,
           prompt: Optional[jax.Array] = None, deep: Optional[jax.Array] = None,
           eos_ids: EosIds = ()) -> jax.Array:
  """The `steps` most likely next tokens [B, steps] of each row, one at a time; after a token of
  `eos_ids` 0 (none by default: no stop, callers cut at EOS)."""
  pick = lambda logits_BxV, _: argmax(logits_BxV)
  return _decode(model, params, tokens_BxL, lengths_B, steps, prompt, pick,
                 jax.random.PRNGKey(0), eos_ids, deep)


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'temperature', 'top_k', 'top_p',
                                             'eos_ids'))
def sample(model: DecoderOnly, params, tokens_BxL: jax.Array, lengths_B: jax.Array, steps: int,
           rng: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           prompt: Optional[jax.Array] = None, deep: Optional[jax.Array] = None,
           eos_ids: EosIds = ()) -> jax.Array:
  """Ancestral sampling [B, steps] with T5's knobs (decoding.sample_logits: temperature < 1e-4
  is argmax, top_k=0 and top_p=1 filter nothing); the same rng gives the same tokens."""
  decoding_lib.check_sampling(top_k, top_p)
  pick = functools.partial(decoding_lib.sample_logits, temperature=temperature, top_k=top_k,
                           top_p=top_p)
  return _decode(model, params, tokens_BxL, lengths_B, steps, prompt, pick, rng, eos_ids, deep)


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'num_beams', 'alpha', 'eos_ids'))
def beam_search(model: DecoderOnly, params, tokens_BxL: jax.Array, lengths_B: jax.Array,
                steps: int, num_beams: int = 4, alpha: float = 0.6,
                prompt: Optional[jax.Array] = None, deep: Optional[jax.Array] = None,
                eos_ids: EosIds = ()) -> tuple[jax.Array, jax.Array]:
  """(tokens [B, K, steps], scores [B, K]), best first, K = num_beams; T5's `beam_search`
  rules: a finished beam (ending in `eos_ids`, 0 after) scores its summed log-prob over
  brevity_penalty(alpha, its length with the EOS); a row with any finished beam returns only
  finished ones (empty slots: 0s, -inf), a row with none its live beams and raw log-probs."""
  decoding_lib.check_beams(num_beams)
  first_BxV, cache = _prefill(model, params, tokens_BxL, lengths_B, prompt, steps, deep)
  copies = lambda x: jnp.repeat(x, num_beams, axis=0)  # example b's beams: rows b*K .. b*K+K-1
  state = decoding_lib.beam_start(first_BxV.shape[0], num_beams, steps,
                                  jax.tree.map(copies, cache))
  state = decoding_lib.beam_advance(state, copies(first_BxV), alpha, eos_ids)

  def body(s: decoding_lib.BeamState) -> decoding_lib.BeamState:
    logits_Nx1xV, variables = model.apply(
        {'params': params, 'cache': s.cache}, decoding_lib.last_beam_tokens(s)[:, None],
        method=model.decode_step, mutable=['cache'])
    return decoding_lib.beam_advance(s._replace(cache=variables['cache']),
                                     logits_Nx1xV[:, 0], alpha, eos_ids)

  state = lax.while_loop(lambda s: decoding_lib.beam_continues(s, alpha, steps), body, state)
  return decoding_lib.beam_result(state)


def eos_ids_of(model: DecoderOnly) -> EosIds:
  """The ids that end a row: the model config's eos_token_id (one or several; none: ())."""
  eos = model.config.eos_token_id
  return () if eos is None else tuple(int(i) for i in np.atleast_1d(eos))


def _check(model: DecoderOnly, tokens_BxL, lengths_B, steps: int, prompt) -> None:
  """Host-side shape checks, each a one-line ValueError naming the argument."""
  shape, lengths = np.shape(tokens_BxL), np.asarray(lengths_B)
  if len(shape) != 2:
    raise ValueError(f'tokens: a batch is [B, L] token ids; got shape {shape}.')
  if lengths.shape != shape[:1] or not ((lengths >= 1) & (lengths <= shape[1])).all():
    raise ValueError(f'lengths: one per row of tokens {list(shape)}, each in 1..{shape[1]}; '
                     f'got {lengths.tolist()}.')
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}.')
  if prompt is not None:
    p_shape, width = np.shape(prompt), model.config.d_model
    if p_shape[-1:] != (width,) or len(p_shape) not in (2, 3) or (
        len(p_shape) == 3 and p_shape[0] != shape[0]):
      raise ValueError(f'prompt: [P, {width}] or one per row [{shape[0]}, P, {width}] for tokens '
                       f'{list(shape)}; got shape {list(p_shape)}.')


def generate(model: DecoderOnly, params, tokens_BxL, lengths_B, steps: int,
             decoding: DecodingConfig, prompt=None, rng: Optional[jax.Array] = None,
             eos_ids: Optional[EosIds] = None, deep=None) -> np.ndarray:
  """Token ids [B, S] of each row's continuation as `decoding` says (greedy, sampling,
  or the best beam), S = its max_decode_length or else `steps` (DecodingConfig.generate's rule).

  As T5's decoding: a row stops at its first token of `eos_ids` (default: the model config's
  eos_token_id, `eos_ids_of`), the EOS is kept and 0s follow; callers cut at the EOS. `prompt`:
  [P, D] or per row [B, P, D]; `deep` a deep run's per-layer prompts. `rng` (sampling) defaults
  to PRNGKey(decoding.seed).
  """
  c = decoding
  length = c.max_decode_length or steps
  _check(model, tokens_BxL, lengths_B, length, prompt)
  eos = eos_ids_of(model) if eos_ids is None else tuple(int(i) for i in eos_ids)
  args = (model, params, jnp.asarray(tokens_BxL, jnp.int32), jnp.asarray(lengths_B, jnp.int32),
          length)
  prompt = None if prompt is None else jnp.asarray(prompt, jnp.float32)
  deep = None if deep is None else jnp.asarray(deep, jnp.float32)
  if c.method == 'greedy':
    ids = greedy(*args, prompt=prompt, eos_ids=eos, deep=deep)
  elif c.method == 'beam_search':
    ids = beam_search(*args, num_beams=c.num_beams, alpha=c.alpha, prompt=prompt,
                      eos_ids=eos, deep=deep)[0][:, 0]
  else:
    rng = jax.random.PRNGKey(c.seed) if rng is None else rng
    ids = sample(*args, rng, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                 prompt=prompt, eos_ids=eos, deep=deep)
  # block_until_ready waits with the GIL released (as DecodingConfig.generate).
  return np.asarray(jax.block_until_ready(ids))


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

