"""Autoregressive decoding (greedy, sampling, beam search) and scoring, in pure JAX; and
`DecodingConfig`, the gin-configured choice among them (gin/decoding/*.gin).

Each decoding function encodes the inputs once (the prompt, when the model has one, is joined
there; decoding only sees its mask), fills the model's key/value cache once
(`EncoderDecoder.init_cache`: zeroed self-attention slots plus the cross-attention keys/values
of the encoded input), then runs one jitted `lax.while_loop` of single-token
`EncoderDecoder.decode_step`s with fixed shapes. Decoding starts from the decoder input id 0
(PAD) and a row stops at its first EOS (id 1); later positions hold PAD.

The model and the integer/float settings are static arguments: one compile per model, shape
and setting, reused across calls.

A model whose prompt is a table (`PromptConfig.num_prompts` K > 1) needs `prompt_ids` [B], each
row's prompt; every entry point checks them on the host before jit (missing, wrong shape, an id
outside [0, K): a ValueError naming it). They only matter at encoding: beams and candidates
repeat the encoded rows, which already carry their prompt.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple, Optional, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.data.vocab import EOS_ID, PAD_ID, token_mask

DecodingMethod = Literal['greedy', 'beam_search', 'sample']
DECODING_METHODS: tuple[str, ...] = get_args(DecodingMethod)
# Below this temperature sampling is argmax (T5X's threshold): 1/temperature would overflow.
MIN_TEMPERATURE = 1e-4


# ----------------------------------------------------------------------------------------------
# The cached model, as two functions of arrays.


def check_prompt_ids(model, prompt_ids, batch: int) -> None:
  """Host-side check of the rows' prompt ids for `model` (see prompt_lib.check_prompt_ids)."""
  prompt = getattr(model, 'prompt', None)
  if prompt is None:
    if prompt_ids is not None:
      raise ValueError('prompt_ids were given but the model has no prompt.')
    return
  prompt_lib.check_prompt_ids(prompt_ids, prompt.num_prompts, batch)


def _host_checked(jitted):
  """`jitted`, with its keyword `prompt_ids` checked on the host first (inside jit an id out of
  range cannot be refused). `.lower` stays the jitted function's."""
  @functools.wraps(jitted)
  def call(model, params, encoder_input_tokens_BxL, *args, prompt_ids=None, **kwargs):
    check_prompt_ids(model, prompt_ids, np.shape(encoder_input_tokens_BxL)[0])
    return jitted(model, params, encoder_input_tokens_BxL, *args, prompt_ids=prompt_ids,
                  **kwargs)
  call.lower = jitted.lower  # type: ignore[attr-defined]
  return call


def _start(model, params, encoder_input_tokens_BxL, max_decode_length, copies=1,
           prompt_ids_B=None):
  """Encodes once and builds the cache; `copies` repeats each row (beams) after encoding, so
  the prompt ids, used by the encoder alone, need no repeating."""
  if max_decode_length < 1:
    raise ValueError(f'max_decode_length must be >= 1, got {max_decode_length}.')
  tokens_BxL = jnp.asarray(encoder_input_tokens_BxL, jnp.int32)
  encoded_BxLxD = model.apply({'params': params}, tokens_BxL, prompt_ids=prompt_ids_B,
                              method=model.encode)
  if copies > 1:
    # Rows b*copies .. b*copies + copies - 1 belong to example b.
    encoded_BxLxD = jnp.repeat(encoded_BxLxD, copies, axis=0)
    tokens_BxL = jnp.repeat(tokens_BxL, copies, axis=0)
  _, variables = model.apply({'params': params}, encoded_BxLxD, tokens_BxL, max_decode_length,
                             method=model.init_cache, mutable=['cache'])
  return tokens_BxL, variables['cache']


