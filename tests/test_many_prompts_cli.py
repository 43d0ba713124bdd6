"""Many prompts, one frozen model, through the CLI and its gin blocks (#12): multi-task training
(runs/multi_task_prompt_tuning.gin), mixed-task inference (runs/mixed_task_infer.gin) and
one-pass ensembles on real RTE data (runs/prompt_ensemble_eval.gin), with the real T5X
fixture."""

import json

import numpy as np

from prompt_tuning.prompts import ensembles as ensemble, files as prompt_files
from prompt_tuning.testing import FIXTURE, FIXTURE_BINDINGS

from cli_helpers import rte_env, run_cli


def test_ensemble_eval_on_rte(shared, tmp_path):
  paths = []
  for seed in range(3):  # three members (as from three runs): [P=5, D=4] prompts
    value = np.random.RandomState(seed).normal(scale=2.0, size=(5, 4)).astype(np.float32)
    paths.append(prompt_files.write_npy(str(tmp_path / f'member{seed}.npy'), value))
  out = tmp_path / 'out'
  bindings = FIXTURE_BINDINGS + [
      f"INITIAL_CHECKPOINT_PATH = '{shared(*FIXTURE)}'",
      "MIXTURE_OR_TASK_NAME = 'super_glue_rte_local'", 'EVAL_MAX_EXAMPLES = 24',
      "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}", f'ENSEMBLE_PROMPTS = {paths!r}',
      f"EVAL_OUTPUT_DIR = '{out}'"]
  args = ['eval', '--gin_file=configs/paper/t5_1_1_base_rte.gin',
          '--gin_file=runs/prompt_ensemble_eval.gin'] + [f'--gin_bindings={b}' for b in bindings]
  proc = run_cli(args, rte_env(shared), str(tmp_path))
  result = json.loads(proc.stdout[proc.stdout.index('{'):])
  assert result['members'] == paths
  for method in ('generate', 'rank'):
    members = result[f'{method}/members']
    assert len(members) == 3 and all(0 <= m['accuracy'] <= 100 for m in members)
    assert result[f'{method}/member_mean']['accuracy'] == np.mean([m['accuracy']
                                                                  for m in members])
    assert 0 <= result[f'{method}/ensemble']['accuracy'] <= 100

  def predictions(tag, method):
    path = out / f'super_glue_rte_local-{method}-{tag}-step0.jsonl'
    return [json.loads(line)['prediction'] for line in path.open()]
  # The written ensemble answers are the majority vote of the written members' answers.
  member_tags = sorted(p.name.split('-generate-')[1][:-len('-step0.jsonl')]
                       for p in out.glob('*-generate-ensemble-member-*'))
  assert len(member_tags) == 3
  votes = ensemble.majority_vote([predictions(t, 'generate') for t in member_tags])
  assert predictions('ensemble', 'generate') == votes
  assert len(votes) == 24

  # The same eval with a single member as PROMPT_FILE gives that member's score.
  single = FIXTURE_BINDINGS + [b for b in bindings if not b.startswith('ENSEMBLE')] + [
      f"PROMPT_FILE = '{paths[1]}'", 'PROMPT_LENGTH = 5', "EVAL_METHODS = ('rank',)"]
  proc = run_cli(['eval', '--gin_file=configs/paper/t5_1_1_base_rte.gin',
                  '--gin_file=runs/prompt_eval.gin'] + [f'--gin_bindings={b}' for b in single],
                 rte_env(shared), str(tmp_path))
  alone = json.loads(proc.stdout[proc.stdout.index('{'):])
  assert alone['rank/accuracy'] == result['rank/members'][1]['accuracy']


def test_multi_task_train_export_and_mixed_infer(shared, tmp_path):
  model_dir = tmp_path / 'multi'
  fixture = shared(*FIXTURE)
  bindings = FIXTURE_BINDINGS + [
      f"MODEL_DIR = '{model_dir}'", f"INITIAL_CHECKPOINT_PATH = '{fixture}'",
      "MIXTURE_OR_TASK_NAME = 'quickstart_mixture'", 'TRAIN_STEPS = 2', 'BATCH_SIZE = 8',
      "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}", 'PROMPT_LENGTH = 3',
      'EVAL_PERIOD = 2', 'EVAL_MAX_EXAMPLES = 4', "EVAL_METHODS = ('generate',)",
      "PROMPT_SHARED = 'add'", "CLASS_LABELS = ['1', '2']"]
  proc = run_cli(['train', '--gin_file=configs/paper/t5_1_1_base_rte.gin',
                  '--gin_file=runs/multi_task_prompt_tuning.gin'] +
                 [f'--gin_bindings={b}' for b in bindings], rte_env(shared), str(tmp_path))
  assert 'finished (2 steps)' in proc.stdout
  names = json.loads((model_dir / 'export' / 'prompt_names.json').read_text())
  assert names == ['quickstart_first', 'quickstart_last', 'quickstart_max', 'quickstart_min']
  table = np.load(model_dir / 'export' / 'table.npy')
  assert table.shape == (4, 3, 4)
  run_cli(['export', f'--model_dir={model_dir}', '--format=peft', '--prompt_name=quickstart_min',
           f'--output={tmp_path / "min_peft"}'], {}, str(tmp_path))
  np.testing.assert_array_equal(prompt_files.load_prompt_file(str(tmp_path / 'min_peft')),
                                table[3])

  inputs = tmp_path / 'mixed.jsonl'
  inputs.write_text('{"prompt": "quickstart_max", "inputs": "3825"}\n'
                    '{"prompt": "quickstart_first", "inputs": "907"}\n')
  infer = FIXTURE_BINDINGS + [
      f"INITIAL_CHECKPOINT_PATH = '{fixture}'", f"PROMPT_LIBRARY = '{model_dir}'",
      f"INFER_INPUT_FILE = '{inputs}'", f"INFER_OUTPUT_DIR = '{tmp_path / 'out'}'",
      "MIXTURE_OR_TASK_NAME = 'quickstart_max'",
      "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}"]
  proc = run_cli(['infer', '--gin_file=models/t5_1_1_prompt.gin',
                  '--gin_file=models/sizes/small.gin', '--gin_file=runs/mixed_task_infer.gin'] +
                 [f'--gin_bindings={b}' for b in infer], {}, str(tmp_path))
  rows = [json.loads(line) for line in (tmp_path / 'out' / 'mixed-predictions.jsonl').open()]
  assert [r['prompt'] for r in rows] == ['quickstart_max', 'quickstart_first']

