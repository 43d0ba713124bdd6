"""Running `python -m prompt_tuning` on the real T5X fixture, vocabulary and local RTE data."""

import os
import subprocess
import sys

from prompt_tuning import testing
from prompt_tuning.testing import FIXTURE, VOCAB


def rte_env(shared, **extra) -> dict:
  return {'PROMPT_TUNING_DATA_DIR': shared('data'),
          'PROMPT_TUNING_VOCAB': shared(*VOCAB), **extra}


def rte_train_args(shared, model_dir, **macros) -> list:
  """`train` with the paper's RTE preset on the tiny T5X fixture; `macros` override bindings."""
  settings = {'MODEL_DIR': f"'{model_dir}'",
              'INITIAL_CHECKPOINT_PATH': f"'{shared(*FIXTURE)}'",
              'MIXTURE_OR_TASK_NAME': "'super_glue_rte_local'", 'TRAIN_STEPS': '3',
              'BATCH_SIZE': '4', 'TASK_FEATURE_LENGTHS': "{'inputs': 64, 'targets': 8}",
              'PROMPT_LENGTH': '5', 'EVAL_PERIOD': '3', 'EVAL_MAX_EXAMPLES': '8',
              **{k: str(v) for k, v in macros.items()}}
  bindings = testing.FIXTURE_BINDINGS + [f'{k} = {v}' for k, v in settings.items()]
  return (['train', '--gin_file=configs/paper/t5_1_1_base_rte.gin'] +
          [f'--gin_bindings={b}' for b in bindings])


def run_cli(args, env_extra, cwd, timeout=600, check=True):
  """Runs the CLI in a fresh process; `check` asserts it exited 0."""
  env = {**os.environ, **env_extra}
  proc = subprocess.run([sys.executable, '-m', 'prompt_tuning', *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc
