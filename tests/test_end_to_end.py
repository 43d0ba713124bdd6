"""Through the command line: the real T5X fixture + real vocabulary on local RTE; the quickstart."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from prompt_tuning.prompts import files as prompt_files
from prompt_tuning.testing import FIXTURE, FIXTURE_BINDINGS, VOCAB

from cli_helpers import run_cli as run


@pytest.fixture(scope='module')
def rte_run(shared, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('rte')
  model_dir = tmp / 'model'
  env = {'PROMPT_TUNING_DATA_DIR': shared('data'),
         'PROMPT_TUNING_VOCAB': shared(*VOCAB)}
  bindings = FIXTURE_BINDINGS + [
      f"MODEL_DIR = '{model_dir}'",
      f"INITIAL_CHECKPOINT_PATH = '{shared(*FIXTURE)}'",
      "MIXTURE_OR_TASK_NAME = 'super_glue_rte_local'", 'TRAIN_STEPS = 3', 'BATCH_SIZE = 4',
      "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}", 'PROMPT_LENGTH = 5',
      'EVAL_PERIOD = 3', 'EVAL_MAX_EXAMPLES = 8']
  args = ['train', '--gin_file=configs/paper/t5_1_1_base_rte.gin']
  args += [f'--gin_bindings={b}' for b in bindings]
  proc = run(args, env, str(tmp))
  return model_dir, env, tmp, proc


def test_train_writes_config_checkpoints_metrics_plot_and_exports(rte_run):
  model_dir, _, _, proc = rte_run
  assert 'finished (3 steps)' in proc.stdout
  config = (model_dir / 'config.gin').read_text()
  assert "super_glue_rte_local" in config and 'PROMPT_LENGTH = 5' in config
  for step in (0, 3):
    prompt = np.load(model_dir / 'numpy_checkpoints' / f'checkpoint_{step}' /
                     'encoder.prompt.prompt.prompt')
    assert prompt.shape == (5, 4) and prompt.dtype == np.float32
  metrics = [json.loads(line) for line in
             (model_dir / 'inference_eval' / 'super_glue_rte_local-metrics.jsonl').open()]
  methods = {(m['step'], m['method']) for m in metrics}
  assert {(0, 'generate'), (0, 'rank'), (3, 'generate'), (3, 'rank')} <= methods
  assert all(0 <= m['accuracy'] <= 100 for m in metrics)
  preds = (model_dir / 'inference_eval' / 'super_glue_rte_local-rank-step3.jsonl').read_text()
  first = json.loads(preds.splitlines()[0])
  assert first['input'].startswith('rte hypothesis: ')
  assert first['prediction'] in ('entailment', 'not_entailment')
  assert (model_dir / 'plots' / 'training.png').stat().st_size > 1000
  np.testing.assert_array_equal(np.load(model_dir / 'export' / 'prompt.npy'), prompt)
  peft_config = json.loads((model_dir / 'export' / 'peft' / 'adapter_config.json').read_text())
  assert peft_config['num_virtual_tokens'] == 5 and peft_config['token_dim'] == 4
  assert list((model_dir / 'train').iterdir()), 'TensorBoard events'


def test_export_command(rte_run):
  model_dir, env, tmp, _ = rte_run
  run(['export', f'--model_dir={model_dir}', '--format=peft', f'--output={tmp / "peft"}'], env,
      str(tmp))
  run(['export', f'--model_dir={model_dir}', '--format=npy', f'--output={tmp / "p.npy"}',
       '--step=0'], env, str(tmp))
  final = np.load(model_dir / 'numpy_checkpoints' / 'checkpoint_3' / 'encoder.prompt.prompt.prompt')
  np.testing.assert_array_equal(prompt_files.load_prompt_file(str(tmp / 'peft')), final)
  start = np.load(model_dir / 'numpy_checkpoints' / 'checkpoint_0' / 'encoder.prompt.prompt.prompt')
  np.testing.assert_array_equal(np.load(tmp / 'p.npy'), start)


def test_eval_command_on_a_saved_prompt(rte_run, shared):
  model_dir, env, tmp, _ = rte_run
  bindings = FIXTURE_BINDINGS + [
      f"MODEL_DIR = '{model_dir}'", 'PROMPT_LENGTH = 5',
      f"INITIAL_CHECKPOINT_PATH = '{shared(*FIXTURE)}'",
      "MIXTURE_OR_TASK_NAME = 'super_glue_rte_local'", 'EVAL_MAX_EXAMPLES = 8',
      "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}"]
  args = ['eval', '--gin_file=runs/prompt_eval.gin', '--gin_file=models/t5_1_1_prompt.gin',
          '--gin_file=models/sizes/small.gin'] + [f'--gin_bindings={b}' for b in bindings]
  proc = run(args, env, str(tmp))
  result = json.loads(proc.stdout[proc.stdout.index('{'):])
  assert result['step'] == 3 and 'rank/accuracy' in result and 'generate/invalid' in result


def test_unknown_task_lists_close_names(shared, tmp_path):
  env = {**os.environ, 'PROMPT_TUNING_DATA_DIR': shared('data')}
  bindings = FIXTURE_BINDINGS + [
      f"MODEL_DIR = '{tmp_path / 'm'}'", 'TRAIN_STEPS = 1',
      f"INITIAL_CHECKPOINT_PATH = '{shared(*FIXTURE)}'",
      "MIXTURE_OR_TASK_NAME = 'super_glue_rtee'"]
  proc = subprocess.run([sys.executable, '-m', 'prompt_tuning', 'train',
                         '--gin_file=configs/paper/t5_1_1_base_rte.gin'] +
                        [f'--gin_bindings={b}' for b in bindings], env=env, cwd=str(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2  # bad input
  assert 'super_glue_rtee' in proc.stderr and 'super_glue_rte' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_quickstart_runs_under_three_minutes(tmp_path):
  start = time.time()
  proc = run([], {}, str(tmp_path), timeout=400)
  elapsed = time.time() - start
  out = tmp_path / 'runs' / 'quickstart'
  report = json.loads((out / 'quickstart.json').read_text())
  # The tuned prompt must beat the untrained one clearly: the demo shows the method working.
  assert report['tuned prompt'] >= report['untrained prompt'] + 30, report
  assert (out / 'prompt' / 'export' / 'prompt.npy').exists()
  assert (out / 'prompt' / 'export' / 'peft' / 'adapter_model.safetensors').exists()
  assert (out / 'prompt' / 'plots' / 'training.png').exists()
  assert 'frozen model + tuned prompt' in proc.stdout
  # The last stage: a prompt per task of two prefix-less tasks, then one mixed batch.
  multi = report['many prompts, one model']
  assert min(multi['accuracy'].values()) >= 80, multi
  rows = multi['mixed batch']
  assert {r['prompt'] for r in rows} == {'first', 'max'} and len(rows) == 8
  assert sum(r['answer'] == r['expected'] for r in rows) >= 6, rows
  assert (out / 'multi_task' / 'export' / 'table.npy').exists()
  assert 'One batch mixing both tasks' in proc.stdout
  assert elapsed < 180, elapsed


def test_vocabulary_larger_than_the_model_is_refused(shared, tmp_path):
  from prompt_tuning import checkpoints
  from prompt_tuning.models import t5
  config = t5.T5Config(vocab_size=384, d_model=8, d_ff=16, num_heads=2, head_dim=4,
                       num_encoder_layers=1, num_decoder_layers=1, dtype='float32')
  base = checkpoints.save_t5x(str(tmp_path / 'base'), t5.init_params(config), 0)
  bindings = [
      f"MODEL_DIR = '{tmp_path / 'm'}'", 'TRAIN_STEPS = 1', f"INITIAL_CHECKPOINT_PATH = '{base}'",
      "MIXTURE_OR_TASK_NAME = 'super_glue_rte_local'", 'MODEL = None']
  env = {**os.environ, 'PROMPT_TUNING_DATA_DIR': shared('data'),
         'PROMPT_TUNING_VOCAB': shared(*VOCAB)}
  proc = subprocess.run([sys.executable, '-m', 'prompt_tuning', 'train',
                         '--gin_file=configs/paper/t5_1_1_base_rte.gin'] +
                        [f'--gin_bindings={b}' for b in bindings], env=env, cwd=str(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert ("vocabulary of 'super_glue_rte_local' has 32100 ids but the model embeds only 384"
          in proc.stderr), proc.stderr[-3000:]
  assert not (tmp_path / 'm').exists()
