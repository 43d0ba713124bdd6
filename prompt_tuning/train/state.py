"""Resumable orbax checkpoints under MODEL_DIR (layout: model_dir.py): prompt-sized for prompt
tuning, the trained weights and their optimizer state for model tuning.

The frozen model is never written: resuming = base checkpoint + this state. Each save writes
the step's readable copy first (the numpy prompt with the deep prompts, if any; model tuning:
the T5X checkpoint), atomically, then the orbax step, whose rename (on object storage: its
commit file) commits it: a kill anywhere leaves the previous committed step as the latest, and
nothing names a step that was not committed.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning import storage
from prompt_tuning.models.prompt import SharedMode, effective_prompts, get_deep_prompt
from prompt_tuning.train import preemption


def has_checkpoint(model_dir: str) -> bool:
  """True when MODEL_DIR holds a committed orbax step (temporary, unfinished ones don't count)."""
  return model_dir_lib.latest_step(model_dir) is not None


def write_prompt_copy(model_dir: str, state: Any, step: int, shared: SharedMode = None) -> None:
  """The step's numpy prompt (and deep prompts), written by process 0."""
  if jax.process_index() == 0:
    deep = get_deep_prompt(state.params)
    model_dir_lib.write_numpy_prompt(model_dir, step,
                                     effective_prompts(jax.device_get(state.params), shared),
                                     None if deep is None else jax.device_get(deep))


class PromptCheckpointer:
  """Saves/restores the TrainState with orbax, keeping the last `keep` steps."""

  def __init__(self, model_dir: str, keep: Optional[int] = 1, read_only: bool = False,
               shared: SharedMode = None,
               copy: Optional[Callable[[str, Any, int], None]] = None,
               prune: Optional[Callable[[str, set[int]], Any]] = None):
    """`copy(model_dir, state, step)` writes the step's readable copy before its commit, on
    every process (default: the numpy prompt, written by process 0; `shared`: the numpy prompt
    of a shared + task table is the combined one). `prune(model_dir, kept steps)`, if given,
    runs on process 0 after each save (copies that follow orbax's retention)."""
    self.model_dir = model_dir
    self.copy = copy or functools.partial(write_prompt_copy, shared=shared)
    self.prune = prune  # after a save: prune(model_dir, kept steps) drops other steps' copies
    self.directory = model_dir_lib.checkpoints_dir(model_dir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           read_only=read_only,
                                           enable_async_checkpointing=False)
    preemption.arm_orbax_crash()
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state: Any, data_position: int) -> int:
    step = int(jax.device_get(state.step))
    self.copy(self.model_dir, state, step)
    preemption.crash_point('numpy_written', step)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({'step': step, 'data_position': int(data_position)})))
    self.manager.wait_until_finished()
    if self.prune is not None and jax.process_index() == 0:
      self.prune(self.model_dir, set(self.all_steps()))
    return step

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    path = storage.join(self.directory, str(step))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many unrelated types on damaged files
      raise model_dir_lib.ModelDirError(
          f'{path}: cannot restore step {step} ({storage.one_line(e)}). The checkpoint '
          f'is damaged: delete {path} to resume from an earlier kept step (or from the start), '
          f'or use a new MODEL_DIR.') from e
    return restored.state, dict(restored.meta)

  def close(self) -> None:
    self.manager.close()
