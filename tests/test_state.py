"""PromptCheckpointer and has_checkpoint (prompt_tuning/train/state.py) on a tiny trainer's state.

No train step is compiled here: states are made by `init_state` and changed on the host.
"""

import os

import jax
import numpy as np
import pytest

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5
from prompt_tuning.train import state as state_lib
from train_fixtures import make_trainer

P = 5


@pytest.fixture(scope='module')
def trainer():
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=64, d_model=8, d_ff=16,
                              num_heads=2, head_dim=4, num_encoder_layers=1,
                              num_decoder_layers=1)
  rng = np.random.RandomState(0)
  frozen = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype),
                                  t5.param_shapes(config))
  return make_trainer(config, frozen, prompt_length=P)


def make_state(trainer, step, seed=0):
  """A state at `step` whose every leaf (optimizer state included) is distinct and non-zero."""
  rng = np.random.RandomState(step * 7 + seed)
  state = trainer.init_state(rng.uniform(-0.5, 0.5, trainer.prompt_shape), seed=seed + step,
                             step=step)
  opt_state = jax.tree_util.tree_map(
      lambda x: np.asarray(rng.uniform(1, 2, np.shape(x)), np.asarray(x).dtype)
      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, jax.device_get(state.opt_state))
  return state.replace(opt_state=opt_state)


def leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(state))]


def assert_same_state(a, b):
  la, lb = leaves(a), leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def test_save_then_restore_round_trips_the_state_and_data_position(trainer, tmp_path):
  state = make_state(trainer, 3)
  ckpt = state_lib.PromptCheckpointer(str(tmp_path))
  try:
    assert ckpt.save(state, data_position=17) == 3
    assert ckpt.latest_step() == 3
  finally:
    ckpt.close()
  reader = state_lib.PromptCheckpointer(str(tmp_path), read_only=True)
  try:
    restored, meta = reader.restore(trainer.abstract_state())
  finally:
    reader.close()
  assert meta == {'step': 3, 'data_position': 17}
  assert int(restored.step) == 3
  assert_same_state(restored, state)
  # The round trip is not vacuous: another step's state differs from this one.
  assert any(not np.array_equal(x, y) for x, y in zip(leaves(make_state(trainer, 4)),
                                                      leaves(restored)))


def test_restore_of_an_earlier_kept_step(trainer, tmp_path):
  ckpt = state_lib.PromptCheckpointer(str(tmp_path), keep=None)
  try:
    for step in (1, 2):
      ckpt.save(make_state(trainer, step), data_position=10 * step)
    restored, meta = ckpt.restore(trainer.abstract_state(), step=1)
  finally:
    ckpt.close()
  assert meta['data_position'] == 10 and int(restored.step) == 1
  assert_same_state(restored, make_state(trainer, 1))


def test_keep_keeps_only_the_last_steps_and_every_numpy_prompt(trainer, tmp_path):
  ckpt = state_lib.PromptCheckpointer(str(tmp_path), keep=2)
  try:
    for step in (1, 2, 3, 4):
      ckpt.save(make_state(trainer, step), data_position=step)
    assert ckpt.all_steps() == [3, 4]
  finally:
    ckpt.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '4']
  # The numpy prompts of every step stay (T5X keeps them all too).
  assert model_dir_lib.numpy_steps(str(tmp_path)) == [1, 2, 3, 4]


def test_the_steps_numpy_prompt_is_written_beside_it(trainer, tmp_path):
  state = make_state(trainer, 6)
  ckpt = state_lib.PromptCheckpointer(str(tmp_path))
  try:
    ckpt.save(state, data_position=6)
  finally:
    ckpt.close()
  # The anchor's layout: numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt.prompt.
  path = tmp_path / 'numpy_checkpoints' / 'checkpoint_6' / 'encoder.prompt.prompt.prompt'
  assert model_dir_lib.numpy_prompt_path(str(tmp_path), 6) == str(path)
  with open(path, 'rb') as f:
    saved = np.load(f)
  expected = np.asarray(jax.device_get(prompt_lib.get_prompt(state.params)))
  assert saved.dtype == np.float32 and saved.shape == (P, trainer.model_config.d_model)
  np.testing.assert_array_equal(saved, expected)
  assert os.listdir(path.parent.parent) == ['checkpoint_6']  # no temporary left behind
  assert model_dir_lib.load_prompt(str(tmp_path))[1] == 6


def _damage(step_dir):
  """Overwrites every file of a committed step with bytes no reader accepts."""
  damaged = 0
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\x00garbage\xff' * 3)
      damaged += 1
  assert damaged


def test_restoring_a_damaged_step_names_its_path(trainer, tmp_path):
  ckpt = state_lib.PromptCheckpointer(str(tmp_path), keep=None)
  try:
    ckpt.save(make_state(trainer, 1), data_position=1)
    ckpt.save(make_state(trainer, 2), data_position=2)
  finally:
    ckpt.close()
  step_dir = os.path.join(model_dir_lib.checkpoints_dir(str(tmp_path)), '2')
  _damage(step_dir)
  reader = state_lib.PromptCheckpointer(str(tmp_path), keep=None, read_only=True)
  try:
    with pytest.raises(model_dir_lib.ModelDirError) as info:
      reader.restore(trainer.abstract_state())
    message = str(info.value)
    assert message.startswith(f'{step_dir}: cannot restore step 2'), message
    assert f'delete {step_dir}' in message and '\n' not in message
    # The earlier step is untouched and still restores.
    restored, meta = reader.restore(trainer.abstract_state(), step=1)
  finally:
    reader.close()
  assert meta['data_position'] == 1
  assert_same_state(restored, make_state(trainer, 1))


def test_read_only_creates_nothing(trainer, tmp_path):
  model_dir = tmp_path / 'absent'
  reader = state_lib.PromptCheckpointer(str(model_dir), read_only=True)
  try:
    assert reader.latest_step() is None and reader.all_steps() == []
    with pytest.raises(FileNotFoundError, match='No checkpoint in .*absent'):
      reader.restore(trainer.abstract_state())
  finally:
    reader.close()
  assert not model_dir.exists()
  # A writer, by contrast, makes its directory.
  writer = state_lib.PromptCheckpointer(str(model_dir))
  try:
    writer.save(make_state(trainer, 0), data_position=0)
  finally:
    writer.close()
  assert (model_dir / 'checkpoints' / '0').is_dir()


def test_has_checkpoint(trainer, tmp_path):
  model_dir = str(tmp_path / 'run')
  assert not state_lib.has_checkpoint(model_dir)  # no directory at all
  os.makedirs(os.path.join(model_dir, 'checkpoints', '4.orbax-checkpoint-tmp-99'))
  model_dir_lib.write_numpy_prompt(model_dir, 4, np.zeros((P, 8), np.float32))
  assert not state_lib.has_checkpoint(model_dir)  # an unfinished save and a numpy prompt alone
  ckpt = state_lib.PromptCheckpointer(model_dir)
  try:
    ckpt.save(make_state(trainer, 2), data_position=2)
  finally:
    ckpt.close()
  assert state_lib.has_checkpoint(model_dir)
