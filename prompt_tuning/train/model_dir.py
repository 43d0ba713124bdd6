"""MODEL_DIR: its layout, what is committed in it, reading a step's prompt, and repair after a kill.

The one owner of MODEL_DIR's paths: training, evaluation, inference, reporting and export ask
here where things are and which steps exist.

  run_info.json                         what this run is (prompt length, width, base checkpoint)
  config.gin, operative_config.gin      the gin configuration of the launch
  checkpoints/<step>/                   orbax: TrainState + {'step', 'data_position'}
  numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt   (the anchor's float32 .npy)
                                    /encoder.prompt.deep.prompt     (deep prompts [L-1, P, D])
  checkpoint_<step>/                    model tuning (run_info "tuning": "model"): the whole
                                        model in T5X's format, for each kept orbax step
  metrics.jsonl                         train and eval records, one JSON object a line
  inference_eval/                       predictions and metrics of each evaluation
  inference/                            predictions of `infer`
  best/{prompt, metrics.json}           the prompt with the best main eval metric
  export/{prompt.npy, peft/}            the final prompt's exports
  summary.json, train/, eval/, plots/   what the run printed, TensorBoard, plot

The orbax step is the commit point. What a step produces is written atomically before it (the
numpy prompt) or after it in an order that ends with a marker (an evaluation's record in
metrics.jsonl), so a kill at any moment leaves "the latest committed step" well defined, readers
only ever return a committed step's prompt, and `repair` brings everything else back to it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Optional

import numpy as np

from prompt_tuning.prompts import files as prompt_files
from prompt_tuning import storage
from prompt_tuning.train import records
from prompt_tuning.storage import one_line, tmp_name, write_atomic
from prompt_tuning.models.prompt import DEEP_PATH, PROMPT_PATH, effective_prompts

log = logging.getLogger('prompt_tuning')

RUN_INFO = 'run_info.json'
CONFIG_GIN = 'config.gin'
OPERATIVE_CONFIG_GIN = 'operative_config.gin'
CHECKPOINTS = 'checkpoints'
NUMPY_CHECKPOINTS = 'numpy_checkpoints'
NUMPY_NAME = '.'.join(PROMPT_PATH)  # T5X names numpy checkpoint files by the parameter path
DEEP_NAME = '.'.join(DEEP_PATH)  # deep prompts (P-tuning v2 style), beside it when a run has them
METRICS = 'metrics.jsonl'
INFERENCE_EVAL = 'inference_eval'
INFERENCE = 'inference'
BEST = 'best'
BEST_METRICS = 'metrics.json'
EXPORT = 'export'
SUMMARY = 'summary.json'
# Fields that must agree for a MODEL_DIR to be resumed, with their value when run_info.json
# does not say (one written before the field existed; a single prompt's has no table fields).
IDENTITY_FIELDS = {'prompt_length': None, 'd_model': None, 'placement': None, 'deep': False,
                   'num_prompts': 1, 'prompt_names': None, 'prompt_shared': None,
                   'tuning': 'prompt', 'trainable': None, 'architecture': 'encoder_decoder'}
MODEL_TUNING = 'model'  # run_info.json's "tuning" of a model-tuning run (absent: 'prompt')
T5X_CHECKPOINT_FILE = 'checkpoint'  # what makes a checkpoint_<step> folder a T5X checkpoint
ORBAX_TMP = '.orbax-checkpoint-tmp'
# On object storage orbax writes a step in place and commits it with this file (no rename).
ORBAX_COMMIT_FILE = 'commit_success.txt'
PREDICTIONS_STEP = re.compile(r'-step(\d+)\.jsonl$')
COMMAND_TAG = 'eval'  # predictions of `prompt-tuning eval`, kept through a run's repairs


def predictions_file(task: str, method: str, step: int, tag: str = '') -> str:
  """An evaluation's predictions under inference_eval/ (parsed back by `repair`)."""
  return f'{task}-{method}{"-" + tag if tag else ""}-step{step}.jsonl'


def eval_metrics_file(task: str) -> str:
  """The metrics of a task's evaluations under inference_eval/, one record a line."""
  return f'{task}-metrics.jsonl'


def inference_file(task: str, split: str, step: int) -> str:
  """`prompt-tuning infer`'s predictions of a split under inference/."""
  return f'{task}-{split}-step{step}.jsonl'


class ModelDirError(ValueError):
  """MODEL_DIR cannot be used as asked; the message names the path and what to do."""