def _step(model, params, cache, encoder_input_tokens_BxL, token_B):
  """Logits [B, V] for the next position after `token_B`, and the advanced cache."""
  logits_Bx1xV, variables = model.apply(
      {'params': params, 'cache': cache}, encoder_input_tokens_BxL, token_B[:, None],
      method=model.decode_step, mutable=['cache'])
  return logits_Bx1xV[:, 0], variables['cache']


# ----------------------------------------------------------------------------------------------
# Greedy decoding and sampling: one token per row per step.


class _SampleState(NamedTuple):
  i: jax.Array            # tokens written so far
  last_B: jax.Array       # the decoder input of step i
  tokens_BxT: jax.Array
  done_B: jax.Array       # row has emitted EOS
  cache: Any


def _decode_loop(model, params, encoder_input_tokens_BxL, max_decode_length,
                 pick: Callable[[jax.Array, jax.Array], jax.Array], rng: jax.Array,
                 prompt_ids_B=None):
  """Runs `pick(logits_BxV, step_rng) -> token_B` until every row ended or T tokens."""
  tokens_BxL, cache = _start(model, params, encoder_input_tokens_BxL, max_decode_length,
                             prompt_ids_B=prompt_ids_B)
  batch = tokens_BxL.shape[0]

  def cond(s: _SampleState):
    return (s.i < max_decode_length) & ~jnp.all(s.done_B)

  def body(s: _SampleState):
    logits_BxV, cache = _step(model, params, s.cache, tokens_BxL, s.last_B)
    token_B = pick(logits_BxV, jax.random.fold_in(rng, s.i)).astype(jnp.int32)
    token_B = jnp.where(s.done_B, PAD_ID, token_B)
    tokens_BxT = lax.dynamic_update_slice(s.tokens_BxT, token_B[:, None], (0, s.i))
    return _SampleState(s.i + 1, token_B, tokens_BxT, s.done_B | ends(token_B, (EOS_ID,)), cache)

  init = _SampleState(jnp.array(0, jnp.int32), jnp.full((batch,), PAD_ID, jnp.int32),
                      jnp.zeros((batch, max_decode_length), jnp.int32),
                      jnp.zeros((batch,), bool), cache)
  return lax.while_loop(cond, body, init).tokens_BxT


@_host_checked
@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length'))
def greedy(model, params, encoder_input_tokens_BxL, max_decode_length: int,
           prompt_ids=None) -> jax.Array:
  """Argmax decoding: tokens [B, T=max_decode_length], PAD after each row's first EOS.
  prompt_ids [B]: each row's prompt (a prompt table's model needs them)."""
  pick = lambda logits_BxV, _: argmax(logits_BxV)
  return _decode_loop(model, params, encoder_input_tokens_BxL, max_decode_length, pick,
                      jax.random.PRNGKey(0), prompt_ids)


