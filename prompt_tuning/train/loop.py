"""The training loop: restore or start, step, check for divergence, save.

Data arrives through `batches(start_position)`, an iterator factory, so a resumed run continues
from the exact batch it stopped at (the position is saved with each checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np

from prompt_tuning import checkpoints, prompts
from prompt_tuning.train import state as state_lib
from prompt_tuning.train.trainer import PromptTrainer, TrainState

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
  """The loss became NaN/inf; the message names the step and the last good checkpoint."""


def load_base_checkpoint(path: Optional[str], config=None):
  """(config, frozen params) from INITIAL_CHECKPOINT_PATH; a prompt stored there is dropped."""
  if not path:
    raise ValueError('No base checkpoint: set INITIAL_CHECKPOINT_PATH to a T5X checkpoint or a '
                     'Hugging Face T5 1.1 directory.')
  try:
    config, params = checkpoints.load_params(path, config)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(f'Cannot load the base checkpoint '
                                      f'(INITIAL_CHECKPOINT_PATH): {e}') from e
  frozen, _ = prompts.split_params(params)
  return config, frozen


def run_info(trainer: PromptTrainer, initial_checkpoint: Optional[str] = None) -> dict:
  return {'prompt_length': trainer.prompt_config.length,
          'd_model': trainer.model_config.d_model,
          'placement': trainer.prompt_config.placement,
          'initial_checkpoint': initial_checkpoint,
          'model_config': dataclasses.asdict(trainer.model_config)}


def train(trainer: PromptTrainer, batches: Callable[[int], Iterator[dict]], model_dir: str,
          num_steps: int, *, prompt_init: Callable[[Any, tuple[int, int]], Any],
          seed: int = 0, save_every: int = 1000, keep: Optional[int] = 1,
          initial_checkpoint: Optional[str] = None,
          on_metrics: Optional[Callable[[int, dict], None]] = None,
          check_every: int = 10,
          periodic: Sequence[tuple[int, Callable[[int, TrainState], None]]] = (),
          periodic_at_start: bool = False) -> TrainState:
  """Prompt-tunes until `num_steps`, resuming from MODEL_DIR's latest checkpoint if any.

  Losses are checked for NaN/inf at least every `check_every` steps and before every save, so
  a diverged state is never written; the error names the first bad step. `periodic` holds
  (every_n_steps, fn(step, state)) hooks, e.g. evaluation, run after that step's save (and on
  the initial state of a new run with `periodic_at_start`).
  """
  info = run_info(trainer, initial_checkpoint)
  state_lib.check_run_info(model_dir, info, write=False)
  resuming = state_lib.has_checkpoint(model_dir)
  if not resuming:
    # Build the initial prompt before touching MODEL_DIR: a bad prompt file writes nothing.
    rng = jax.random.PRNGKey(seed)
    state = trainer.init_state(prompt_init(jax.random.fold_in(rng, 1), trainer.prompt_shape),
                               seed=seed)
  # One writer on a MODEL_DIR shared by all hosts, as for the numpy prompts; others only check.
  state_lib.check_run_info(model_dir, info, write=jax.process_index() == 0)
  ckpt = state_lib.PromptCheckpointer(model_dir, keep=keep)
  try:
    if resuming:
      state, meta = ckpt.restore(trainer.abstract_state())
      position = meta['data_position']
      log.info('Resumed %s at step %d (data position %d).', model_dir, meta['step'], position)
    else:
      position = 0
      ckpt.save(state, position)  # step 0: the initial prompt, as the anchor keeps it too
      if periodic_at_start:
        for _, fn in periodic:
          fn(0, state)
    step = int(jax.device_get(state.step))
    data = batches(position)
    pending: list[tuple[int, Any]] = []
    while step < num_steps:
      try:
        batch = next(data)
      except StopIteration:
        raise ValueError(f'The training data ran out at step {step} (position {position}); '
                         f'it must repeat or hold at least {num_steps} batches.') from None
      state, metrics = trainer.train_step(state, batch)
      step += 1
      position += 1
      pending.append((step, metrics))
      due_save = step % save_every == 0 or step == num_steps
      if len(pending) >= check_every or due_save:
        _check_finite(pending, ckpt, model_dir)
        if on_metrics is not None:
          for s, m in pending:
            on_metrics(s, {k: float(v) for k, v in jax.device_get(m).items()})
        pending = []
      if due_save:
        ckpt.save(state, position)
      for every, fn in periodic:
        if every and (step % every == 0 or step == num_steps):
          fn(step, state)
    return state
  finally:
    ckpt.close()


def _check_finite(pending: list, ckpt: state_lib.PromptCheckpointer, model_dir: str) -> None:
  # The loss is computed before the step's update, the prompt norm after it: both must be finite.
  values = jax.device_get([(m['loss'], m['prompt_norm']) for _, m in pending])
  for (step, _), (loss, norm) in zip(pending, values):
    loss, norm = float(np.asarray(loss)), float(np.asarray(norm))
    if not (math.isfinite(loss) and math.isfinite(norm)):
      raise TrainingDivergedError(
          f'Non-finite training (loss {loss}, prompt norm {norm}) at step {step}; stopped '
          f'without saving. The last good checkpoint is step {ckpt.latest_step()} in '
          f'{model_dir} (resume from it with a lower learning rate or different data).')
