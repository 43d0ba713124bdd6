"""Repair after a kill: MODEL_DIR brought back to its latest committed step (layout and commit
rules: model_dir.py), run by process 0 before a run writes anything."""

from __future__ import annotations

import logging
import os
from typing import Optional

from prompt_tuning import storage
from prompt_tuning.storage import TMP_MARK
from prompt_tuning.train import records
from prompt_tuning.train.model_dir import (
    CHECKPOINTS, COMMAND_TAG, INFERENCE_EVAL, METRICS, NUMPY_CHECKPOINTS, NUMPY_NAME, ORBAX_TMP,
    PREDICTIONS_STEP, run_is_deep, checkpoints_dir, committed_steps, eval_done,
    eval_metrics_file, is_model_tuning, numpy_deep_path, numpy_prompt_path, numpy_steps,
    prune_model_checkpoints, read_orbax_prompts, uncommitted_steps, write_numpy_prompt)

log = logging.getLogger('prompt_tuning')


def _remove_temporaries(root: str) -> list[str]:
  removed = []
  for dirpath, dirnames, filenames in storage.walk(root):
    for name in list(dirnames):
      if TMP_MARK in name or ORBAX_TMP in name:
        storage.rmtree(storage.join(dirpath, name))
        dirnames.remove(name)
        removed.append(storage.join(dirpath, name))
    for name in filenames:
      if TMP_MARK in name:
        storage.remove(storage.join(dirpath, name))
        removed.append(storage.join(dirpath, name))
  return removed


def repair(model_dir: str, keep: Optional[int] = None) -> Optional[int]:
  """Brings MODEL_DIR back to its latest committed step after a kill; returns that step.

  Removes temporaries (on object storage: step folders orbax did not commit), orbax steps past
  `keep`, numpy prompts and records of steps after the latest committed one (they are redone),
  writes the numpy prompt of a kept step that lacks it (or, in a run_info.json's deep run, its
  deep prompts), and drops the predictions/metrics of an evaluation whose final record is
  missing (it is rerun).
  """
  if not storage.isdir(model_dir):
    return None
  removed = _remove_temporaries(model_dir)
  for step in uncommitted_steps(model_dir):
    storage.rmtree(storage.join(checkpoints_dir(model_dir), str(step)))
    removed.append(storage.join(CHECKPOINTS, str(step)))
  steps = committed_steps(model_dir)
  if keep and len(steps) > keep:
    for step in steps[:-keep]:
      storage.rmtree(storage.join(checkpoints_dir(model_dir), str(step)))
      removed.append(storage.join(CHECKPOINTS, str(step)))
    steps = steps[-keep:]
  latest = steps[-1] if steps else None
  limit = -1 if latest is None else latest
  model = is_model_tuning(model_dir)
  if model:  # a committed step's copy is written before its commit: nothing to rewrite
    removed += prune_model_checkpoints(model_dir, set(steps))
  numpy_dir = storage.join(model_dir, NUMPY_CHECKPOINTS)
  for name in storage.listdir(numpy_dir):
    if not storage.isfile(storage.join(numpy_dir, name, NUMPY_NAME)):
      storage.rmtree(storage.join(numpy_dir, name))  # a folder a kill left without its file
      removed.append(f'{NUMPY_CHECKPOINTS}/{name}')
  for step in numpy_steps(model_dir):
    if step > limit:
      storage.rmtree(storage.dirname(numpy_prompt_path(model_dir, step)))
      removed.append(f'{NUMPY_CHECKPOINTS}/checkpoint_{step}')
  deep = run_is_deep(model_dir)
  for step in [] if model else steps:
    has_prompt = storage.isfile(numpy_prompt_path(model_dir, step))
    if has_prompt and not (deep and not storage.isfile(numpy_deep_path(model_dir, step))):
      continue
    prompt_PxD, deep_LxPxD = read_orbax_prompts(model_dir, step)
    if has_prompt and deep_LxPxD is None:
      continue  # the orbax step has no deep prompts either: nothing is missing
    write_numpy_prompt(model_dir, step, prompt_PxD, deep_LxPxD)
    log.info('Rewrote the numpy prompt of step %d in %s.', step, model_dir)

  records.rewrite_jsonl(storage.join(model_dir, METRICS), lambda r: r.get('step', 0) <= limit)
  whole = latest is not None and eval_done(model_dir, latest)
  eval_dir = storage.join(model_dir, INFERENCE_EVAL)
  for name in storage.listdir(eval_dir):
    path = storage.join(eval_dir, name)
    m = PREDICTIONS_STEP.search(name)
    if name.endswith(eval_metrics_file('')):
      records.rewrite_jsonl(path, lambda r: _command_record(r) or r.get('step', 0) < limit or (
          r.get('step') == limit and whole))
    elif m and f'-{COMMAND_TAG}-' not in name and (int(m.group(1)) > limit or (
        int(m.group(1)) == limit and not whole)):
      storage.remove(path)
  if removed:
    log.info('Repaired %s: removed what a stopped run left unfinished (%s).', model_dir,
             ', '.join(_shown(p, model_dir) for p in removed[:6]) +
             (' …' if len(removed) > 6 else ''))
  return latest


def _shown(path: str, model_dir: str) -> str:
  if storage.is_remote(path) or os.path.isabs(path):
    return storage.relpath(path, model_dir)
  return path


def _command_record(record: dict) -> bool:
  """A record of `prompt-tuning eval` (tagged, kept through repairs), not of the run itself (a
  run's in-training ensemble evaluations are tagged 'train-...')."""
  tag = record.get('tag')
  return bool(tag) and not str(tag).startswith('train-')
