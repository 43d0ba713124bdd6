"""Independent numerical parity: transformers' T5 and ours on the same safetensors weights."""

import jax
import numpy as np
import pytest
import transformers

from hf_reference import SMALL, hf_forward, make_hf_t5, max_rel_err, padded_batch
from prompt_tuning import checkpoints
from prompt_tuning.models import t5


@pytest.fixture(scope='module')
def hf_model():
  return make_hf_t5()


@pytest.fixture(scope='module')
def hf_dir(hf_model, tmp_path_factory):
  path = tmp_path_factory.mktemp('hf_t5')
  hf_model.save_pretrained(path)
  return str(path)


def _ours(config, params, enc, dec_in, tgt, fold='auto'):
  model = t5.EncoderDecoder(config.replace(dtype='float32', cross_attention_fold=fold))
  apply = jax.jit(model.apply, static_argnames='method')
  logits = apply({'params': params}, enc, dec_in, tgt)
  encoded = apply({'params': params}, enc, method=model.encode)
  return np.asarray(logits), np.asarray(encoded)


def test_config_derived_from_hf_directory(hf_dir):
  config, _ = checkpoints.load_params(hf_dir)
  assert (config.vocab_size, config.d_model, config.d_ff, config.num_heads, config.head_dim) == (
      SMALL['vocab_size'], SMALL['d_model'], SMALL['d_ff'], SMALL['num_heads'], SMALL['d_kv'])
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert (config.relpos_buckets, config.relpos_max_distance) == (8, 20)
  assert not config.logits_via_embedding


@pytest.mark.parametrize('fold', ['never', 'always'])
def test_logits_and_encoder_outputs_match_transformers(hf_model, hf_dir, fold):
  config, params = checkpoints.load_params(hf_dir)
  # 40 encoder / 30 decoder positions: well past max_distance 20, so the log buckets are used.
  enc, dec_in, tgt = padded_batch(SMALL['vocab_size'])
  ref_logits, ref_encoded = hf_forward(hf_model, enc, dec_in, tgt)
  logits, encoded = _ours(config, params, enc, dec_in, tgt, fold)
  enc_valid, dec_valid = enc > 0, tgt > 0
  # Padded positions are undefined in both implementations; compare the real ones.
  assert max_rel_err(encoded[enc_valid], ref_encoded[enc_valid]) < 1e-4
  assert max_rel_err(logits[dec_valid], ref_logits[dec_valid]) < 1e-4


def test_save_hf_is_loadable_by_transformers(hf_model, hf_dir, tmp_path):
  config, params = checkpoints.load_params(hf_dir)
  out = checkpoints.save_hf(str(tmp_path / 'ours'), config, params)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  enc, dec_in, tgt = padded_batch(SMALL['vocab_size'], seed=1)
  a, _ = hf_forward(hf_model, enc, dec_in, tgt)
  b, _ = hf_forward(reloaded, enc, dec_in, tgt)
  np.testing.assert_array_equal(a, b)


def test_sharded_safetensors_round_trip(hf_dir, tmp_path):
  config, params = checkpoints.load_params(hf_dir)
  out = checkpoints.save_hf(str(tmp_path / 'sharded'), config, params, max_shard_bytes=20_000)
  files = sorted(p.name for p in (tmp_path / 'sharded').iterdir())
  assert 'model.safetensors.index.json' in files
  assert sum(f.endswith('.safetensors') for f in files) > 2
  config2, params2 = checkpoints.load_params(out)
  assert config2 == config
  _assert_trees_identical(params, params2)


def test_transformers_reads_our_sharded_directory(hf_dir, tmp_path):
  config, params = checkpoints.load_params(hf_dir)
  out = checkpoints.save_hf(str(tmp_path / 'sharded'), config, params, max_shard_bytes=20_000)
  model = transformers.T5ForConditionalGeneration.from_pretrained(out)
  np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(),
                                np.asarray(params['decoder']['logits_dense']['kernel']).T)


def test_bfloat16_storage_round_trip(hf_dir, tmp_path):
  derived, _ = checkpoints.load_params(hf_dir)
  config, params = checkpoints.load_params(hf_dir, derived.replace(param_dtype='bfloat16'))
  assert params['token_embedder']['embedding'].dtype.name == 'bfloat16'
  out = checkpoints.save_hf(str(tmp_path / 'bf16'), config, params)
  config2, params2 = checkpoints.load_params(out)
  assert config2.param_dtype == 'bfloat16'
  _assert_trees_identical(params, params2)
  model = transformers.T5ForConditionalGeneration.from_pretrained(out)
  np.testing.assert_array_equal(
      model.shared.weight.detach().float().numpy(),
      np.asarray(params['token_embedder']['embedding']).astype(np.float32))


def _assert_trees_identical(a, b):
  from prompt_tuning.checkpoints.common import flatten
  fa, fb = flatten(a), flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.dtype == y.dtype, k
    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8), err_msg=k)
