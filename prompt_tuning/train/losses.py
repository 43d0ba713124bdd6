"""T5X's token cross-entropy (with z-loss and label smoothing) and token accuracy, in pure JAX.

Follows T5X's `compute_weighted_cross_entropy` / `cross_entropy_with_logits` term for term, so
losses logged here are comparable with a T5X prompt-tuning run: the returned loss is a *sum* over
tokens (T5X does not normalise by default) and already includes the z-loss, which is also returned
on its own.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.inference.decoding import argmax

# The one string-valued normaliser we support (T5X's SpecialLossNormalizingFactor of that name).
NUM_REAL_TARGET_TOKENS = 'NUM_REAL_TARGET_TOKENS'


def cross_entropy_loss(
    logits_BxTxV: jax.Array,
    targets_BxT: jax.Array,
    weights_BxT: Optional[jax.Array] = None,
    *,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: Union[None, float, str] = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Weighted token cross-entropy as T5X computes it.

  Args:
    logits_BxTxV: unnormalised logits; cast to float32.
    targets_BxT: integer token ids.
    weights_BxT: per-token weights (0 on padding); None weighs every token 1.
    z_loss: coefficient of the auxiliary `log(Z)**2` term that keeps the softmax normaliser near 1.
    label_smoothing: mass spread uniformly over the V - 1 wrong classes.
    loss_normalizing_factor: None (plain sum), a number to divide by, or 'NUM_REAL_TARGET_TOKENS'
      (divide by the weight sum, i.e. a per-real-token mean).

  Returns:
    (loss, z_loss_total, weight_sum): the summed loss (z-loss included), the summed z-loss alone,
    and the sum of weights (the number of tokens when `weights_BxT` is None). The first two are
    divided by the normalising factor when one is given; `weight_sum` never is.
  """
  if logits_BxTxV.ndim != targets_BxT.ndim + 1:
    raise ValueError(f'logits {logits_BxTxV.shape} must have one more axis than targets '
                     f'{targets_BxT.shape}.')
  _check_normalizing_factor(loss_normalizing_factor)
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing!r}.')

  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  vocab_size = logits_BxTxV.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  # Entropy of the smoothed target distribution: subtracting it makes a perfect prediction score 0.
  # The 1e-20 keeps log finite when label_smoothing is 0 (the term is then 0 * log(1e-20) = 0).
  normalizing_constant = -(confidence * math.log(confidence)
                           + (vocab_size - 1) * low_confidence * math.log(low_confidence + 1e-20))
  soft_targets_BxTxV = jax.nn.one_hot(targets_BxT, vocab_size, dtype=jnp.float32)
  soft_targets_BxTxV = soft_targets_BxTxV * (confidence - low_confidence) + low_confidence

  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  log_softmax_BxTxV = logits_BxTxV - log_z_BxT[..., None]
  z_BxT = z_loss * jnp.square(log_z_BxT)
  loss_BxT = -jnp.sum(soft_targets_BxTxV * log_softmax_BxTxV, axis=-1) + z_BxT
  loss_BxT = loss_BxT - normalizing_constant

  if weights_BxT is None:
    weight_sum = jnp.asarray(math.prod(targets_BxT.shape), jnp.float32)
  else:
    weights_BxT = weights_BxT.astype(jnp.float32)
    loss_BxT = loss_BxT * weights_BxT
    z_BxT = z_BxT * weights_BxT
    weight_sum = jnp.sum(weights_BxT)

  loss, z_total = jnp.sum(loss_BxT), jnp.sum(z_BxT)
  if isinstance(loss_normalizing_factor, str):  # validated above: NUM_REAL_TARGET_TOKENS
    loss, z_total = loss / weight_sum, z_total / weight_sum
  elif loss_normalizing_factor is not None:
    loss, z_total = loss / loss_normalizing_factor, z_total / loss_normalizing_factor
  return loss, z_total, weight_sum


def _check_normalizing_factor(factor: object) -> None:
  if factor is None or (isinstance(factor, str) and factor == NUM_REAL_TARGET_TOKENS):
    return
  # Numbers, numpy/jax scalars (possibly traced) pass; strings, bools and shaped arrays do not.
  numeric = isinstance(factor, (numbers.Real, np.ndarray, jax.Array))
  if numeric and not isinstance(factor, bool) and np.ndim(factor) == 0:  # type: ignore[arg-type]
    return
  raise ValueError(f'Unsupported loss_normalizing_factor {factor!r}; use None, a number, or '
                   f'{NUM_REAL_TARGET_TOKENS!r}.')


def token_accuracy(
    logits_BxTxV: jax.Array,
    targets_BxT: jax.Array,
    weights_BxT: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
  """(weighted number of tokens whose argmax equals the target, weight sum)."""
  correct_BxT = (argmax(logits_BxTxV) == targets_BxT).astype(jnp.float32)
  if weights_BxT is None:
    return jnp.sum(correct_BxT), jnp.asarray(correct_BxT.size, jnp.float32)
  weights_BxT = weights_BxT.astype(jnp.float32)
  return jnp.sum(correct_BxT * weights_BxT), jnp.sum(weights_BxT)
