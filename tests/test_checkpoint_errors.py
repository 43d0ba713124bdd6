"""Bad input: every case raises one CheckpointError that names the file and the key/shape."""

import json
import os
import re
import shutil
import struct

import msgpack
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization
from safetensors.numpy import load_file, save_file

from hf_reference import make_hf_t5
from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import CheckpointError, t5x
from prompt_tuning.testing import FIXTURE_CONFIG


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('hf')
  make_hf_t5().save_pretrained(path)
  return str(path)


def writable_hf_copy(hf_dir, tmp_path):
  return shutil.copytree(hf_dir, str(tmp_path / 'hf'))


def one_line_error(fn, *args, **kwargs) -> str:
  """The CheckpointError message of fn(*args); fails if it spans lines."""
  with pytest.raises(CheckpointError) as e:
    fn(*args, **kwargs)
  message = str(e.value)
  assert '\n' not in message, message
  return message


def rewrite_t5x_target(ckpt_dir, edit):
  """Applies edit(target) to the undecoded parameter tree of a checkpoint's msgpack file."""
  file = os.path.join(ckpt_dir, 'checkpoint')
  with open(file, 'rb') as f:
    contents = msgpack.unpackb(f.read(), ext_hook=msgpack.ExtType, strict_map_key=False)
  edit(contents['optimizer']['target'])
  with open(file, 'wb') as f:
    f.write(msgpack.packb(contents))


def inline_ext(array):
  """How flax stores `array` inline in a msgpack checkpoint."""
  packed = serialization.msgpack_serialize({'x': array})
  return msgpack.unpackb(packed, ext_hook=msgpack.ExtType)['x']


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
                     match=r"checkpoint_3/checkpoint: parameter "
                           r"'(en|de)coder/layers_0/mlp/wi_0/kernel'"
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


def test_checkpoint_error_is_one_line():
  assert str(CheckpointError('a: first\n  second\n')) == 'a: first second'


def test_missing_zarr_chunk(fixture_copy):
  # tensorstore reads an absent chunk as zeros: the kernel would load silently zeroed.
  array = os.path.join(fixture_copy, 'target.encoder.layers_0.attention.query.kernel')
  os.remove(os.path.join(array, '0.0'))
  message = one_line_error(checkpoints.load_params, fixture_copy)
  assert message.startswith(f'{fixture_copy}: ')
  assert (f"array 'encoder/layers_0/attention/query/kernel' is missing 1 of its 1 zarr chunk "
          f'file(s) (0.0) under {array}') in message


def test_missing_zarr_chunks_of_a_multi_chunk_array(fixture_copy):
  array = os.path.join(fixture_copy, 'target.decoder.logits_dense.kernel')
  for chunk in ('0.3', '0.5'):
    os.remove(os.path.join(array, chunk))
  message = one_line_error(checkpoints.load_params, fixture_copy, FIXTURE_CONFIG)
  assert "'decoder/logits_dense/kernel' is missing 2 of its 8 zarr chunk file(s) (0.3, 0.5)" in (
      message)


def test_zarr_slash_separator_chunks_are_found_and_checked(fixture_copy):
  # zarr's dimension_separator '/' nests chunks as <i>/<j>.
  array = os.path.join(fixture_copy, 'target.decoder.logits_dense.kernel')
  zarray = json.load(open(os.path.join(array, '.zarray')))
  json.dump({**zarray, 'dimension_separator': '/'}, open(os.path.join(array, '.zarray'), 'w'))
  os.makedirs(os.path.join(array, '0'))
  for j in range(8):
    os.rename(os.path.join(array, f'0.{j}'), os.path.join(array, '0', str(j)))
  _, params = checkpoints.load_params(fixture_copy, FIXTURE_CONFIG)
  assert np.all(params['decoder']['logits_dense']['kernel'][:, -1] != 0)
  os.remove(os.path.join(array, '0', '7'))
  message = one_line_error(checkpoints.load_params, fixture_copy, FIXTURE_CONFIG)
  assert "'decoder/logits_dense/kernel' is missing 1 of its 8 zarr chunk file(s) (0/7)" in message


