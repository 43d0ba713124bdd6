"""T5X legacy checkpoints: the real fixture, write/read round trips, layout, laziness."""

import json
import os

import jax
import numpy as np
import pytest
from flax import serialization

from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import t5x
from prompt_tuning.checkpoints.common import flatten
from prompt_tuning.models import t5
from prompt_tuning.testing import FIXTURE, FIXTURE_CONFIG


def test_fixture_loads_with_exact_embedding_and_shapes(shared):
  config, params = checkpoints.load_params(shared(*FIXTURE))
  expected = np.load(shared('fixtures', 't5x_tiny', 'embedding_32128x4.npy'))
  got = params['token_embedder']['embedding']
  assert got.dtype == expected.dtype
  np.testing.assert_array_equal(got, expected)
  # Shapes derived from the arrays; max distance is not in the format (default 128).
  assert config == FIXTURE_CONFIG.replace(relpos_max_distance=128)
  shapes = {k: tuple(v.shape) for k, v in flatten(t5.param_shapes(FIXTURE_CONFIG)).items()}
  assert {k: tuple(v.shape) for k, v in flatten(params).items()} == shapes


def test_fixture_forward_is_finite(shared):
  config, params = checkpoints.load_params(shared(*FIXTURE), FIXTURE_CONFIG)
  model = t5.EncoderDecoder(config.replace(dtype='float32'))
  enc = np.array([[37, 423, 9, 1, 0, 0], [8, 1, 0, 0, 0, 0]])
  logits = jax.jit(model.apply)({'params': params}, enc, np.array([[0, 5, 6], [0, 7, 0]]),
                       np.array([[5, 6, 1], [7, 1, 0]]))
  assert logits.shape == (2, 3, 32128)
  assert np.isfinite(np.asarray(logits)).all()


def test_accepts_model_dir_and_checkpoint_file(shared, assert_identical):
  _, by_dir = checkpoints.load_params(shared(*FIXTURE))
  _, by_file = checkpoints.load_params(shared(*FIXTURE, 'checkpoint'))
  _, by_model_dir = checkpoints.load_params(shared('fixtures', 't5x_tiny'))
  assert_identical(by_dir, by_file)
  assert_identical(by_dir, by_model_dir)


def test_t5x_round_trip_is_bit_identical_and_keeps_layout(shared, tmp_path, assert_identical):
  _, params = checkpoints.load_params(shared(*FIXTURE))
  path = checkpoints.save_t5x(str(tmp_path), params, step=3)
  assert path == str(tmp_path / 'checkpoint_3')
  _, again = checkpoints.load_params(path)
  assert_identical(params, again)
  # Same files as T5X wrote: the msgpack plus one zarr directory per kernel/embedding.
  assert sorted(os.listdir(path)) == sorted(os.listdir(shared(*FIXTURE)))
  ours = _raw_structure(os.path.join(path, 'checkpoint'))
  theirs = _raw_structure(shared(*FIXTURE, 'checkpoint'))
  assert ours == theirs