class RunMismatchError(ModelDirError):
  """MODEL_DIR holds a run that is incompatible with the requested one."""


# ----------------------------------------------------------------------------------------------
# Run identity and usability, checked before anything is written.


def run_info_path(model_dir: str) -> str:
  return storage.join(model_dir, RUN_INFO)


def read_run_info(model_dir: str) -> Optional[dict]:
  path = run_info_path(model_dir)
  if not storage.exists(path):
    return None
  try:
    info = json.loads(storage.read_text(path))
  except storage.StorageError:
    raise
  except (OSError, ValueError) as e:
    raise ModelDirError(f'{path}: not a readable run description ({one_line(e)}); it was '
                        f'damaged outside prompt-tuning. Use a new MODEL_DIR, or restore the '
                        f'file.') from e
  if not isinstance(info, dict):
    raise ModelDirError(f'{path}: not a run description (a JSON object was expected).')
  return info


def check_run_info(model_dir: str, info: dict, write: bool = True) -> None:
  """Refuses a MODEL_DIR made by a different run; writes run_info.json for a new one."""
  existing = read_run_info(model_dir)
  if existing is not None:
    diffs = [f'{k}: saved {existing.get(k, d)!r}, requested {info.get(k, d)!r}'
             for k, d in IDENTITY_FIELDS.items() if existing.get(k, d) != info.get(k, d)]
    if diffs:
      raise RunMismatchError(
          f'{model_dir} holds a different prompt-tuning run ({"; ".join(diffs)}). Use a new '
          f'MODEL_DIR; nothing was changed in this one.')
    return
  if write:
    write_atomic(run_info_path(model_dir), json.dumps(info, indent=2, sort_keys=True))


def check_usable(model_dir: str) -> None:
  """MODEL_DIR is a directory (or can be made one) that this process can write."""
  if not model_dir:
    raise ModelDirError('MODEL_DIR is empty: set --gin.MODEL_DIR to a directory.')
  if storage.is_remote(model_dir):  # object storage: a reachable, existing bucket is enough
    try:
      storage.check_writable(model_dir, 'MODEL_DIR')
    except storage.StorageError as e:
      raise ModelDirError(str(e)) from None
    return
  path = os.path.abspath(model_dir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ModelDirError(f'MODEL_DIR {model_dir} is a file, not a directory: choose another '
                        f'MODEL_DIR (or move the file).')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ModelDirError(f'MODEL_DIR {model_dir}: {existing} is a file, so the directory cannot '
                        f'be created; choose another MODEL_DIR.')
  try:  # a real write: permissions, read-only mounts and root all answer truthfully
    os.rmdir(tempfile.mkdtemp(prefix='.prompt-tuning-probe-', dir=existing))
  except OSError as e:
    raise ModelDirError(f'MODEL_DIR {model_dir}: cannot write in {existing} ({e.strerror}); '
                        f'choose a writable MODEL_DIR.') from e


# ----------------------------------------------------------------------------------------------
# Steps: committed orbax steps are the truth; numpy prompts are readable copies of them.


def checkpoints_dir(model_dir: str) -> str:
  return storage.join(storage.absolute(model_dir), CHECKPOINTS)


def committed_steps(model_dir: str) -> list[int]:
  """Orbax steps renamed into place (an unfinished save keeps a temporary name); on object
  storage, steps whose commit file orbax wrote (an unfinished save has none)."""
  directory = checkpoints_dir(model_dir)
  if not storage.is_remote(directory):
    if not os.path.isdir(directory):
      return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))
  return sorted(int(name) for name in storage.listdir(directory) if name.isdigit() and
                storage.exists(storage.join(directory, name, ORBAX_COMMIT_FILE)))


def uncommitted_steps(model_dir: str) -> list[int]:
  """Step folders on object storage that orbax did not commit (a kill cut their save)."""
  directory = checkpoints_dir(model_dir)
  if not storage.is_remote(directory):
    return []
  committed = set(committed_steps(model_dir))
  return sorted(int(name) for name in storage.listdir(directory)
                if name.isdigit() and int(name) not in committed)


def latest_step(model_dir: str) -> Optional[int]:
  steps = committed_steps(model_dir)
  return steps[-1] if steps else None


def numpy_prompt_path(model_dir: str, step: int) -> str:
  return storage.join(model_dir, NUMPY_CHECKPOINTS, f'checkpoint_{step}', NUMPY_NAME)


