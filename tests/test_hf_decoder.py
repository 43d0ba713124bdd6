"""Hugging Face decoder-only checkpoints (checkpoints/hf_decoder.py): what transformers writes is
read bit-exactly, what we write transformers loads, one file or sharded, float32 or bfloat16;
bad files fail in one line naming the file and tensor."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from hf_decoder_reference import CASES, hf_logits, make_hf, padded_batch
from prompt_tuning.checkpoints import CheckpointError, hf_decoder
from prompt_tuning.checkpoints.common import flatten
from prompt_tuning.models import decoder_config

SHARD_BYTES = 40_000  # a few shards for the tiny models


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """case -> (transformers model, its save_pretrained directory), built once."""
  cache = {}

  def get(name):
    if name not in cache:
      model, path = make_hf(name), str(tmp_path_factory.mktemp(name))
      model.save_pretrained(path)
      cache[name] = model, path
    return cache[name]
  return get


def _tensors(path):
  """Every tensor of an HF directory, one file or shards."""
  out = {}
  for name in sorted(os.listdir(path)):
    if name.endswith('.safetensors'):
      out.update(load_file(os.path.join(path, name)))
  return out


@pytest.mark.parametrize('name', sorted(CASES))
def test_sharded_round_trip_is_bit_exact_and_transformers_loads_it(saved, name, tmp_path,
                                                                   assert_identical):
  hf, path = saved(name)
  config, flat = hf_decoder.read_params(path)
  out = hf_decoder.save(str(tmp_path / 'ours'), config, flat, max_shard_bytes=SHARD_BYTES)
  files = sorted(os.listdir(out))
  assert 'model.safetensors.index.json' in files and 'config.json' in files
  assert sum(f.endswith('.safetensors') for f in files) > 1
  index = json.load(open(os.path.join(out, 'model.safetensors.index.json')))
  assert set(index['weight_map']) == set(_tensors(path))  # transformers' own names, no more
  config2, flat2 = hf_decoder.read_params(out)
  assert config2 == config
  assert_identical(flat, flat2)
  # Every tensor as transformers wrote it, byte for byte.
  ours, theirs = _tensors(out), _tensors(path)
  assert all(ours[k].tobytes() == theirs[k].tobytes() for k in theirs)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(reloaded) is type(hf)
  tokens, lengths = padded_batch()
  np.testing.assert_array_equal(hf_logits(reloaded, tokens, lengths),
                                hf_logits(hf, tokens, lengths))


def test_config_read_from_config_json(saved):
  _, path = saved('llama3_tied')
  config = hf_decoder.read_config(path)
  assert (config.family, config.num_heads, config.num_kv_heads, config.head_dim) == (
      'llama', 4, 2, 16)
  assert config.tie_word_embeddings and config.rope_theta == 500000.0
  assert config.rope_scaling.rope_type == 'llama3'
  assert config.rope_scaling.original_max_position_embeddings == 32
  assert hf_decoder.read_config(saved('mistral_window')[1]).window(1) == 8
  qwen2 = hf_decoder.read_config(saved('qwen2')[1])
  assert (qwen2.qkv_bias, qwen2.out_bias, qwen2.sliding_window) == (True, False, None)


def test_legacy_rope_fields_and_qwen2_window_layers():
  """transformers < 5's `rope_theta` + `rope_scaling` (type under 'type'); Qwen2's window on
  the layers from max_window_layers on."""
  base = {'model_type': 'llama', 'vocab_size': 8, 'hidden_size': 16, 'intermediate_size': 8,
          'num_hidden_layers': 3, 'num_attention_heads': 2, 'rope_theta': 5e5,
          'rope_scaling': {'type': 'linear', 'factor': 2.0}}
  config = decoder_config.config_from_json(base)
  assert (config.rope_theta, config.rope_scaling.rope_type, config.rope_scaling.factor) == (
      5e5, 'linear', 2.0)
  qwen = decoder_config.config_from_json({**base, 'model_type': 'qwen2', 'rope_scaling': None,
                                          'use_sliding_window': True, 'sliding_window': 4,
                                          'max_window_layers': 1})
  assert [qwen.window(i) for i in range(3)] == [None, 4, 4]


def test_bfloat16_checkpoint_reads_and_writes_bit_exact(tmp_path):
  hf = make_hf('qwen2').to(torch.bfloat16)
  hf.save_pretrained(tmp_path / 'hf', max_shard_size='40KB')
  assert os.path.exists(tmp_path / 'hf' / 'model.safetensors.index.json')
  config, flat = hf_decoder.read_params(str(tmp_path / 'hf'))
  assert config.param_dtype == 'bfloat16'
  query = flat['layers_1/attention/query/kernel']
  assert query.dtype.name == 'bfloat16'
  torch_query = hf.model.layers[1].self_attn.q_proj.weight.detach().T.contiguous()
  assert query.view(np.uint16).tobytes() == torch_query.view(torch.int16).numpy().tobytes()
  out = hf_decoder.save(str(tmp_path / 'ours'), config, flat)
  assert json.load(open(os.path.join(out, 'config.json')))['dtype'] == 'bfloat16'
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
  for (key, a), (_, b) in zip(hf.state_dict().items(), reloaded.state_dict().items()):
    assert torch.equal(a, b), key


def test_gpt2_hub_names_and_buffers_are_read(saved, tmp_path):
  """openai-community/gpt2's files: no `transformer.` prefix, causal-mask buffers stored."""
  _, path = saved('gpt2')
  tensors = {k.removeprefix('transformer.'): v for k, v in _tensors(path).items()}
  tensors['h.0.attn.bias'] = np.tril(np.ones((1, 1, 8, 8), np.float32))
  tensors['h.0.attn.masked_bias'] = np.asarray(-1e4, np.float32)
  hub = shutil.copytree(path, str(tmp_path / 'hub'))
  save_file(tensors, os.path.join(hub, 'model.safetensors'))
  _, flat = hf_decoder.read_params(hub)
  _, expected = hf_decoder.read_params(path)
  assert flat.keys() == expected.keys()
  assert all(np.array_equal(flat[k], expected[k]) for k in flat)


