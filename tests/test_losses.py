"""prompt_tuning.train.losses against a float64 numpy reference written from the definitions.

The reference uses the KL form: loss per token = KL(q || softmax(logits)) + z_loss * log_z**2, where
q is the label-smoothed target. T5X's cross-entropy minus its normalising constant is the same thing
(the constant is q's entropy), so agreement checks the formula, not a transcription of it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.train import losses

B, T, V = 3, 7, 11


def _log_z(logits):
  m = logits.max(-1, keepdims=True)
  return (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]


def _smoothed(targets, vocab, label_smoothing):
  q = np.full(targets.shape + (vocab,), label_smoothing / (vocab - 1))
  np.put_along_axis(q, targets[..., None], 1.0 - label_smoothing, axis=-1)
  return q


def _reference(logits, targets, weights=None, z_loss=1e-4, label_smoothing=0.0, divisor=None):
  """(loss, z, weight_sum) in float64; `divisor` is the resolved normalising number or None."""
  logits = np.asarray(logits, np.float64)
  log_z = _log_z(logits)
  log_p = logits - log_z[..., None]
  q = _smoothed(np.asarray(targets), logits.shape[-1], label_smoothing)
  q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
  kl = (q_log_q - q * log_p).sum(-1)
  z = z_loss * log_z**2
  w = np.ones(targets.shape) if weights is None else np.asarray(weights, np.float64)
  loss, z_total, weight_sum = (w * (kl + z)).sum(), (w * z).sum(), w.sum()
  if divisor is not None:
    loss, z_total = loss / divisor, z_total / divisor
  return loss, z_total, weight_sum


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  logits = (3.0 * rng.standard_normal((B, T, V))).astype(np.float32)
  targets = rng.integers(0, V, (B, T)).astype(np.int32)
  lengths = np.array([T, 4, 1])
  weights = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  targets = targets * weights.astype(np.int32)  # padded positions hold PAD (0), as in real batches
  return logits, targets, weights


def _close(ours, ref, rtol=2e-6, atol=1e-6):
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(np.asarray(a), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
@pytest.mark.parametrize('use_weights', [False, True])
def test_matches_reference(batch, label_smoothing, use_weights):
  logits, targets, weights = batch
  w = weights if use_weights else None
  ours = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets),
                                   None if w is None else jnp.asarray(w),
                                   label_smoothing=label_smoothing)
  _close(ours, _reference(logits, targets, w, label_smoothing=label_smoothing))
  assert ours[0].dtype == jnp.float32
  assert float(ours[2]) == (weights.sum() if use_weights else B * T)


def test_unsmoothed_is_negative_log_likelihood(batch):
  logits, targets, weights = batch
  loss, _, _ = losses.cross_entropy_loss(logits, targets, weights, z_loss=0.0)
  log_p = logits.astype(np.float64) - _log_z(logits)[..., None]
  nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss), (nll * weights).sum(), rtol=2e-6)


def test_padding_is_ignored(batch):
  logits, targets, weights = batch
  scrambled_logits = np.where(weights[..., None] > 0, logits, 100.0 * logits)
  scrambled_targets = np.where(weights > 0, targets, V - 1)
  a = losses.cross_entropy_loss(logits, targets, weights, label_smoothing=0.1)
  b = losses.cross_entropy_loss(scrambled_logits, scrambled_targets, weights, label_smoothing=0.1)
  _close(b, [np.asarray(x) for x in a])


@pytest.mark.parametrize('factor', [None, 7.5, losses.NUM_REAL_TARGET_TOKENS])
def test_loss_normalizing_factor(batch, factor):
  logits, targets, weights = batch
  divisor = weights.sum() if factor == losses.NUM_REAL_TARGET_TOKENS else factor
  ours = losses.cross_entropy_loss(logits, targets, weights, label_smoothing=0.1,
                                   loss_normalizing_factor=factor)
  _close(ours, _reference(logits, targets, weights, label_smoothing=0.1, divisor=divisor))


def test_normalizing_factor_under_jit(batch):
  logits, targets, weights = batch
  fn = jax.jit(lambda x, t, w: losses.cross_entropy_loss(
      x, t, w, loss_normalizing_factor=losses.NUM_REAL_TARGET_TOKENS))
  _close(fn(logits, targets, weights),
         _reference(logits, targets, weights, divisor=weights.sum()))
  # A traced numeric factor (e.g. computed from the batch) is accepted too.
  fn = jax.jit(lambda x, t, w, f: losses.cross_entropy_loss(x, t, w, loss_normalizing_factor=f))
  _close(fn(logits, targets, weights, jnp.float32(3.0)),
         _reference(logits, targets, weights, divisor=3.0))


def test_z_loss_isolated(batch):
  logits, targets, weights = batch
  coef = 0.25  # large, so that the z term is far from negligible
  loss, z_total, _ = losses.cross_entropy_loss(logits, targets, weights, z_loss=coef)
  loss_without, z_without, _ = losses.cross_entropy_loss(logits, targets, weights, z_loss=0.0)
  expected_z = coef * (weights * _log_z(logits.astype(np.float64))**2).sum()
  assert expected_z > 1.0
  np.testing.assert_allclose(float(z_total), expected_z, rtol=2e-6)
  assert float(z_without) == 0.0
  # The returned loss includes the z term, as T5X's does.
  np.testing.assert_allclose(float(loss - loss_without), expected_z, rtol=1e-5)


def test_gradient_is_finite_and_analytic(batch):
  logits, targets, weights = batch
  logits = 30.0 * logits  # large logits: log_z ~ 100, softmax nearly one-hot
  coef, ls = 1e-4, 0.1
  grad = jax.grad(lambda x: losses.cross_entropy_loss(
      x, targets, weights, z_loss=coef, label_smoothing=ls)[0])(jnp.asarray(logits))
  grad = np.asarray(grad)
  assert np.isfinite(grad).all()
  # d/dlogits [KL(q || p) + c log_z^2] = p * (1 + 2 c log_z) - q, times the token weight.
  l64 = logits.astype(np.float64)
  log_z = _log_z(l64)
  p = np.exp(l64 - log_z[..., None])
  q = _smoothed(targets, V, ls)
  expected = weights[..., None] * (p * (1 + 2 * coef * log_z)[..., None] - q)
  np.testing.assert_allclose(grad, expected, atol=2e-5)


def test_perfect_smoothed_prediction_scores_only_z():
  targets = np.array([[2, 0, 5]], np.int32)
  q = _smoothed(targets, V, 0.2)
  loss, z_total, _ = losses.cross_entropy_loss(np.log(q).astype(np.float32), targets,
                                               label_smoothing=0.2)
  # log q is already normalised (log_z = 0), and its KL to itself is 0.
  assert abs(float(loss)) < 1e-5 and abs(float(z_total)) < 1e-10


def test_bfloat16_logits_computed_in_float32(batch):
  logits, targets, weights = batch
  as_bf16 = jnp.asarray(logits, jnp.bfloat16)
  loss, _, _ = losses.cross_entropy_loss(as_bf16, targets, weights)
  assert loss.dtype == jnp.float32
  ref, _, _ = _reference(np.asarray(as_bf16.astype(jnp.float32)), targets, weights)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-6)


@pytest.mark.parametrize('bad', ['num_real_target_tokens', 'NUM_TOKENS', True, [2.0]])
def test_bad_normalizing_factor(batch, bad):
  logits, targets, weights = batch
  with pytest.raises(ValueError, match='loss_normalizing_factor') as info:
    losses.cross_entropy_loss(logits, targets, weights, loss_normalizing_factor=bad)
  assert repr(bad) in str(info.value)


def test_bad_shapes_and_smoothing(batch):
  logits, targets, _ = batch
  with pytest.raises(ValueError, match='one more axis'):
    losses.cross_entropy_loss(logits, targets[..., None])
  with pytest.raises(ValueError, match='label_smoothing'):
    losses.cross_entropy_loss(logits, targets, label_smoothing=1.0)


def test_token_accuracy(batch):
  logits, targets, weights = batch
  targets = targets.copy()
  targets[0, :3] = logits[0, :3].argmax(-1)  # make sure some are right
  correct = (logits.argmax(-1) == targets).astype(np.float64)
  num, den = losses.token_accuracy(logits, targets, weights)
  assert float(num) == (correct * weights).sum() and float(den) == weights.sum()
  assert 0 < float(num) < float(den)
  num, den = losses.token_accuracy(logits, targets)
  assert float(num) == correct.sum() and float(den) == B * T
