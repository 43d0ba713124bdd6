"""prompt_tuning.train.optim: Adafactor against T5X's update written out here, schedules, names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.train import optim

P, D = 100, 16
STEPS = 10


def _t5x_adafactor_step(param, v, grad, step, *, lr=0.3, decay_exponent=0.8,
                        clipping_threshold=1.0, weight_decay_rate=1e-5, eps=1e-30):
  """One update of T5X's Adafactor (unfactored, no momentum, no parameter scaling), in numpy.

  `step` is the optimizer's step before this update. The decay is computed in float32, as T5X does
  (`jnp.array(i, float32) + 1`): near step 1.1M, `1 - decay` is ~1.5e-5 and float32 rounding moves
  it by up to ~0.4%, which is part of the algorithm as run. Everything else is float64.
  Returns (new_param, new_v).
  """
  param, grad = np.asarray(param, np.float64), np.asarray(grad, np.float64)
  t = np.float32(step) + np.float32(1.0)
  decay = np.float64(np.float32(1.0) - t ** np.float32(-decay_exponent))
  v = decay * v + (1.0 - decay) * (grad * grad + eps)
  y = grad / np.sqrt(v)
  y = y / max(1.0, np.sqrt(np.mean(y * y)) / clipping_threshold)
  return (1.0 - weight_decay_rate) * param - lr * y, v


def _run(tx, param, grads):
  state = tx.init(param)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, param)  # eager: faster than compiling per optimizer here
    param = optax.apply_updates(param, updates)
    out.append(np.asarray(param))
  return out


@pytest.fixture(scope='module')
def problem():
  rng = np.random.default_rng(1234)
  param = rng.uniform(-0.5, 0.5, (P, D)).astype(np.float32)
  # Varying scales per step and per row, so the second-moment mixing matters.
  grads = [rng.standard_normal((P, D)) * rng.uniform(0.1, 3.0, (P, 1)) * (1 + i)
           for i in range(STEPS)]
  grads = [g.astype(np.float32) for g in grads]
  return jnp.asarray(param), [jnp.asarray(g) for g in grads]


@pytest.mark.parametrize('step_offset', [0, 1_100_000])
def test_adafactor_matches_t5x_formulas(problem, step_offset):
  param, grads = problem
  ours = _run(optim.adafactor(step_offset=step_offset), param, grads)
  # With our mapping, update i runs at T5X step `step_offset + i`.
  prev_ours, ref, v = np.asarray(param), np.asarray(param), 0.0
  for i, g in enumerate(grads):
    # Each update applied to *our* previous parameters (v never depends on them): isolates the
    # update rule from the float32 rounding our parameters accumulate over the steps.
    expected, _ = _t5x_adafactor_step(prev_ours, v, g, step_offset + i)
    ref, v = _t5x_adafactor_step(ref, v, g, step_offset + i)
    assert np.max(np.abs(ours[i] - expected)) < 1e-6, f'update {i}'
    # Free-running float64 trajectory: float32 parameters drift from it by up to half an ulp per
    # step (|p| reaches ~3, ulp 2.4e-7), hence 2e-6 after ten steps.
    assert np.max(np.abs(ours[i] - ref)) < 1e-6, f'update {i}'
    prev_ours = ours[i]
  assert 1.0 < np.max(np.abs(ours[-1])) < 5  # values O(1): the tolerances above are meaningful


def test_step_offset_changes_the_trajectory(problem):
  param, grads = problem
  fresh = _run(optim.adafactor(step_offset=0), param, grads)
  restored = _run(optim.adafactor(step_offset=1_100_000), param, grads)
  # Update 0 agrees: a single squared gradient, whatever its weight, normalises to the same sign
  # pattern after clipping. From update 1 on the decay differs (0.43 vs ~1 - 1.5e-5).
  np.testing.assert_allclose(fresh[0], restored[0], atol=1e-6)
  assert np.max(np.abs(fresh[-1] - restored[-1])) > 1e-2
  # And the reference with the wrong offset does not match either of them.
  wrong, v = np.asarray(param), 0.0
  for i, g in enumerate(grads):
    wrong, v = _t5x_adafactor_step(wrong, v, g, i)
  assert np.max(np.abs(restored[-1] - wrong)) > 1e-2


def test_adafactor_learning_rate_schedule_and_weight_decay(problem):
  param, grads = problem
  # A zero gradient leaves only the weight decay (y = 0, v = eps): p <- (1 - wd) p.
  zeros = [jnp.zeros_like(param)] * 3
  out = _run(optim.adafactor(weight_decay_rate=0.1), param, zeros)
  np.testing.assert_allclose(out[-1], 0.9**3 * np.asarray(param), rtol=1e-6)
  # A schedule is evaluated at the optimizer's count: zero at update 0 means only decay happens.
  sched = optim.make_schedule('linear_warmup', 0.3, warmup_steps=4)
  out = _run(optim.adafactor(sched, weight_decay_rate=None), param, grads[:2])
  np.testing.assert_array_equal(out[0], np.asarray(param))
  assert np.max(np.abs(out[1] - out[0])) > 1e-3


@pytest.mark.parametrize('shape', [(P, D), (200, 256)])
def test_adafactor_preset_is_unfactored(shape):
  param = {'prompt': jnp.ones(shape, jnp.float32)}
  state = optim.adafactor().init(param)
  factored = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, 'v_row'))
              if hasattr(s, 'v_row')]
  assert len(factored) == 1
  (s,) = factored
  assert s.v['prompt'].shape == shape
  assert s.v_row['prompt'].shape == (1,) and s.v_col['prompt'].shape == (1,)
  if min(shape) >= 128:
    # Control: the same shape *is* factored when asked, so the check above can fail.
    (f,) = [x for x in jax.tree.leaves(optim.adafactor(factored=True).init(param),
                                       is_leaf=lambda x: hasattr(x, 'v_row'))
            if hasattr(x, 'v_row')]
    assert f.v['prompt'].shape == (1,) and f.v_row['prompt'].shape == (shape[0],)


def test_adafactor_rejects_negative_offset():
  with pytest.raises(ValueError, match='step_offset'):
    optim.adafactor(step_offset=-1)


def _at(schedule, step):
  return float(schedule(jnp.asarray(step, jnp.int32)))


def test_schedules():
  lr = 0.3
  const = optim.make_schedule('constant', lr)
  assert _at(const, 0) == pytest.approx(lr) and _at(const, 10**6) == pytest.approx(lr)

  warm = optim.make_schedule('linear_warmup', lr, warmup_steps=100)
  for step, want in [(0, 0.0), (25, lr / 4), (100, lr), (5000, lr)]:
    assert _at(warm, step) == pytest.approx(want, abs=1e-7)
  assert _at(optim.make_schedule('linear_warmup', lr), 0) == pytest.approx(lr)

  rsqrt = optim.make_schedule('rsqrt', 1.0, warmup_steps=10_000)
  for step, want in [(0, 0.01), (9_999, 0.01), (10_000, 0.01), (40_000, 0.005), (1_000_000, 0.001)]:
    assert _at(rsqrt, step) == pytest.approx(want, rel=1e-6)

  cos = optim.make_schedule('cosine', lr, warmup_steps=10, decay_steps=110, end_value=0.03)
  for step, want in [(0, 0.0), (5, lr / 2), (10, lr), (60, (lr + 0.03) / 2), (110, 0.03),
                     (500, 0.03)]:
    assert _at(cos, step) == pytest.approx(want, abs=1e-6)


def test_schedule_errors():
  with pytest.raises(ValueError, match='decay_steps'):
    optim.make_schedule('cosine', 0.3, warmup_steps=10)
  with pytest.raises(ValueError, match='warmup_steps'):
    optim.make_schedule('rsqrt', 0.3)
  with pytest.raises(ValueError, match="'inverse_sqrt'.*constant, linear_warmup, rsqrt, cosine"):
    optim.make_schedule('inverse_sqrt', 0.3)


def test_make_optimizer_adafactor_is_the_preset(problem):
  param, grads = problem
  np.testing.assert_array_equal(_run(optim.make_optimizer(), param, grads[:3])[-1],
                                _run(optim.adafactor(), param, grads[:3])[-1])
  # weight_decay=0 really turns the preset's 1e-5 off, and step_offset is forwarded.
  a = _run(optim.make_optimizer(weight_decay=0.0, step_offset=7), param, grads[:3])[-1]
  b = _run(optim.adafactor(weight_decay_rate=0.0, step_offset=7), param, grads[:3])[-1]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, _run(optim.adafactor(), param, grads[:3])[-1])


def test_make_optimizer_adamw_and_sgd(problem):
  param, grads = problem
  p0, g0 = np.asarray(param), np.asarray(grads[0])
  # Adam's first step moves each coordinate by lr * sign(g) (up to eps); no decay by default.
  (a,) = _run(optim.make_optimizer('adamw', 0.01), param, grads[:1])
  np.testing.assert_allclose(a, p0 - 0.01 * np.sign(g0), atol=1e-6)
  (a,) = _run(optim.make_optimizer('adamw', 0.01, weight_decay=0.5), param, grads[:1])
  np.testing.assert_allclose(a, p0 - 0.01 * (np.sign(g0) + 0.5 * p0), atol=1e-6)

  (s,) = _run(optim.make_optimizer('sgd', 0.1), param, grads[:1])
  np.testing.assert_allclose(s, p0 - 0.1 * g0, rtol=1e-6, atol=1e-6)
  s2 = _run(optim.make_optimizer('sgd', 0.1, momentum=0.9), param, grads[:2])[-1]
  g1 = np.asarray(grads[1])
  np.testing.assert_allclose(s2, p0 - 0.1 * g0 - 0.1 * (0.9 * g0 + g1), rtol=1e-5, atol=1e-5)
  (s,) = _run(optim.make_optimizer('sgd', 0.1, weight_decay=0.01), param, grads[:1])
  np.testing.assert_allclose(s, p0 - 0.1 * (g0 + 0.01 * p0), rtol=1e-6, atol=1e-6)


def test_make_optimizer_errors():
  with pytest.raises(ValueError, match="'adam'.*adafactor, adamw, sgd"):
    optim.make_optimizer('adam')
  with pytest.raises(ValueError, match='step_offset'):
    optim.make_optimizer('adamw', 1e-3, step_offset=5)
  with pytest.raises(ValueError, match='decay_steps'):
    optim.make_optimizer('adafactor', schedule='cosine')
