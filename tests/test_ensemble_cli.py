"""One-pass prompt ensembles through the CLI (#12 item 4): real RTE validation data, the real
T5X fixture and vocabulary; each member's, the members' mean and the ensemble's scores."""

import json

import numpy as np

from prompt_tuning import ensemble, prompt_files

from cli_helpers import FIXTURE_MODEL, rte_env, run_cli


def test_ensemble_eval_on_rte(shared, tmp_path):
  paths = []
  for seed in range(3):  # three members (as from three runs): [P=5, D=4] prompts
    value = np.random.RandomState(seed).normal(scale=2.0, size=(5, 4)).astype(np.float32)
    paths.append(prompt_files.write_npy(str(tmp_path / f'member{seed}.npy'), value))
  out = tmp_path / 'out'
  bindings = FIXTURE_MODEL + [
      f"INITIAL_CHECKPOINT_PATH = '{shared('fixtures', 't5x_tiny', 'checkpoint_3')}'",
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
  single = FIXTURE_MODEL + [b for b in bindings if not b.startswith('ENSEMBLE')] + [
      f"PROMPT_FILE = '{paths[1]}'", 'PROMPT_LENGTH = 5', "EVAL_METHODS = ('rank',)"]
  proc = run_cli(['eval', '--gin_file=configs/paper/t5_1_1_base_rte.gin',
                  '--gin_file=runs/prompt_eval.gin'] + [f'--gin_bindings={b}' for b in single],
                 rte_env(shared), str(tmp_path))
  alone = json.loads(proc.stdout[proc.stdout.index('{'):])
  assert alone['rank/accuracy'] == result['rank/members'][1]['accuracy']
