"""Prompt-sized, resumable checkpoints under MODEL_DIR.

  MODEL_DIR/run_info.json                       what this run is (prompt length, width, base)
  MODEL_DIR/checkpoints/<step>/                 orbax: TrainState + {'data_position': ...}
  MODEL_DIR/numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt   (the anchor's path)

The frozen model is never written: resuming = base checkpoint + this small state. Orbax commits
each step atomically (written to a temporary directory, then renamed), so a crash mid-save leaves
the previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning import prompts

RUN_INFO = 'run_info.json'
NUMPY_NAME = 'encoder.prompt.prompt.prompt'
# Fields that must agree for a MODEL_DIR to be resumed.
IDENTITY_FIELDS = ('prompt_length', 'd_model', 'placement')


class RunMismatchError(ValueError):
  """MODEL_DIR holds a run that is incompatible with the requested one."""


def check_run_info(model_dir: str, info: dict, write: bool = True) -> None:
  """Refuses a MODEL_DIR made by a different run; writes run_info.json for a new one."""
  path = os.path.join(model_dir, RUN_INFO)
  if os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)
    diffs = [f'{k}: saved {existing.get(k)!r}, requested {info.get(k)!r}'
             for k in IDENTITY_FIELDS if existing.get(k) != info.get(k)]
    if diffs:
      raise RunMismatchError(
          f'{model_dir} holds a different prompt-tuning run ({"; ".join(diffs)}). Use a new '
          f'MODEL_DIR; nothing was changed in this one.')
    return
  if write:
    os.makedirs(model_dir, exist_ok=True)
    _atomic_write(path, json.dumps(info, indent=2, sort_keys=True).encode())


def _atomic_write(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def numpy_prompt_path(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, 'numpy_checkpoints', f'checkpoint_{step}', NUMPY_NAME)


def write_numpy_prompt(model_dir: str, step: int, prompt_PxD: Any) -> str:
  """float32 .npy content at the anchor's extension-less path."""
  path = numpy_prompt_path(model_dir, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.save(f, np.asarray(jax.device_get(prompt_PxD), np.float32))
  os.replace(tmp, path)
  return path


def has_checkpoint(model_dir: str) -> bool:
  """True when MODEL_DIR holds a committed orbax step (temporary, unfinished ones don't count)."""
  directory = os.path.join(model_dir, 'checkpoints')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


class PromptCheckpointer:
  """Saves/restores the TrainState with orbax, keeping the last `keep` steps."""

  def __init__(self, model_dir: str, keep: Optional[int] = 1):
    self.model_dir = model_dir
    self.directory = os.path.join(os.path.abspath(model_dir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state: Any, data_position: int) -> int:
    step = int(jax.device_get(state.step))
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({'step': step, 'data_position': int(data_position)})))
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      write_numpy_prompt(self.model_dir, step, prompts.get_prompt(state.params))
    return step

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def close(self) -> None:
    self.manager.close()