def test_zarr_0d_1d_and_empty_arrays(tmp_path):
  ckpt = tmp_path / 'checkpoint_1'
  target = {}
  for name, shape, chunks, sep in (('scalar', [], [], '.'), ('vector', [7], [3], '.'),
                                   ('empty', [0, 4], [2, 4], '.'), ('nested', [5, 6], [2, 4], '/')):
    metadata = {'chunks': chunks, 'dtype': '<f4', 'shape': shape, 'dimension_separator': sep,
                'compressor': {'id': 'gzip', 'level': 1}}
    spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': f'target.{name}'},
            'metadata': metadata}
    store = ts.open(t5x.absolute_spec(spec, str(ckpt)), create=True).result()
    store.write(np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1).result()
    target[name] = spec
  with open(ckpt / 'checkpoint', 'wb') as f:
    f.write(serialization.msgpack_serialize({'version': 3, 'optimizer': {'target': target}}))
  flat, _, _ = t5x.read_params(str(ckpt))
  assert {k: v.shape for k, v in flat.items()} == {
      'scalar': (), 'vector': (7,), 'empty': (0, 4), 'nested': (5, 6)}
  assert flat['scalar'] == 1 and flat['vector'][-1] == 7 and flat['nested'][-1, -1] == 30
  for name, chunk in (('scalar', '0'), ('vector', '2'), ('nested', '2/1')):
    path = ckpt / f'target.{name}' / chunk
    data = path.read_bytes()
    path.unlink()
    message = one_line_error(t5x.read_params, str(ckpt))
    assert f"array {name!r} is missing 1 of its" in message and f'({chunk}) under' in message
    path.write_bytes(data)