def numpy_deep_path(model_dir: str, step: int) -> str:
  return storage.join(model_dir, NUMPY_CHECKPOINTS, f'checkpoint_{step}', DEEP_NAME)


def numpy_steps(model_dir: str) -> list[int]:
  """Steps with a complete numpy prompt file (committed or not)."""
  return storage.checkpoint_steps(storage.join(model_dir, NUMPY_CHECKPOINTS), NUMPY_NAME)


def prompt_steps(model_dir: str) -> list[int]:
  """Steps whose prompt a reader may return: numpy prompts up to the latest committed step,
  and every kept orbax step. A numpy prompt past it is from a save a kill cut short."""
  latest = latest_step(model_dir)
  if latest is None:
    return []
  return sorted({s for s in numpy_steps(model_dir) if s <= latest} |
                set(committed_steps(model_dir)))


def write_numpy_prompt(model_dir: str, step: int, prompt_PxD: Any,
                       deep_LxPxD: Any = None) -> str:
  """The anchor's float32 file (and the deep prompts' beside it, when given), made whole in a
  temporary folder and renamed into place: the step's folder holds both or is absent. On object
  storage (no rename) the deep prompts are written first and the prompt file last: readers and
  repair take a step's folder only when its prompt file is there."""
  final_dir = storage.dirname(numpy_prompt_path(model_dir, step))
  if storage.is_remote(final_dir):
    storage.remove(storage.join(final_dir, NUMPY_NAME))  # a rewrite: the marker goes first
    if deep_LxPxD is not None:
      prompt_files.write_npy(storage.join(final_dir, DEEP_NAME), deep_LxPxD)
    prompt_files.write_npy(storage.join(final_dir, NUMPY_NAME), prompt_PxD)
    return storage.join(final_dir, NUMPY_NAME)
  tmp_dir = tmp_name(final_dir)
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)
  prompt_files.write_npy(os.path.join(tmp_dir, NUMPY_NAME), prompt_PxD)
  if deep_LxPxD is not None:
    prompt_files.write_npy(os.path.join(tmp_dir, DEEP_NAME), deep_LxPxD)
  if os.path.exists(final_dir):
    shutil.rmtree(final_dir)
  os.rename(tmp_dir, final_dir)
  return os.path.join(final_dir, NUMPY_NAME)