def top_k_filter(logits_BxV: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits of each row (ties to the lower id) and sets the rest to -inf."""
  if k <= 0 or k >= logits_BxV.shape[-1]:
    return logits_BxV
  _, ids_BxK = lax.top_k(logits_BxV, k)
  rows_Bx1 = jnp.arange(logits_BxV.shape[0])[:, None]
  keep_BxV = jnp.zeros(logits_BxV.shape, bool).at[rows_Bx1, ids_BxK].set(True)
  return jnp.where(keep_BxV, logits_BxV, -jnp.inf)


def top_p_filter(logits_BxV: jax.Array, p: float) -> jax.Array:
  """Nucleus filter: keeps each row's smallest set of most probable tokens whose probability
  mass is >= p (ties to the lower id); the rest become -inf."""
  if not 0.0 < p <= 1.0:
    raise ValueError(f'top_p must be in (0, 1], got {p}.')
  order_BxV = jnp.argsort(-logits_BxV, axis=-1, stable=True)  # most probable first
  probs_BxV = jax.nn.softmax(jnp.take_along_axis(logits_BxV, order_BxV, axis=-1), axis=-1)
  mass_before_BxV = jnp.concatenate(
      [jnp.zeros_like(probs_BxV[:, :1]), jnp.cumsum(probs_BxV, axis=-1)[:, :-1]], axis=-1)
  # A token is needed iff the more probable ones have not reached p yet.
  keep_sorted_BxV = mass_before_BxV < p
  rows_Bx1 = jnp.arange(logits_BxV.shape[0])[:, None]
  keep_BxV = jnp.zeros(logits_BxV.shape, bool).at[rows_Bx1, order_BxV].set(keep_sorted_BxV)
  return jnp.where(keep_BxV, logits_BxV, -jnp.inf)


def argmax(x: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis, same answer (the first maximum; the first NaN if any),
  as a max then a min over indices: XLA:CPU runs argmax's (value, index) reduce unvectorised,
  which made it 90 % of a greedy decode step over a 32k vocabulary (5x slower at 32 rows)."""
  top = jnp.max(x, axis=-1, keepdims=True)
  index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where((x == top) | jnp.isnan(x), index, x.shape[-1]), axis=-1)


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """One token per row from softmax(logits / temperature), restricted by top-k then top-p."""
  if temperature < MIN_TEMPERATURE:
    return argmax(logits_BxV)
  logits_BxV = top_k_filter(logits_BxV.astype(jnp.float32) / temperature, top_k)
  if top_p < 1.0:
    logits_BxV = top_p_filter(logits_BxV, top_p)
  return jax.random.categorical(rng, logits_BxV, axis=-1)


def check_sampling(top_k: int, top_p: float) -> None:
  if top_k < 0:
    raise ValueError(f'top_k must be >= 0, got {top_k}.')
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f'top_p must be in (0, 1], got {top_p}.')


def check_beams(num_beams: int) -> None:
  if num_beams < 1:
    raise ValueError(f'num_beams must be >= 1, got {num_beams}.')


@_host_checked
@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length', 'temperature',
                                             'top_k', 'top_p'))
def sample(model, params, encoder_input_tokens_BxL, max_decode_length: int, rng: jax.Array,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           prompt_ids=None) -> jax.Array:
  """Ancestral sampling: tokens [B, T], PAD after each row's first EOS.

  temperature < 1e-4 is argmax; top_k=0 and top_p=1 disable those filters. The same rng
  gives the same tokens; step i uses fold_in(rng, i). prompt_ids [B]: as for `greedy`.
  """
  check_sampling(top_k, top_p)
  pick = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return _decode_loop(model, params, encoder_input_tokens_BxL, max_decode_length, pick, rng,
                      prompt_ids)


# ----------------------------------------------------------------------------------------------
# Beam search (T5X's algorithm: 2K candidates per step, finished set scored with its brevity
# penalty, early exit once no live beam can beat the finished ones); its steps are shared
# with the decoder-only models (causal_lm.py), whose caches have no cross-attention.


def brevity_penalty(alpha: float, length: Any) -> Any:
  """T5X's length normalisation: finished log-probs are divided by ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


class BeamState(NamedTuple):
  """Beam search's loop state, shared by T5 and the decoder-only models (causal_lm.py)."""
  i: jax.Array              # tokens decoded so far
  live_seqs_BxKxT: jax.Array
  live_logp_BxK: jax.Array  # summed log-probs, best first; -inf for empty beams
  done_seqs_BxKxT: jax.Array
  done_scores_BxK: jax.Array  # normalised scores, best first; -inf for empty slots
  done_BxK: jax.Array
  cache: Any                # rows b * K + k