def test_corrupt_zarr_chunk_is_one_line(fixture_copy):
  chunk = os.path.join(fixture_copy, 'target.decoder.logits_dense.kernel', '0.2')
  data = open(chunk, 'rb').read()
  with open(chunk, 'wb') as f:
    f.write(data[:len(data) // 2])
  message = one_line_error(checkpoints.load_params, fixture_copy)
  assert "array 'decoder/logits_dense/kernel' is corrupt or truncated" in message


def test_t5x_int32_zarr_array(fixture_copy):
  # A kernel stored as int32 would be cast to float on load: silently wrong weights.
  name = 'target.encoder.layers_0.mlp.wi_0.kernel'
  array = os.path.join(fixture_copy, name)
  shutil.rmtree(array)
  metadata = {'chunks': [4, 8], 'compressor': {'id': 'gzip', 'level': 1}, 'dtype': '<i4',
              'shape': [4, 8]}
  store = ts.open({'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': array},
                   'metadata': metadata}, create=True).result()
  store.write(np.ones((4, 8), np.int32)).result()
  rewrite_t5x_target(fixture_copy, lambda t: t['encoder']['layers_0']['mlp']['wi_0']['kernel'][
      'metadata'].update(dtype='<i4'))
  message = one_line_error(checkpoints.load_params, fixture_copy)
  assert re.match(rf"{re.escape(array)}: parameter 'encoder/layers_0/mlp/wi_0/kernel' has dtype "
                  r'int32; checkpoint parameters must be floating point', message), message


def test_t5x_inline_bool_array(fixture_copy):
  rewrite_t5x_target(fixture_copy, lambda t: t['encoder']['encoder_norm'].update(
      scale=inline_ext(np.ones(4, bool))))
  message = one_line_error(checkpoints.load_params, fixture_copy)
  assert message.startswith(os.path.join(fixture_copy, 'checkpoint') + ': ')
  assert "parameter 'encoder/encoder_norm/scale' has dtype bool" in message


def test_t5x_inline_array_with_inconsistent_bytes(fixture_copy):
  bad = msgpack.ExtType(1, msgpack.packb(((5,), 'float32', np.ones(4, np.float32).tobytes())))
  rewrite_t5x_target(fixture_copy, lambda t: t['decoder']['decoder_norm'].update(scale=bad))
  message = one_line_error(checkpoints.load_params, fixture_copy)
  assert "checkpoint: cannot decode the inline array of 'decoder/decoder_norm/scale'" in message


def test_t5x_inline_array_wrong_shape(fixture_copy, tmp_path):
  _, params = checkpoints.load_params(fixture_copy)
  params['encoder']['encoder_norm']['scale'] = np.ones(5, np.float32)
  path = checkpoints.save_t5x(str(tmp_path / 'out'), params, step=1)
  message = one_line_error(checkpoints.load_params, path)
  assert message == (f"{path}/checkpoint: parameter 'encoder/encoder_norm/scale' has shape (5,) "
                     f'but the config expects (4,).')


def test_t5x_wrong_rank_for_config_derivation(fixture_copy, tmp_path):
  _, params = checkpoints.load_params(fixture_copy)
  params['encoder']['relpos_bias']['rel_embedding'] = np.ones(8, np.float32)
  path = checkpoints.save_t5x(str(tmp_path / 'out'), params, step=1)
  message = one_line_error(checkpoints.load_params, path)
  assert "parameter 'encoder/relpos_bias/rel_embedding' has shape (8,); expected a 2-d" in message


def test_save_t5x_refuses_int_params(fixture_copy, tmp_path):
  _, params = checkpoints.load_params(fixture_copy)
  params['decoder']['layers_1']['mlp']['wo']['kernel'] = np.ones((8, 4), np.int32)
  message = one_line_error(checkpoints.save_t5x, str(tmp_path / 'out'), params, step=1)
  assert "parameter 'decoder/layers_1/mlp/wo/kernel' has dtype int32" in message
  assert not os.path.exists(tmp_path / 'out') or not os.listdir(tmp_path / 'out')


def test_hf_int32_tensor(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  tensors = load_file(file)
  name = 'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'
  tensors[name] = np.ones_like(tensors[name], np.int32)
  save_file(tensors, file, metadata={'format': 'pt'})
  message = one_line_error(checkpoints.load_params, path)
  assert message.startswith(f'{file}: tensor {name!r} '
                            f"(T5X 'encoder/layers_0/mlp/wi_0/kernel') has dtype int32")


def test_save_hf_refuses_int_params(tiny, tmp_path):
  config, params = tiny
  params = {**params, 'token_embedder': {'embedding': np.ones(
      params['token_embedder']['embedding'].shape, np.int32)}}
  message = one_line_error(checkpoints.save_hf, str(tmp_path), config, params)
  assert "parameter 'token_embedder/embedding' has dtype int32" in message
  assert not os.listdir(tmp_path)


def test_hf_wrong_rank(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  tensors = load_file(file)
  tensors['decoder.final_layer_norm.weight'] = np.ones((1, 32), np.float32)
  save_file(tensors, file, metadata={'format': 'pt'})
  message = one_line_error(checkpoints.load_params, path)
  assert message == (f"{path} (Hugging Face safetensors): parameter 'decoder/decoder_norm/scale' "
                     f'has shape (1, 32) but the config expects (32,).')


def test_truncated_safetensors_is_one_line(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  data = open(file, 'rb').read()
  for blob in (data[:len(data) - 4], data[:12], b''):
    with open(file, 'wb') as f:
      f.write(blob)
    message = one_line_error(checkpoints.load_params, path)
    assert message.startswith(f'{file}: corrupt or truncated safetensors file ('), message


def test_safetensors_header_that_lies(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  file = os.path.join(path, 'model.safetensors')
  data = open(file, 'rb').read()
  n = struct.unpack('<Q', data[:8])[0]
  header = json.loads(data[8:8 + n])
  header['encoder.final_layer_norm.weight']['shape'] = [33]  # more bytes than its offsets hold
  blob = json.dumps(header).encode()
  with open(file, 'wb') as f:
    f.write(struct.pack('<Q', len(blob)) + blob + data[8 + n:])
  message = one_line_error(checkpoints.load_params, path)
  assert message.startswith(f'{file}: corrupt or truncated safetensors file ('), message


def test_hf_tensor_in_two_shards(hf_dir, tmp_path):
  path = writable_hf_copy(hf_dir, tmp_path)
  tensors = load_file(os.path.join(path, 'model.safetensors'))
  os.remove(os.path.join(path, 'model.safetensors'))
  name = 'shared.weight'
  names = sorted(tensors)
  shards = {'a.safetensors': {k: tensors[k] for k in names[:10]},
            'b.safetensors': {k: tensors[k] for k in names[10:] + [name]}}
  shards['a.safetensors'][name] = np.zeros_like(tensors[name])
  for shard, content in shards.items():
    save_file(content, os.path.join(path, shard), metadata={'format': 'pt'})
  weight_map = {k: shard for shard, content in shards.items() for k in content}
  json.dump({'weight_map': weight_map},
            open(os.path.join(path, 'model.safetensors.index.json'), 'w'))
  message = one_line_error(checkpoints.load_params, path)
  assert f"tensor {name!r} is also stored in {os.path.join(path, 'a.safetensors')}" in message
