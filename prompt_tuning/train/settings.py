"""A training launch's settings checked and turned into a trainer (runs.train's first steps):
the numbers named by their gin macro, the prompts a run trains (one, one per task of a mixture,
or an ensemble's members), Adafactor's step offset, and the trainer built from the base
checkpoint. Nothing here imports TensorFlow or SeqIO at import time."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import numpy as np

from prompt_tuning import checkpoints
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.train import model_tuning, partitioning
from prompt_tuning.train.trainer import LossConfig, PromptTrainer

AdafactorStepOffset = Literal['zero', 'checkpoint'] | int | None
PROMPT = 'prompt'  # TRAINABLE of prompt tuning; 'all' or a subtree: model tuning


def adafactor_offset(setting: AdafactorStepOffset, checkpoint_step: int) -> int:
  if isinstance(setting, bool):  # True == 1 would pass as a step count
    raise ValueError(f"adafactor_step_offset must be 'zero', 'checkpoint' or a step count, "
                     f'got {setting!r}.')
  if setting in (None, 0, 'zero'):
    return 0
  if setting == 'checkpoint':
    return checkpoint_step
  if isinstance(setting, int) and setting > 0:
    return setting
  raise ValueError(f"adafactor_step_offset must be 'zero', 'checkpoint' or a step count, "
                   f'got {setting!r}.')


def build_trainer(*, model: Optional[t5.T5Config], prompt: PromptConfig,
                  initial_checkpoint_path: Optional[str], learning_rate: Any,
                  optimizer: Callable[..., Any],
                  adafactor_step_offset: AdafactorStepOffset = 'zero',
                  loss: LossConfig = LossConfig(), mesh_shape: Optional[Sequence[int]] = None,
                  frozen_dtype: Optional[str] = None,
                  trainable: str = PROMPT) -> tuple[PromptTrainer, int]:
  """(trainer, base checkpoint step) from the base checkpoint and the gin-bound settings;
  `trainable` other than 'prompt' builds a model-tuning trainer (train/model_tuning.py)."""
  config, frozen = checkpoints.load_base(initial_checkpoint_path, model)
  if trainable != PROMPT:
    model_tuning.check_trainable(trainable, frozen)  # before the mesh and the optimizer
  base_step = checkpoints.read_step(initial_checkpoint_path) if initial_checkpoint_path else 0
  offset = adafactor_offset(adafactor_step_offset, base_step)
  tx = optimizer(learning_rate=learning_rate, step_offset=offset) if offset else optimizer(
      learning_rate=learning_rate)
  mesh = partitioning.make_mesh(mesh_shape)
  schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
  if trainable != PROMPT:
    return model_tuning.ModelTrainer(config, frozen, tx, trainable=trainable, mesh=mesh,
                                     loss=loss, frozen_dtype=frozen_dtype,
                                     learning_rate_fn=schedule), base_step
  trainer = PromptTrainer(config, prompt, frozen, tx, mesh=mesh, loss=loss,
                          frozen_dtype=frozen_dtype, learning_rate_fn=schedule)
  return trainer, base_step


def check_model_tuning(trainable: str, prompt_per_task: bool, prompt_ensemble: int) -> None:
  """Model tuning trains one model: no prompt tables."""
  if trainable == PROMPT:
    return
  if prompt_per_task or prompt_ensemble != 1:
    raise ValueError(f'TRAINABLE = {trainable!r} tunes the model, which has no prompts: set '
                     f'PROMPT_PER_TASK = False and PROMPT_ENSEMBLE = 1 (a mixture is then '
                     f'model-tuned as one multi-task model).')


def task_prompts(prompt: PromptConfig, name: str, prompt_per_task: bool,
                  prompt_ensemble: int = 1) -> tuple[PromptConfig, Optional[list[str]]]:
  """(the PromptConfig to train, the prompts' names): with PROMPT_PER_TASK a table of one prompt
  per task of the mixture, named by its tasks; with PROMPT_ENSEMBLE N > 1 a table of N members
  of one task; otherwise the config as it is (one prompt)."""
  n = prompt_ensemble
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'PROMPT_ENSEMBLE = {n!r}: must be an integer >= 1 (the number of prompts '
                     f'trained together as an ensemble; 1: a single prompt).')
  if n > 1:
    if prompt_per_task:
      raise ValueError('Set PROMPT_PER_TASK (a prompt per task) or PROMPT_ENSEMBLE (N prompts of '
                       'one task), not both.')
    if prompt.shared is not None:
      raise ValueError(f'PROMPT_SHARED = {prompt.shared!r} combines a shared prompt with task '
                       f'prompts; an ensemble (PROMPT_ENSEMBLE) trains independent members.')
    if prompt.num_prompts not in (1, n):
      raise ValueError(f'PromptConfig.num_prompts = {prompt.num_prompts} but PROMPT_ENSEMBLE = '
                       f'{n}; leave num_prompts at 1 (it is set to the ensemble size).')
    return dataclasses.replace(prompt, num_prompts=n), [f'member{k}' for k in range(n)]
  if not prompt_per_task:
    if prompt.shared is not None:
      raise ValueError(f'PROMPT_SHARED = {prompt.shared!r} combines a shared prompt with each '
                       f'task prompt: it needs PROMPT_PER_TASK = True.')
    if prompt.num_prompts > 1:
      raise ValueError(f'PromptConfig.num_prompts = {prompt.num_prompts}: training a table of '
                       f'prompts needs PROMPT_PER_TASK = True (one prompt per task of a '
                       f'mixture) or PROMPT_ENSEMBLE = N; for one prompt leave num_prompts at 1.')
    return prompt, None
  from prompt_tuning.data import pipeline
  names = pipeline.prompt_names(name)
  if len(names) < 2:
    raise ValueError(f'PROMPT_PER_TASK = True trains a prompt for each task of a mixture, but '
                     f'{name!r} is a single task; name a mixture in MIXTURE_OR_TASK_NAME or set '
                     f'PROMPT_PER_TASK = False.')
  if prompt.num_prompts not in (1, len(names)):
    raise ValueError(f'PromptConfig.num_prompts = {prompt.num_prompts} but {name!r} has '
                     f'{len(names)} tasks ({names}); with PROMPT_PER_TASK leave num_prompts at '
                     f'1 (it is set to the number of tasks).')
  return dataclasses.replace(prompt, num_prompts=len(names)), names


def check_settings(*, train_steps, batch_size, eval_period, save_period, keep, eval_batch_size,
                   task_feature_lengths, group_by_length=0) -> None:
  """Numbers of a launch, named by their gin macro when they are wrong."""
  lengths = task_feature_lengths
  if (not isinstance(lengths, dict) or not {'inputs', 'targets'} <= set(lengths) or any(
      isinstance(lengths[k], bool) or not isinstance(lengths[k], int) or lengths[k] < 1
      for k in ('inputs', 'targets'))):
    raise ValueError(f"TASK_FEATURE_LENGTHS = {lengths!r}: must be a dict with positive integer "
                     f"'inputs' and 'targets' lengths, e.g. {{'inputs': 512, 'targets': 8}}.")
  # (macro, value, smallest allowed, None allowed)
  for macro, value, low, optional in (
      ('TRAIN_STEPS', train_steps, 0, False), ('BATCH_SIZE', batch_size, 1, False),
      ('EVAL_PERIOD', eval_period, 0, True), ('SAVE_PERIOD', save_period, 1, True),
      ('KEEP_CHECKPOINTS', keep, 1, True),
      ('runs.train.eval_batch_size', eval_batch_size, 1, False),
      ('GROUP_BY_LENGTH', group_by_length, 0, False)):
    if value is None and optional:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f'{macro} = {value!r}: must be an integer >= {low}.')


def per_member(batches: Iterator[dict], members: int) -> Iterator[dict]:
  """Each batch once per ensemble member: rows tiled N times, member n's rows with prompt n."""
  for batch in batches:
    rows = len(next(iter(batch.values())))  # every feature is per row
    tiled = {k: np.concatenate([v] * members) for k, v in batch.items()}
    tiled['prompt_ids'] = np.repeat(np.arange(members, dtype=np.int32), rows)
    yield tiled