def ends(token: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
  """Whether each token is one of `eos_ids` (none: never)."""
  ended = jnp.zeros(token.shape, bool)
  for eos in eos_ids:
    ended |= token == eos
  return ended


def reorder_cache(cache, rows_N: jax.Array):
  """Moves cache rows to follow their beams. T5's cross-attention entries are identical for
  every beam of an example, so they stay put."""
  def gather(path, x):
    names = {getattr(k, 'key', None) for k in path}
    if x.ndim == 0 or 'encoder_decoder_attention' in names:
      return x
    return jnp.take(x, rows_N, axis=0)
  return jax.tree_util.tree_map_with_path(gather, cache)


def beam_start(batch: int, num_beams: int, length: int, cache) -> BeamState:
  """The state before the first token: only beam 0 of each example is live (the others would
  duplicate its candidates); `cache` holds rows b * K + k."""
  shape = (batch, num_beams)
  seqs_BxKxT = jnp.zeros(shape + (length,), jnp.int32)
  live_BxK = jnp.full(shape, -jnp.inf, jnp.float32).at[:, 0].set(0.0)
  return BeamState(jnp.array(0, jnp.int32), seqs_BxKxT, live_BxK, seqs_BxKxT,
                   jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, bool), cache)


def beam_continues(s: BeamState, alpha: float, length: int) -> jax.Array:
  """Whether any live beam can still beat its example's finished ones: log-probs only fall, so
  at best it ends with its log-prob over the largest penalty reachable (lengths i + 1 .. T)."""
  penalty = jnp.maximum(brevity_penalty(alpha, s.i + 1.0), brevity_penalty(alpha, float(length)))
  best_live_B = s.live_logp_BxK[:, 0] / penalty
  worst_done_B = jnp.where(jnp.all(s.done_BxK, axis=1), s.done_scores_BxK[:, -1], -jnp.inf)
  return (s.i < length) & ~jnp.all(worst_done_B > best_live_B)


def last_beam_tokens(s: BeamState) -> jax.Array:
  """Each live beam's latest token [B * K] (PAD before the first)."""
  last_BxK = jnp.where(s.i == 0, PAD_ID, lax.dynamic_index_in_dim(
      s.live_seqs_BxKxT, jnp.maximum(s.i - 1, 0), axis=2, keepdims=False))
  return last_BxK.reshape(-1)


def beam_advance(s: BeamState, logits_NxV: jax.Array, alpha: float,
                 eos_ids: tuple[int, ...] = (EOS_ID,)) -> BeamState:
  """One step: `logits_NxV` (N = B * K, the live beams' next-token logits) extend the beams; a
  candidate ending in one of `eos_ids` joins the finished set, scored with its brevity penalty;
  the cache follows the beams' parents."""
  batch, k = s.live_logp_BxK.shape
  ninf, vocab = jnp.float32(-jnp.inf), logits_NxV.shape[-1]
  logp_BxKxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32).reshape(batch, k, vocab), -1)
  logp_BxKxV += s.live_logp_BxK[..., None]
  # 2K candidates: even if K of them end here, K remain to continue.
  cand_logp_BxC, flat_BxC = lax.top_k(logp_BxKxV.reshape(batch, k * vocab), 2 * k)
  parent_BxC, token_BxC = flat_BxC // vocab, (flat_BxC % vocab).astype(jnp.int32)
  cand_seqs_BxCxT = jnp.take_along_axis(s.live_seqs_BxKxT, parent_BxC[..., None], axis=1)
  cand_seqs_BxCxT = lax.dynamic_update_slice(cand_seqs_BxCxT, token_BxC[..., None], (0, 0, s.i))
  ended_BxC = ends(token_BxC, eos_ids) & (cand_logp_BxC > ninf)  # not empty beams' (K > V/2)

  live_logp_BxK, pick_BxK = lax.top_k(jnp.where(ended_BxC, ninf, cand_logp_BxC), k)
  live_seqs_BxKxT = jnp.take_along_axis(cand_seqs_BxCxT, pick_BxK[..., None], axis=1)
  parent_BxK = jnp.take_along_axis(parent_BxC, pick_BxK, axis=1)
  rows_N = (jnp.arange(batch)[:, None] * k + parent_BxK).reshape(-1)
  cache = reorder_cache(s.cache, rows_N)

  new_scores_BxC = jnp.where(ended_BxC, cand_logp_BxC / brevity_penalty(alpha, s.i + 1.0), ninf)
  scores_Bx3K = jnp.concatenate([s.done_scores_BxK, new_scores_BxC], axis=1)
  done_scores_BxK, keep_BxK = lax.top_k(scores_Bx3K, k)
  done_seqs_BxKxT = jnp.take_along_axis(
      jnp.concatenate([s.done_seqs_BxKxT, cand_seqs_BxCxT], axis=1), keep_BxK[..., None], 1)
  done_BxK = jnp.take_along_axis(jnp.concatenate([s.done_BxK, ended_BxC], axis=1), keep_BxK,
                                 axis=1)
  return BeamState(s.i + 1, live_seqs_BxKxT, live_logp_BxK, done_seqs_BxKxT, done_scores_BxK,
                   done_BxK, cache)


