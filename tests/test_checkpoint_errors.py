"""Bad input: every case raises one CheckpointError that names the file and the key/shape."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_reference import make_hf_t5
from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import CheckpointError
from test_t5x_checkpoint import FIXTURE, FIXTURE_CONFIG, copy_tree


@pytest.fixture
def fixture_copy(shared, tmp_path):
  return copy_tree(shared(*FIXTURE), str(tmp_path / 'checkpoint_3'))


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('hf')
  make_hf_t5().save_pretrained(path)
  return str(path)


def writable_hf_copy(hf_dir, tmp_path):
  return copy_tree(hf_dir, str(tmp_path / 'hf'))


def test_wrong_path(tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(CheckpointError, match=f'{missing}: no such file or directory'):
    checkpoints.load_params(missing)


def test_unknown_format(tmp_path):
  (tmp_path / 'weights.bin').write_bytes(b'\0' * 16)
  with pytest.raises(CheckpointError, match='unknown checkpoint format.*T5X.*Hugging Face'):
    checkpoints.load_params(str(tmp_path))


def test_missing_key(fixture_copy, tmp_path):
  _, params = checkpoints.load_params(fixture_copy)
  del params['encoder']['layers_1']['mlp']['wo']
  path = checkpoints.save_t5x(str(tmp_path / 'out'), params, step=1)
  with pytest.raises(CheckpointError, match=r"checkpoint_1/checkpoint: missing 1 parameter.*"
                                            r"encoder/layers_1/mlp/wo/kernel"):
    checkpoints.load_params(path)


def test_extra_key(fixture_copy, tmp_path):
  _, params = checkpoints.load_params(fixture_copy)
  params['encoder']['layers_0']['mlp']['wi_2'] = {'kernel': np.zeros((4, 8), np.float32)}
  path = checkpoints.save_t5x(str(tmp_path / 'out'), params, step=1)
  with pytest.raises(CheckpointError, match=r'unexpected parameter.*encoder/layers_0/mlp/wi_2'):
    checkpoints.load_params(path)


def test_shape_mismatch_against_config(fixture_copy):
  with pytest.raises(CheckpointError,
                     match=r"checkpoint_3/checkpoint: parameter '(en|de)coder/layers_0/mlp/wi_0/kernel'"
                           r' has shape \(4, 8\) but the config expects \(4, 16\)'):
    checkpoints.load_params(fixture_copy, FIXTURE_CONFIG.replace(d_ff=16))


def test_truncated_msgpack(fixture_copy):
  file = os.path.join(fixture_copy, 'checkpoint')
  data = open(file, 'rb').read()
  with open(file, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match=f'{file}: corrupt or truncated T5X checkpoint'):
    checkpoints.load_params(fixture_copy)


def test_corrupt_zarr_chunk(fixture_copy):
  chunk = os.path.join(fixture_copy, 'target.token_embedder.embedding', '3.0')
  with open(chunk, 'wb') as f:
    f.write(b'not gzip at all')
  with pytest.raises(CheckpointError,
                     match=r"array 'token_embedder/embedding' is corrupt or truncated"):
    checkpoints.load_params(fixture_copy)


def test_missing_zarr_array(fixture_copy):
  import shutil
  shutil.rmtree(os.path.join(fixture_copy, 'target.decoder.logits_dense.kernel'))
  with pytest.raises(CheckpointError,
                     match=r"cannot open the zarr array of 'decoder/logits_dense/kernel'"):
    checkpoints.load_params(fixture_copy)


def test_truncated_safetensors(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  data = open(file, 'rb').read()
  with open(file, 'wb') as f:
    f.write(data[:len(data) - 1000])
  with pytest.raises(CheckpointError, match=f'{file}: corrupt or truncated safetensors'):
    checkpoints.load_params(path)


def test_hf_missing_tensor(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  tensors = load_file(file)
  del tensors['decoder.block.2.layer.1.EncDecAttention.k.weight']
  save_file(tensors, file, metadata={'format': 'pt'})
  with pytest.raises(CheckpointError,
                     match=r"missing tensor 'decoder.block.2.layer.1.EncDecAttention.k.weight' "
                           r"\(T5X 'decoder/layers_2/encoder_decoder_attention/key/kernel'\)"):
    checkpoints.load_params(path)


def test_hf_shape_mismatch(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  tensors = load_file(file)
  tensors['encoder.block.1.layer.1.DenseReluDense.wo.weight'] = np.zeros((32, 50), np.float32)
  save_file(tensors, file, metadata={'format': 'pt'})
  with pytest.raises(CheckpointError, match=r"'encoder/layers_1/mlp/wo/kernel' has shape "
                                            r'\(50, 32\) but the config expects \(48, 32\)'):
    checkpoints.load_params(path)


def test_hf_t5_1_0_rejected(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'config.json')
  config = json.load(open(file))
  config['feed_forward_proj'] = 'relu'
  json.dump(config, open(file, 'w'))
  with pytest.raises(CheckpointError, match="config.json: feed_forward_proj is 'relu'"):
    checkpoints.load_params(path)


def test_hf_bad_json(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write('{"d_model": ')
  with pytest.raises(CheckpointError, match='config.json: not valid JSON'):
    checkpoints.load_params(path)


def test_save_hf_with_missing_param(tiny, tmp_path):
  config, params = tiny
  params = {**params, 'decoder': {k: v for k, v in params['decoder'].items()
                                  if k != 'logits_dense'}}
  with pytest.raises(CheckpointError, match="missing 1 parameter.*decoder/logits_dense/kernel"):
    checkpoints.save_hf(str(tmp_path), config, params)
  assert not os.listdir(tmp_path)
