"""MODEL_DIR's layout, readers and repair, on the states a kill can leave."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from prompt_tuning.train import records
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import repair as repair_lib
from prompt_tuning.models import t5
from prompt_tuning.train import loop
from train_fixtures import batches, make_trainer


def uniform_init(rng, shape):
  return jax.random.uniform(rng, shape, minval=-0.5, maxval=0.5)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A 4-step run saved every 2 steps, keeping 2 orbax steps: committed [2, 4], numpy 0, 2, 4."""
  config = t5.T5Config.preset('tiny', dtype='float32')
  path = str(tmp_path_factory.mktemp('finished') / 'run')
  loop.train(make_trainer(config, t5.init_params(config)), lambda pos: batches(pos), path, 4,
             prompt_init=uniform_init, save_every=2, keep=2)
  return path


@pytest.fixture
def run(finished, tmp_path):
  path = str(tmp_path / 'run')
  shutil.copytree(finished, path)
  return path


def _numpy(path, step):
  return np.load(model_dir_lib.numpy_prompt_path(path, step))


def test_layout_of_a_finished_run(run):
  assert model_dir_lib.committed_steps(run) == [2, 4]
  assert model_dir_lib.numpy_steps(run) == [0, 2, 4]
  assert model_dir_lib.prompt_steps(run) == [0, 2, 4]
  value, step = model_dir_lib.load_prompt(run)
  assert step == 4 and value.tobytes() == _numpy(run, 4).tobytes()
  assert repair_lib.repair(run, keep=2) == 4
  assert model_dir_lib.numpy_steps(run) == [0, 2, 4]


def test_numpy_prompt_past_the_committed_step_is_never_read_and_is_removed(run):
  # A kill after the numpy prompt of step 6 and before orbax committed it.
  model_dir_lib.write_numpy_prompt(run, 6, np.ones((5, 32), np.float32))
  assert model_dir_lib.prompt_steps(run) == [0, 2, 4]
  assert model_dir_lib.load_prompt(run)[1] == 4
  with pytest.raises(model_dir_lib.ModelDirError, match=r'no prompt for step 6; available: '
                                                        r'\[0, 2, 4\]'):
    model_dir_lib.load_prompt(run, 6)
  repair_lib.repair(run, keep=2)
  assert model_dir_lib.numpy_steps(run) == [0, 2, 4]


def test_committed_step_without_numpy_prompt_is_read_from_orbax_and_rewritten(run):
  expected = _numpy(run, 4)
  shutil.rmtree(os.path.dirname(model_dir_lib.numpy_prompt_path(run, 4)))
  value, step = model_dir_lib.load_prompt(run)
  assert step == 4 and value.tobytes() == expected.tobytes()
  repair_lib.repair(run, keep=2)
  assert _numpy(run, 4).tobytes() == expected.tobytes()


def test_temporaries_are_ignored_then_removed(run):
  numpy_tmp = os.path.join(run, 'numpy_checkpoints', 'checkpoint_6.tmp-123')
  os.makedirs(numpy_tmp)
  open(os.path.join(numpy_tmp, model_dir_lib.NUMPY_NAME), 'wb').close()
  half = os.path.join(run, 'numpy_checkpoints', 'checkpoint_8')
  os.makedirs(half)
  open(os.path.join(half, model_dir_lib.NUMPY_NAME + '.tmp-99'), 'wb').close()
  orbax_tmp = os.path.join(run, 'checkpoints', '6.orbax-checkpoint-tmp-1234')
  os.makedirs(orbax_tmp)
  open(os.path.join(run, 'summary.json.tmp-5'), 'w').close()
  assert model_dir_lib.prompt_steps(run) == [0, 2, 4]
  repair_lib.repair(run, keep=2)
  leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(run) for n in dirs + files
               if '.tmp-' in n or 'orbax-checkpoint-tmp' in n or n == 'checkpoint_8']
  assert leftovers == []