def beam_result(s: BeamState) -> tuple[jax.Array, jax.Array]:
  """(tokens [B, K, T], scores [B, K]), best first: T5X's rule (see `beam_search`)."""
  any_done_B = jnp.any(s.done_BxK, axis=1)
  tokens_BxKxT = jnp.where(any_done_B[:, None, None], s.done_seqs_BxKxT, s.live_seqs_BxKxT)
  scores_BxK = jnp.where(any_done_B[:, None], s.done_scores_BxK, s.live_logp_BxK)
  return tokens_BxKxT, scores_BxK


@_host_checked
@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length', 'num_beams',
                                             'alpha'))
def beam_search(model, params, encoder_input_tokens_BxL, max_decode_length: int,
                num_beams: int = 4, alpha: float = 0.6,
                prompt_ids=None) -> tuple[jax.Array, jax.Array]:
  """Beam search: (tokens [B, K, T], scores [B, K]), best first, K = num_beams; prompt_ids
  [B] as for `greedy` (encoded once per example, before its beams are made).

  Scores are summed log-probs divided by `brevity_penalty(alpha, length)` (length counts the
  EOS). As in T5X: a row with any finished sequence returns only finished ones (empty slots:
  PAD tokens, score -inf); a row with none returns its live beams and their raw log-probs.
  """
  check_beams(num_beams)
  k, t = num_beams, max_decode_length
  tokens_NxL, cache = _start(model, params, encoder_input_tokens_BxL, t, copies=k,
                             prompt_ids_B=prompt_ids)

  def body(s: BeamState):
    logits_NxV, cache = _step(model, params, s.cache, tokens_NxL, last_beam_tokens(s))
    return beam_advance(s._replace(cache=cache), logits_NxV, alpha)

  init = beam_start(tokens_NxL.shape[0] // k, k, t, cache)
  return beam_result(lax.while_loop(lambda s: beam_continues(s, alpha, t), body, init))


# ----------------------------------------------------------------------------------------------
# Scoring.


def shift_right(targets_BxT: jax.Array) -> jax.Array:
  """Teacher-forcing decoder inputs: PAD, then the targets without their last token."""
  return jnp.concatenate([jnp.full_like(targets_BxT[:, :1], PAD_ID), targets_BxT[:, :-1]], 1)


def _target_logp(logits_BxTxV, targets_BxT, weights_BxT=None):
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  token_logp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  weights_BxT = token_mask(targets_BxT) if weights_BxT is None else weights_BxT
  return jnp.sum(token_logp_BxT * weights_BxT.astype(jnp.float32), axis=1)


@functools.partial(jax.jit, static_argnames=('model',))
def _score(model, params, batch):
  targets_BxT = batch['decoder_target_tokens']
  inputs_BxT = batch.get('decoder_input_tokens')
  inputs_BxT = shift_right(targets_BxT) if inputs_BxT is None else inputs_BxT
  logits_BxTxV = model.apply({'params': params}, batch['encoder_input_tokens'], inputs_BxT,
                             targets_BxT, prompt_ids=batch.get('prompt_ids'))
  return _target_logp(logits_BxTxV, targets_BxT, batch.get('decoder_loss_weights'))


@_host_checked
@functools.partial(jax.jit, static_argnames=('model',))
def score_candidates(model, params, encoder_input_tokens_BxL, candidates_KxT,
                     prompt_ids=None) -> jax.Array:
  """Log-likelihood [B, K] of each of K candidate targets (e.g. class verbalizers + EOS).

  Rank classification: the input (and prompt: row b's is prompt_ids[b] for a prompt table) is
  encoded once and shared by the K candidates.
  """
  batch, num = encoder_input_tokens_BxL.shape[0], candidates_KxT.shape[0]
  encoded = model.apply({'params': params}, encoder_input_tokens_BxL, prompt_ids=prompt_ids,
                        method=model.encode)
  encoded = jnp.repeat(encoded, num, axis=0)
  tokens = jnp.repeat(encoder_input_tokens_BxL, num, axis=0)
  targets_NxT = jnp.tile(candidates_KxT, (batch, 1))
  logits = model.apply({'params': params}, encoded, tokens, shift_right(targets_NxT),
                       targets_NxT, method=model.decode)
  return _target_logp(logits, targets_NxT).reshape(batch, num)


def score(model, params, batch: dict) -> jax.Array:
  """Summed log-probabilities [B] of `decoder_target_tokens` given `encoder_input_tokens`.

  Teacher-forced in one forward pass. Tokens are weighted by `decoder_loss_weights` when the
  batch has them, else by target > 0; `decoder_input_tokens` default to the shifted targets.
  `prompt_ids` [B] (each row's prompt) when the model's prompt is a table.
  """
  keys = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
          'decoder_loss_weights', 'prompt_ids')
  arrays = {k: jnp.asarray(batch[k]) for k in keys if batch.get(k) is not None}
  for k in ('encoder_input_tokens', 'decoder_target_tokens'):
    if k not in arrays:
      raise ValueError(f'score needs {k!r}; the batch has {sorted(batch)}.')
  check_prompt_ids(model, batch.get('prompt_ids'), arrays['encoder_input_tokens'].shape[0])
  return _score(model, params, arrays)