def _raw_structure(file):
  """Every leaf path with its kind and shape (ts specs by their metadata shape)."""
  with open(file, 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  out = {}
  def walk(x, p):
    if isinstance(x, dict) and {'driver', 'kvstore', 'metadata'} <= set(x):
      out[p] = ('zarr', tuple(x['metadata']['shape']), x['kvstore']['path'])
    elif isinstance(x, dict):
      for k, v in x.items():
        walk(v, f'{p}/{k}')
    else:
      out[p] = ('inline', tuple(np.shape(x)), str(np.asarray(x).dtype))
  walk(tree, '')
  return out


def test_written_step_and_adafactor_state(shared, tmp_path):
  _, params = checkpoints.load_params(shared(*FIXTURE))
  path = checkpoints.save_t5x(str(tmp_path), params, step=1_100_000)
  with open(os.path.join(path, 'checkpoint'), 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  assert tree['version'] == 3
  assert int(tree['optimizer']['state']['step']) == 1_100_000


def test_adafactor_state_is_factored_for_large_kernels():
  flat = {'a/kernel': np.zeros((512, 1024), np.float32), 'b/scale': np.zeros((512,), np.float32)}
  state = t5x.adafactor_initial_state(flat)
  assert state['a/kernel']['v_row'].shape == (512,) and state['a/kernel']['v_col'].shape == (1024,)
  assert state['a/kernel']['v'].shape == (1,)
  assert state['b/scale']['v'].shape == (512,) and state['b/scale']['v_row'].shape == (1,)


def test_hf_round_trip_of_fixture_is_bit_identical(shared, tmp_path, assert_identical):
  config, params = checkpoints.load_params(shared(*FIXTURE), FIXTURE_CONFIG)
  out = checkpoints.save_hf(str(tmp_path / 'hf'), config, params)
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['relative_attention_max_distance'] == 8
  config2, params2 = checkpoints.load_params(out)
  assert config2 == config
  assert_identical(params, params2)


def test_bfloat16_t5x_round_trip(shared, tmp_path, assert_identical):
  config, params = checkpoints.load_params(shared(*FIXTURE),
                                           FIXTURE_CONFIG.replace(param_dtype='bfloat16'))
  path = checkpoints.save_t5x(str(tmp_path), params, step=7)
  with open(os.path.join(path, 'target.token_embedder.embedding', '.zarray')) as f:
    assert json.load(f)['dtype'] == 'bfloat16'
  config2, params2 = checkpoints.load_params(path)
  assert config2.param_dtype == 'bfloat16'
  assert_identical(params, params2)


def test_optimizer_state_arrays_are_never_opened(fixture_copy):
  """A zarr-backed optimizer state whose files are absent must not matter for params."""
  ckpt = fixture_copy
  file = os.path.join(ckpt, 'checkpoint')
  with open(file, 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  tree['optimizer']['state']['param_states']['token_embedder']['embedding']['v'] = {
      'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': 'state.param_states.missing'},
      'metadata': {'shape': [32128, 4], 'chunks': [4096, 4], 'dtype': '<f4',
                   'compressor': {'id': 'gzip', 'level': 1}}}
  with open(file, 'wb') as f:
    f.write(serialization.msgpack_serialize(tree))
  _, params = checkpoints.load_params(ckpt)
  assert params['token_embedder']['embedding'].shape == (32128, 4)


def test_save_refuses_to_overwrite_unless_asked(shared, tmp_path, assert_identical):
  _, params = checkpoints.load_params(shared(*FIXTURE))
  checkpoints.save_t5x(str(tmp_path), params, step=1)
  with pytest.raises(checkpoints.CheckpointError, match='already exists'):
    checkpoints.save_t5x(str(tmp_path), params, step=1)
  params['encoder']['encoder_norm']['scale'] = params['encoder']['encoder_norm']['scale'] * 2
  checkpoints.save_t5x(str(tmp_path), params, step=1, overwrite=True)
  _, again = checkpoints.load_params(str(tmp_path / 'checkpoint_1'))
  assert_identical(params, again)
  assert sorted(os.listdir(tmp_path)) == ['checkpoint_1']


def test_gcs_and_gfile_specs_resolve():
  spec = {'driver': 'zarr', 'kvstore': {'driver': 'gcs', 'bucket': 't5x-dummy-bucket',
                                        'path': 'target.token_embedder.embedding'},
          'metadata': {}}
  gcs = t5x.absolute_spec(spec, 'gs://my-bucket/models/lm100k/checkpoint_1100000')
  assert gcs['kvstore'] == {
      'driver': 'gcs', 'bucket': 'my-bucket',
      'path': 'models/lm100k/checkpoint_1100000/target.token_embedder.embedding'}
  local = t5x.absolute_spec({**spec, 'kvstore': {'driver': 'gfile', 'path': 'target.x'}}, '/ckpt')
  assert local['kvstore'] == {'driver': 'file', 'path': '/ckpt/target.x'}
  # tensorstore < 0.1.14 kept the path at the top level.
  old = t5x.absolute_spec({'driver': 'zarr', 'kvstore': {'driver': 'file'}, 'path': 'target.y',
                           'metadata': {}}, '/ckpt')
  assert old['kvstore']['path'] == '/ckpt/target.y'
