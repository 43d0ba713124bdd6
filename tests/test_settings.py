"""A training launch's settings (train/settings.py): numbers named by their macro and the
Adafactor step offset."""

import pytest

from prompt_tuning.train import settings

GOOD = dict(train_steps=10, batch_size=4, eval_period=5, save_period=None, keep=1,
            eval_batch_size=8, task_feature_lengths={'inputs': 64, 'targets': 8})


def check(**changes):
  settings.check_settings(**{**GOOD, **changes})


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
  assert settings.adafactor_offset(setting, 1_100_000) == expected


def test_adafactor_offset_of_a_checkpoint_is_its_step():
  assert settings.adafactor_offset('checkpoint', 0) == 0
  assert settings.adafactor_offset('checkpoint', 3) == 3


@pytest.mark.parametrize('setting', [-1, 'checkpoints', 'step', 2.5, [100]])
def test_bad_adafactor_offset_is_named(setting):
  with pytest.raises(ValueError, match=r"adafactor_step_offset must be 'zero', 'checkpoint' or a "
                                       r"step count, got") as info:
    settings.adafactor_offset(setting, 7)
  assert repr(setting) in str(info.value)


def test_adafactor_offset_refuses_true():
  # `ADAFACTOR_STEP_OFFSET = True` is no step count (check_settings refuses bools as counts
  # too); taken as one, it would silently offset Adafactor's step by 1.
  with pytest.raises(ValueError, match=r"adafactor_step_offset must be .* got True"):
    settings.adafactor_offset(True, 7)