def test_steps_beyond_keep_are_pruned(run):
  # orbax commits the new step, then deletes the old one: a kill in between leaves both.
  repair_lib.repair(run, keep=1)
  assert model_dir_lib.committed_steps(run) == [4]
  assert model_dir_lib.numpy_steps(run) == [0, 2, 4]  # numpy prompts are all kept, as T5X does


def _write_records(run):
  metrics = os.path.join(run, model_dir_lib.METRICS)
  with open(metrics, 'w') as f:
    for record in ({'kind': 'train', 'step': 2}, {'kind': 'eval', 'step': 2},
                   {'kind': 'train', 'step': 4}, {'kind': 'train', 'step': 5}):
      f.write(json.dumps(record) + '\n')
    f.write('{"kind": "train", "st')  # cut mid-line
  eval_dir = os.path.join(run, model_dir_lib.INFERENCE_EVAL)
  os.makedirs(eval_dir)
  for step in (2, 4, 6):
    open(os.path.join(eval_dir, f'rte-rank-step{step}.jsonl'), 'w').write('{}\n')
  open(os.path.join(eval_dir, 'rte-rank-eval-step4.jsonl'), 'w').write('{}\n')
  with open(os.path.join(eval_dir, 'rte-metrics.jsonl'), 'w') as f:
    for step, tag in ((2, ''), (4, ''), (4, 'eval'), (6, '')):
      f.write(json.dumps({'step': step, 'method': 'rank', 'tag': tag}) + '\n')
  return metrics, eval_dir


def test_records_past_the_committed_step_and_a_cut_evaluation_are_dropped(run):
  metrics, eval_dir = _write_records(run)
  assert not model_dir_lib.eval_done(run, 4)
  repair_lib.repair(run, keep=2)
  assert [(r['kind'], r['step']) for r in records.read_jsonl(metrics)] == [
      ('train', 2), ('eval', 2), ('train', 4)]
  # Step 4's evaluation has no final record: its files go, it is rerun. The `eval` command's
  # files and records (tag 'eval') are not the training run's to remove.
  assert sorted(os.listdir(eval_dir)) == ['rte-metrics.jsonl', 'rte-rank-eval-step4.jsonl',
                                          'rte-rank-step2.jsonl']
  assert [(r['step'], r['tag']) for r in records.read_jsonl(
      os.path.join(eval_dir, 'rte-metrics.jsonl'))] == [(2, ''), (4, 'eval')]


def test_a_complete_evaluation_of_the_committed_step_is_kept(run):
  metrics, eval_dir = _write_records(run)
  records.append_jsonl(metrics, {'kind': 'eval', 'step': 4})
  assert model_dir_lib.eval_done(run, 4)
  repair_lib.repair(run, keep=2)
  assert 'rte-rank-step4.jsonl' in os.listdir(eval_dir)
  steps = [r['step'] for r in records.read_jsonl(os.path.join(eval_dir,
                                                                    'rte-metrics.jsonl'))]
  assert steps == [2, 4, 4]


def test_readers_name_what_is_missing(tmp_path):
  with pytest.raises(model_dir_lib.ModelDirError, match='no such directory'):
    model_dir_lib.load_prompt(str(tmp_path / 'none'))
  with pytest.raises(model_dir_lib.ModelDirError, match='no committed checkpoint'):
    model_dir_lib.load_prompt(str(tmp_path))


def test_usable_model_dir(tmp_path):
  model_dir_lib.check_usable(str(tmp_path / 'new' / 'run'))
  assert not (tmp_path / 'new').exists()  # checking writes nothing
  (tmp_path / 'f').write_text('x')
  with pytest.raises(model_dir_lib.ModelDirError, match='is a file, not a directory'):
    model_dir_lib.check_usable(str(tmp_path / 'f'))
  with pytest.raises(model_dir_lib.ModelDirError, match='is a file, so the directory cannot'):
    model_dir_lib.check_usable(str(tmp_path / 'f' / 'run'))
