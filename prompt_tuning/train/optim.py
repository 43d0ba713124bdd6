"""Learning-rate schedules and prompt-only optimizers, as optax GradientTransformations.

The caller hands these optimizers only the prompt subtree, so nothing here masks frozen weights.
The default is the paper's setting: Adafactor at learning rate 0.3, second-moment decay exponent
0.8, update clipping 1.0, weight decay 1e-5, no parameter scaling, no momentum and an *unfactored*
second-moment estimate (a `[P, D]` prompt is small, so the full accumulator costs nothing). Every
step count below is optax's: the number of updates this optimizer has applied, starting at 0.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union, get_args

import jax.numpy as jnp
import optax

ScheduleName = Literal['constant', 'linear_warmup', 'rsqrt', 'cosine']
OptimizerName = Literal['adafactor', 'adamw', 'sgd']
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)

# The paper's Adafactor weight decay; `make_optimizer(weight_decay=None)` means this for adafactor.
PAPER_WEIGHT_DECAY = 1e-5


def make_schedule(
    name: ScheduleName,
    learning_rate: float,
    *,
    warmup_steps: int = 0,
    decay_steps: Optional[int] = None,
    end_value: float = 0.0,
) -> optax.Schedule:
  """A learning-rate schedule by name.

  Args:
    name: 'constant'; 'linear_warmup' (0 -> learning_rate linearly over `warmup_steps`, then flat);
      'rsqrt' (T5X's 'constant * rsqrt_decay': learning_rate / sqrt(max(step, warmup_steps)), flat
      at learning_rate / sqrt(warmup_steps) until warmup_steps, no ramp); 'cosine' (linear warmup
      from 0 to learning_rate, then cosine decay to `end_value` at step `decay_steps`, which counts
      the warmup, as in optax.warmup_cosine_decay_schedule).
    learning_rate: the peak (or base, for 'rsqrt') learning rate.
    warmup_steps: see `name`; 'rsqrt' needs at least 1 (its value at step 0 is otherwise infinite).
    decay_steps: total length of the 'cosine' schedule; required there, unused elsewhere.
    end_value: final value of the 'cosine' schedule.

  Returns:
    A function from the optimizer's step count to the learning rate.
  """
  if name == 'constant':
    return optax.constant_schedule(learning_rate)
  if name == 'linear_warmup':
    if warmup_steps <= 0:
      return optax.constant_schedule(learning_rate)
    # Written out rather than optax.linear_schedule, whose zero-length case holds the *initial* 0.
    return lambda step: learning_rate * jnp.minimum(1.0, step / warmup_steps)
  if name == 'rsqrt':
    if warmup_steps < 1:
      raise ValueError(f"The 'rsqrt' schedule needs warmup_steps >= 1 (got {warmup_steps}): it "
                       'is learning_rate / sqrt(max(step, warmup_steps)), infinite at step 0 '
                       'otherwise.')
    return lambda step: learning_rate / jnp.sqrt(
        jnp.maximum(step, warmup_steps).astype(jnp.float32))
  if name == 'cosine':
    if decay_steps is None:
      raise ValueError("The 'cosine' schedule needs decay_steps (total steps, warmup included).")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=decay_steps, end_value=end_value)
  raise ValueError(f'Unknown schedule {name!r}; choose one of {", ".join(SCHEDULES)}.')


def adafactor(
    learning_rate: Union[float, optax.Schedule] = 0.3,
    *,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    clipping_threshold: Optional[float] = 1.0,
    weight_decay_rate: Optional[float] = PAPER_WEIGHT_DECAY,
    multiply_by_parameter_scale: bool = False,
    factored: bool = False,
    eps: float = 1e-30,
) -> optax.GradientTransformation:
  """T5X's Adafactor with the paper's prompt-tuning preset, built on optax.adafactor.

  The second-moment decay of update i (i = 0, 1, ...) is `1 - (step_offset + i + 1)**-decay_rate`:
  the optimizer behaves as if its step counter had started at `step_offset`. This matters because
  the anchor (T5X) implementation restores the step counter from the pretrained checkpoint
  (1,100,000 for the lm100k checkpoints), so its decay starts near 1 and the second-moment estimate
  averages over a long horizon from the first update. `step_offset=1_100_000` reproduces that; the
  default 0 counts from the start of prompt tuning (decay 0 at the first update, as for a fresh
  optimizer).
  The offset moves only the decay schedule: a learning-rate schedule still sees steps 0, 1, ...
  (T5X's would see the restored global step; the paper's constant rate makes that moot).

  Args:
    learning_rate: a float or an optax schedule of the optimizer's step count.
    decay_rate: exponent of the second-moment decay schedule.
    step_offset: where the decay schedule's counter starts (see above); >= 0.
    clipping_threshold: cap on the RMS of each parameter's normalised update; None disables.
    weight_decay_rate: decoupled decay, `param *= 1 - weight_decay_rate` each step (not scaled by
      the learning rate, as in T5X); None disables.
    multiply_by_parameter_scale: scale updates by each parameter's RMS (off for prompts).
    factored: factor the second moment of >= 2-D parameters whose two largest dims are >= 128.
    eps: added to squared gradients (T5X's epsilon1).

  Returns:
    The optax GradientTransformation.
  """
  if step_offset < 0:
    raise ValueError(f'step_offset must be >= 0, got {step_offset}.')
  # optax evaluates its decay at `count - decay_offset`: a negative offset moves the counter ahead.
  return optax.adafactor(
      learning_rate=learning_rate,
      decay_rate=decay_rate,
      decay_offset=-step_offset,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      momentum=None,
      weight_decay_rate=weight_decay_rate,
      eps=eps,
      factored=factored,
  )


def make_optimizer(
    name: OptimizerName = 'adafactor',
    learning_rate: float = 0.3,
    *,
    schedule: ScheduleName = 'constant',
    warmup_steps: int = 0,
    decay_steps: Optional[int] = None,
    weight_decay: Optional[float] = None,
    step_offset: int = 0,
    **kwargs: Any,
) -> optax.GradientTransformation:
  """An optimizer by name, with a learning-rate schedule by name (see `make_schedule`).

  Args:
    name: 'adafactor' (the paper's preset; `weight_decay=None` keeps its 1e-5), 'adamw'
      (optax.adamw, decoupled weight decay, None meaning 0), or 'sgd' (optax.sgd; a `weight_decay`
      adds the usual L2 term `weight_decay * param` to the gradient).
    learning_rate: peak/base learning rate handed to the schedule, or a schedule itself.
    schedule: schedule name for `make_schedule`.
    warmup_steps: schedule warmup.
    decay_steps: schedule length ('cosine' only).
    weight_decay: see `name`.
    step_offset: Adafactor's decay-schedule counter start (see `adafactor`); adafactor only.
    **kwargs: passed on to `adafactor`, optax.adamw or optax.sgd (e.g. momentum=0.9 for sgd).

  Returns:
    The optax GradientTransformation.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r}; choose one of {", ".join(OPTIMIZERS)}.')
  if step_offset and name != 'adafactor':
    raise ValueError(f'step_offset applies to adafactor only, not {name!r}.')
  if callable(learning_rate):  # already a schedule (e.g. built by gin from make_schedule)
    lr = learning_rate
  else:
    lr = make_schedule(schedule, learning_rate, warmup_steps=warmup_steps,
                       decay_steps=decay_steps)
  if name == 'adafactor':
    wd = PAPER_WEIGHT_DECAY if weight_decay is None else weight_decay
    return adafactor(lr, weight_decay_rate=wd, step_offset=step_offset, **kwargs)
  if name == 'adamw':
    return optax.adamw(lr, weight_decay=0.0 if weight_decay is None else weight_decay, **kwargs)
  sgd = optax.sgd(lr, **kwargs)
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
  return sgd


def fit_from_scratch(params: Any, batch_loss: Any, batches: Any, steps: int,
                     learning_rate: float) -> Any:
  """Every weight trained with AdamW (warm-up then cosine decay, weight decay 1e-4) on
  `batch_loss(params, batch) -> mean token loss` for `steps` batches: how the quickstarts build
  their frozen toy models (not prompt tuning, which trains through train/trainer.py)."""
  import logging
  import time

  import jax
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, learning_rate, steps // 10, steps),
                   weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(batch_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.time()
  for i in range(1, steps + 1):
    params, opt_state, loss = step(params, opt_state, next(batches))
    if i % 100 == 0 or i == steps:
      logging.getLogger('prompt_tuning').info('model tuning %d/%d: loss/token %.4f (%.1fs)', i,
                                              steps, float(loss), time.time() - start)
  return params