# ----------------------------------------------------------------------------------------------
# The gin-configured choice.


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How `generate` evaluation and inference decode (gin/decoding/*.gin)."""
  method: DecodingMethod = 'greedy'
  num_beams: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_decode_length: Optional[int] = None  # default: the task's target length
  seed: int = 0

  def __post_init__(self):
    if self.method not in DECODING_METHODS:
      raise ValueError(f"Unknown decoding method {self.method!r}; choose 'greedy', "
                       f"'beam_search' or 'sample'.")

  def generate(self, model, params, encoder_input_tokens, max_length: int,
               prompt_ids=None) -> np.ndarray:
    """Token ids [B, T] of each row's output (the best beam for beam search); prompt_ids [B]
    for a prompt table's model."""
    length = self.max_decode_length or max_length
    # block_until_ready waits with the GIL released (np.asarray may not): other threads of a
    # server keep parsing requests meanwhile.
    if self.method == 'greedy':
      return np.asarray(jax.block_until_ready(greedy(model, params, encoder_input_tokens, length,
                                                     prompt_ids=prompt_ids)))
    if self.method == 'beam_search':
      tokens, _ = beam_search(model, params, encoder_input_tokens, length,
                              num_beams=self.num_beams, alpha=self.alpha, prompt_ids=prompt_ids)
      return np.asarray(jax.block_until_ready(tokens))[:, 0]
    return np.asarray(jax.block_until_ready(sample(
        model, params, encoder_input_tokens, length, rng=jax.random.PRNGKey(self.seed),
        temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
        prompt_ids=prompt_ids)))
