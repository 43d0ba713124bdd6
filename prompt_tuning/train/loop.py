"""The training loop: restore or start, step, check for divergence, save.

Data arrives through `batches(start_position)`, an iterator factory, so a resumed run continues
from the exact batch it stopped at (the position is saved with each checkpoint).
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import jax
import numpy as np

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import repair as repair_lib
from prompt_tuning.train import preemption
from prompt_tuning.train import state as state_lib
from prompt_tuning.train.trainer import PromptTrainer, TrainState

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
  """The loss became NaN/inf; the message names the step and the last good checkpoint."""


def run_info(trainer: PromptTrainer, initial_checkpoint: Optional[str] = None,
             prompt_names: Optional[Sequence[str]] = None) -> dict:
  """run_info.json of the trainer's run (PromptTrainer.run_info)."""
  return trainer.run_info(initial_checkpoint, prompt_names)


class Periodic(NamedTuple):
  """A hook run after the save of every `every`-th step (and of the last); `done(step)` says
  whether a previous process already ran it whole, so a restart redoes only what a kill cut."""
  every: int
  fn: Callable[[int, TrainState], None]
  done: Optional[Callable[[int], bool]] = None


def train(trainer: PromptTrainer, batches: Callable[[int], Iterator[dict]], model_dir: str,
          num_steps: int, *,
          prompt_init: Optional[Callable[[Any, tuple[int, ...]], Any]],
          seed: int = 0, save_every: int = 1000, keep: Optional[int] = 1,
          initial_checkpoint: Optional[str] = None,
          prompt_names: Optional[Sequence[str]] = None,
          on_metrics: Optional[Callable[[int, dict], None]] = None,
          check_every: int = 10,
          periodic: Sequence[tuple] = (),
          periodic_at_start: bool = False,
          before_write: Optional[Callable[[], None]] = None,
          before_save: Optional[Callable[[int], None]] = None) -> TrainState:
  """Prompt-tunes until `num_steps`, resuming from MODEL_DIR's latest committed step if any.

  `prompt_names` name a table's prompts in run_info.json (a multi-task run: its tasks).
  Everything that can fail on bad input (MODEL_DIR of another run, a damaged checkpoint, a bad
  initial prompt, the first batch of data) is done before the first write; `before_write` runs
  just before it. A restart first repairs what a kill left (see model_dir.repair) and reruns a
  `periodic` hook of the resumed step that did not finish. Losses are checked for NaN/inf at
  least every `check_every` steps and before every save, so a diverged state is never written.
  SIGTERM/SIGINT save the current step and raise preemption.Preempted. `before_save(step)` runs
  before each save commits: what the step logged is durable when its commit names it.
  """
  hooks = [Periodic(*p) for p in periodic]
  info = run_info(trainer, initial_checkpoint, prompt_names)
  model_dir_lib.check_usable(model_dir)
  model_dir_lib.check_run_info(model_dir, info, write=False)
  latest = model_dir_lib.latest_step(model_dir)
  if latest is None:
    state = trainer.start_state(prompt_init, seed)
    position = 0
  else:
    reader = state_lib.PromptCheckpointer(model_dir, keep=None, read_only=True)
    try:
      state, meta = reader.restore(trainer.abstract_state(), latest)
    finally:
      reader.close()
    position = meta['data_position']
  step = int(jax.device_get(state.step))
  data: Iterator[dict] = iter(())
  if step < num_steps:
    data = batches(position)
    first = _next_batch(data, step, position, num_steps)  # bad data fails before any write
    data = itertools.chain([first], data)

  with preemption.SignalGuard():
    if before_write is not None:
      before_write()
    writer = jax.process_index() == 0
    # One writer on a MODEL_DIR shared by all hosts; the others only check.
    model_dir_lib.check_run_info(model_dir, info, write=writer)
    if writer:
      repair_lib.repair(model_dir, keep)
    _sync('repair')
    ckpt = state_lib.PromptCheckpointer(model_dir, keep=keep, copy=trainer.write_copy,
                                        prune=trainer.prune_copies)
    try:
      if latest is None:
        if before_save is not None:
          before_save(step)
        ckpt.save(state, position)  # step 0: the initial prompt, as the anchor keeps it too
        preemption.crash_point('after_save', step)
      else:
        log.info('Resumed %s at step %d (data position %d).', model_dir, step, position)
      for hook in hooks:  # a new run's evaluation at start, or one a kill cut short
        due = periodic_at_start if step == 0 else _due(hook, step, num_steps)
        if due and not (hook.done is not None and hook.done(step)):
          _run_hook(hook, step, state, model_dir)
      pending: list[tuple[int, Any]] = []
      while step < num_steps:
        batch = _next_batch(data, step, position, num_steps)
        state, metrics = trainer.train_step(state, batch)
        step += 1
        position += 1
        preemption.crash_point('step', step)
        pending.append((step, metrics))
        due_save = step % save_every == 0 or step == num_steps
        stop = preemption.agreed(check=len(pending) >= check_every or due_save)
        if len(pending) >= check_every or due_save or stop:
          _check_finite(pending, ckpt, model_dir, trainer.NORM_METRIC)
          if on_metrics is not None:
            for s, m in pending:
              on_metrics(s, {k: float(v) for k, v in jax.device_get(m).items()})
          pending = []
        if due_save or stop:
          if before_save is not None:
            before_save(step)
          ckpt.save(state, position)
          preemption.crash_point('after_save', step)
        if stop:
          raise preemption.Preempted(stop, step, model_dir)
        for hook in hooks:
          if _due(hook, step, num_steps):
            _run_hook(hook, step, state, model_dir)
      return state
    finally:
      ckpt.close()


def _due(hook: Periodic, step: int, num_steps: int) -> bool:
  return bool(hook.every) and (step % hook.every == 0 or step == num_steps)


def _run_hook(hook: Periodic, step: int, state: TrainState, model_dir: str) -> None:
  try:
    hook.fn(step, state)
  except preemption.Interrupted as e:  # a signal during an evaluation: the step is saved
    raise preemption.Preempted(e.signal_name, step, model_dir) from None


def _next_batch(data: Iterator[dict], step: int, position: int, num_steps: int) -> dict:
  try:
    return next(data)
  except StopIteration:
    raise ValueError(f'The training data ran out at step {step} (position {position}); '
                     f'it must repeat or hold at least {num_steps} batches.') from None


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _check_finite(pending: list, ckpt: state_lib.PromptCheckpointer, model_dir: str,
                  norm: str = 'prompt_norm') -> None:
  # The loss is computed before the step's update, the trained norm after it: both must be finite.
  values = jax.device_get([(m['loss'], m[norm]) for _, m in pending])
  name = norm.replace('_', ' ')  # 'prompt norm'
  for (step, _), (loss, value) in zip(pending, values):
    loss, value = float(np.asarray(loss)), float(np.asarray(value))
    if not (math.isfinite(loss) and math.isfinite(value)):
      raise TrainingDivergedError(
          f'Non-finite training (loss {loss}, {name} {value}) at step {step}; stopped '
          f'without saving. The last good checkpoint is step {ckpt.latest_step()} in '
          f'{model_dir} (resume from it with a lower learning rate or different data).')