def test_the_embedding_alone_is_read_for_each_family(saved, tmp_path):
  """checkpoints.load_embedding (what `inspect` reads) on decoder-only folders: Llama's name,
  GPT-2's with and without the hub's missing `transformer.` prefix; a T5 folder is not one."""
  from prompt_tuning import checkpoints
  for name in ('llama3_tied', 'gpt2'):
    model, path = saved(name)
    expected = model.get_input_embeddings().weight.detach().numpy()
    assert hf_decoder.is_decoder_dir(path)
    value, source = checkpoints.load_embedding(path)
    np.testing.assert_array_equal(value, expected)
    assert source.endswith(('[model.embed_tokens.weight]', '[transformer.wte.weight]'))
  hub = shutil.copytree(path, str(tmp_path / 'hub'))
  save_file({'wte.weight': expected}, os.path.join(hub, 'model.safetensors'))
  assert checkpoints.load_embedding(hub)[1].endswith('model.safetensors [wte.weight]')
  t5 = tmp_path / 't5'
  t5.mkdir()
  (t5 / 'config.json').write_text(json.dumps({'model_type': 't5'}))
  save_file({'shared.weight': expected}, str(t5 / 'model.safetensors'))
  assert not hf_decoder.is_decoder_dir(str(t5)) and not hf_decoder.is_decoder_dir(str(tmp_path))
  np.testing.assert_array_equal(checkpoints.load_embedding(str(t5))[0], expected)


def _broken(saved, tmp_path, change):
  _, path = saved('llama2_untied_bias')
  copy = shutil.copytree(path, str(tmp_path / 'broken'))
  file = os.path.join(copy, 'model.safetensors')
  tensors = load_file(file)
  change(tensors)
  save_file(tensors, file)
  return copy, file


@pytest.mark.parametrize('change, expected', [
    (lambda t: t.pop('model.layers.1.mlp.up_proj.weight'),
     "missing tensor 'model.layers.1.mlp.up_proj.weight' (Flax 'layers_1/mlp/wi_1/kernel')"),
    (lambda t: t.update({'model.layers.0.self_attn.k_proj.weight': np.zeros((8, 64), 'f4')}),
     "tensor 'model.layers.0.self_attn.k_proj.weight' has shape (8, 64) but the config expects "
     "(64, 64)"),
    (lambda t: t.update({'model.norm.weight': np.ones(64, np.int32)}),
     "tensor 'model.norm.weight' (Flax 'decoder_norm/scale') has dtype int32"),
    (lambda t: t.update({'model.layers.0.extra.weight': np.ones(2, 'f4')}),
     "unexpected tensor(s) not in a LlamaForCausalLM model: model.layers.0.extra.weight"),
], ids=['missing', 'shape', 'dtype', 'unexpected'])
def test_bad_tensors_are_one_line_naming_file_and_tensor(saved, tmp_path, change, expected):
  path, file = _broken(saved, tmp_path, change)
  with pytest.raises(CheckpointError) as e:
    hf_decoder.read_params(path)
  message = str(e.value)
  assert '\n' not in message and expected in message, message
  assert path in message  # the directory or the file itself


def test_truncated_file_and_unsupported_config_are_one_line(saved, tmp_path):
  path, file = _broken(saved, tmp_path, lambda t: None)
  with open(file, 'r+b') as f:
    f.truncate(os.path.getsize(file) // 2)
  with pytest.raises(CheckpointError, match=f'{file}: corrupt or truncated safetensors file'):
    hf_decoder.read_params(path)
  config_file = os.path.join(path, 'config.json')
  json.dump({'architectures': ['FalconForCausalLM'], 'model_type': 'falcon'},
            open(config_file, 'w'))
  with pytest.raises(CheckpointError) as e:
    hf_decoder.read_params(path)
  assert str(e.value).startswith(f'{config_file}: Unsupported decoder-only architecture '
                                 f"'FalconForCausalLM'"), e.value
  assert '\n' not in str(e.value) and 'GPT2LMHeadModel (gpt2)' in str(e.value)


def test_a_config_transformers_cannot_express_is_refused_before_writing(saved, tmp_path):
  _, path = saved('qwen2')
  config, flat = hf_decoder.read_params(path)
  with pytest.raises(CheckpointError, match="Qwen2ForCausalLM config.json cannot express .*"
                                            "out_bias"):
    hf_decoder.save(str(tmp_path / 'out'), config.replace(out_bias=True), flat)
  assert not os.path.exists(tmp_path / 'out')
  missing = {k: v for k, v in flatten(hf_decoder.load(path)[1]).items()
             if k != 'decoder_norm/scale'}
  with pytest.raises(CheckpointError, match=r"missing 1 parameter\(s\) .*decoder_norm/scale"):
    hf_decoder.save(str(tmp_path / 'out'), config, missing)
  assert not os.path.exists(tmp_path / 'out')