def read_orbax_prompts(model_dir: str, step: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """(prompt, deep prompts or None) of a committed orbax step, read without knowing the
  optimizer's state."""
  import orbax.checkpoint as ocp
  path = storage.join(checkpoints_dir(model_dir), str(step), 'state')
  try:
    with warnings.catch_warnings():  # "sharding info not provided": none is needed here
      warnings.simplefilter('ignore')
      tree = ocp.PyTreeCheckpointer().restore(path)
    info = read_run_info(model_dir) or {}
    value = effective_prompts(tree['params'], info.get('prompt_shared'))
    deep = tree['params']
    for key in DEEP_PATH:
      deep = deep.get(key) if isinstance(deep, dict) else None
  except ModelDirError:
    raise
  except Exception as e:  # orbax/tensorstore raise many unrelated types on damaged files
    raise ModelDirError(f'{path}: cannot read the prompt of step {step} ({one_line(e)}); the '
                        f'checkpoint is damaged.') from e
  return np.asarray(value, np.float32), None if deep is None else np.asarray(deep, np.float32)


def read_orbax_prompt(model_dir: str, step: int) -> np.ndarray:
  """The prompt of a committed orbax step, read without knowing the optimizer's state."""
  return read_orbax_prompts(model_dir, step)[0]


def prompt_names(model_dir: str) -> Optional[list[str]]:
  """The names of a table's prompts (a multi-task run: its tasks, in table order), or None for
  a single prompt's run."""
  info = read_run_info(model_dir) or {}
  names = info.get('prompt_names')
  if names is not None and (not isinstance(names, list) or
                            not all(isinstance(n, str) for n in names)):
    raise ModelDirError(f'{run_info_path(model_dir)}: prompt_names must be a list of strings.')
  return names


def load_prompt(model_dir: str, step: Optional[int] = None) -> tuple[np.ndarray, int]:
  """(prompt, step): `step`'s prompt, or the latest committed step's; never another step's.
  A table's run gives the table [K, P, D] (combined with its shared prompt, if any), in
  `prompt_names` order."""
  step = _readable_step(model_dir, step)
  if storage.isfile(numpy_prompt_path(model_dir, step)):
    return prompt_files.load_prompt_file(numpy_prompt_path(model_dir, step),
                                         allow_table=True), step
  return read_orbax_prompt(model_dir, step), step


def load_deep_prompt(model_dir: str, step: Optional[int] = None) -> Optional[np.ndarray]:
  """`step`'s deep prompts [L-1, P, D] (P-tuning v2 style), or the latest committed step's;
  None for a run without them. The same steps as `load_prompt` are readable: the numpy file,
  else the orbax step."""
  step = _readable_step(model_dir, step)
  path = numpy_deep_path(model_dir, step)
  if storage.isfile(path):
    return _load_deep_file(path)
  if run_is_deep(model_dir) is False or step not in committed_steps(model_dir):
    return None  # saves write both files together: a step kept as numpy alone had none
  return read_orbax_prompts(model_dir, step)[1]


def _load_deep_file(path: str) -> np.ndarray:
  try:
    deep = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
  except Exception as e:  # truncated data and object arrays both land here
    raise ModelDirError(f'{path}: cannot read the deep prompts ({one_line(e)}); the file is '
                        f'damaged: delete it, and a committed orbax step is read instead.') from e
  if deep.ndim != 3 or not np.issubdtype(deep.dtype, np.floating):
    raise ModelDirError(f'{path}: deep prompts are a float [L-1, P, D] array; this one is '
                        f'{deep.dtype} with shape {deep.shape}.')
  return np.asarray(deep, np.float32)


def run_is_deep(model_dir: str) -> Optional[bool]:
  """Whether run_info.json says the run has deep prompts (one written before they existed: no);
  None without a readable run_info.json."""
  try:
    info = read_run_info(model_dir)
  except ModelDirError:
    return None
  return None if info is None else bool(info.get('deep', False))


def _readable_step(model_dir: str, step: Optional[int]) -> int:
  """`step`, or the latest committed step, checked to have a readable prompt."""
  if not storage.isdir(model_dir):
    raise ModelDirError(f'MODEL_DIR {model_dir}: no such directory.')
  if is_model_tuning(model_dir):
    raise ModelDirError(f'{model_dir} is a model-tuning run: it has no prompt. Its weights are '
                        f'T5X checkpoints ({model_checkpoint_path(model_dir, 0)[:-1]}<step>); '
                        f'evaluate it with `prompt-tuning eval --gin.MODEL_DIR=...`, or convert '
                        f'one with `prompt-tuning convert --to hf`.')
  available = prompt_steps(model_dir)
  if not available:
    raise ModelDirError(f'{model_dir}: no committed checkpoint (checkpoints/<step>/); nothing to '
                        f'read. Train into it first, or pass a prompt file.')
  step = latest_step(model_dir) if step is None else step
  if step not in available:
    raise ModelDirError(f'{model_dir}: no prompt for step {step}; available: {available}.')
  return step


# ----------------------------------------------------------------------------------------------
# Model tuning: each kept step's whole model as a T5X checkpoint (readers: train/model_tuning.py).


def is_model_tuning(model_dir: str) -> bool:
  """Whether run_info.json says MODEL_DIR is a model-tuning run."""
  try:
    info = read_run_info(model_dir)
  except ModelDirError:
    return False
  return info is not None and info.get('tuning') == MODEL_TUNING


def model_checkpoint_path(model_dir: str, step: int) -> str:
  return storage.join(model_dir, f'checkpoint_{step}')


def prune_model_checkpoints(model_dir: str, keep_steps: Any) -> list[str]:
  """Removes T5X checkpoints (whole or cut short) of steps not in `keep_steps`; their names."""
  removed = []
  for name in storage.listdir(model_dir):
    m = re.fullmatch(r'checkpoint_(\d+)(\.old-\d+)?', name)
    if m and (m.group(2) or int(m.group(1)) not in keep_steps):
      storage.rmtree(storage.join(model_dir, name))
      removed.append(name)
  return removed


# ----------------------------------------------------------------------------------------------
# Records and repair.


def eval_done(model_dir: str, step: int) -> bool:
  """An evaluation's record in metrics.jsonl is written last: it marks the evaluation whole."""
  return any(r.get('kind') == 'eval' and r.get('step') == step
             for r in records.read_jsonl(storage.join(model_dir, METRICS)))
