"""Helpers of the gin-configured runs (prompt_tuning/runs.py) that need no full run: launch
settings named by their macro, the Adafactor step offset, and where eval/infer find a prompt.

(The best-prompt tracker and the summary printout moved to reporting.py: tests/test_reporting.py.)
"""

import numpy as np
import pytest

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning import runs

GOOD = dict(train_steps=10, batch_size=4, eval_period=5, save_period=None, keep=1,
            eval_batch_size=8, task_feature_lengths={'inputs': 64, 'targets': 8})


def check(**changes):
  runs._check_settings(**{**GOOD, **changes})


def test_good_settings_pass():
  check()
  check(train_steps=0, eval_period=0)  # nothing to train; no evaluation
  check(eval_period=None, save_period=None, keep=None)  # the settings that may be unset
  check(save_period=1, keep=3, batch_size=1, eval_batch_size=1)


@pytest.mark.parametrize('macro,changes,shown', [
    ('TRAIN_STEPS', dict(train_steps=-1), '-1'),
    ('TRAIN_STEPS', dict(train_steps=None), 'None'),
    ('TRAIN_STEPS', dict(train_steps=2.5), '2.5'),
    ('BATCH_SIZE', dict(batch_size=0), '0'),
    ('BATCH_SIZE', dict(batch_size=True), 'True'),  # a bool is not a count
    ('BATCH_SIZE', dict(batch_size='32'), "'32'"),
    ('EVAL_PERIOD', dict(eval_period=-5), '-5'),
    ('SAVE_PERIOD', dict(save_period=0), '0'),
    ('KEEP_CHECKPOINTS', dict(keep=0), '0'),
    ('runs.train.eval_batch_size', dict(eval_batch_size=0), '0'),
    ('runs.train.eval_batch_size', dict(eval_batch_size=None), 'None'),
])
def test_bad_settings_name_their_macro(macro, changes, shown):
  low = {'TRAIN_STEPS': 0, 'EVAL_PERIOD': 0}.get(macro, 1)
  with pytest.raises(ValueError) as info:
    check(**changes)
  assert str(info.value) == f'{macro} = {shown}: must be an integer >= {low}.'


@pytest.mark.parametrize('lengths', [
    {'inputs': 64}, {'targets': 8}, {'inputs': 0, 'targets': 8}, {'inputs': 64, 'targets': -1},
    {'inputs': 64.0, 'targets': 8}, {'inputs': True, 'targets': 8}, [64, 8], None])
def test_bad_feature_lengths_are_named(lengths):
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS = .*: must be a dict with positive "
                                       r"integer 'inputs' and 'targets' lengths") as info:
    check(task_feature_lengths=lengths)
  assert repr(lengths) in str(info.value)


def test_extra_feature_lengths_are_allowed():
  check(task_feature_lengths={'inputs': 64, 'targets': 8, 'extra': 3})


@pytest.mark.parametrize('setting,expected', [
    (None, 0), (0, 0), ('zero', 0), ('checkpoint', 1_100_000), (5000, 5000), (1, 1)])
def test_adafactor_offset(setting, expected):
  assert runs._adafactor_offset(setting, 1_100_000) == expected


def test_adafactor_offset_of_a_checkpoint_is_its_step():
  assert runs._adafactor_offset('checkpoint', 0) == 0
  assert runs._adafactor_offset('checkpoint', 3) == 3


@pytest.mark.parametrize('setting', [-1, 'checkpoints', 'step', 2.5, [100]])
def test_bad_adafactor_offset_is_named(setting):
  with pytest.raises(ValueError, match=r"adafactor_step_offset must be 'zero', 'checkpoint' or a "
                                       r"step count, got") as info:
    runs._adafactor_offset(setting, 7)
  assert repr(setting) in str(info.value)


def test_prompt_for_eval_from_a_file_or_model_dir(tmp_path):
  value = np.arange(12, dtype=np.float32).reshape(3, 4)
  path = tmp_path / 'prompt.npy'
  np.save(path, value)
  prompt, step, names = runs._find_prompt(None, str(path), None)
  assert step == 0 and np.array_equal(prompt, value) and names is None
  assert runs._find_prompt(None, str(path), 7)[1] == 7
  # MODEL_DIR: the latest committed step's numpy prompt.
  model_dir = str(tmp_path / 'run')
  for step in (2, 4):
    model_dir_lib.write_numpy_prompt(model_dir, step, value + step)
  (tmp_path / 'run' / 'checkpoints' / '2').mkdir(parents=True)
  prompt, step, _ = runs._find_prompt(model_dir, None, None)
  assert step == 2 and np.array_equal(prompt, value + 2)  # step 4 was never committed
  with pytest.raises(ValueError, match='Nothing to evaluate: set PROMPT_FILE or MODEL_DIR'):
    runs._find_prompt(None, None, None)


def test_adafactor_offset_refuses_true():
  # `ADAFACTOR_STEP_OFFSET = True` is no step count (_check_settings refuses bools as counts
  # too); taken as one, it would silently offset Adafactor's step by 1.
  with pytest.raises(ValueError, match=r"adafactor_step_offset must be .* got True"):
    runs._adafactor_offset(True, 7)
