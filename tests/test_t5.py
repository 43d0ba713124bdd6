"""The T5 1.1 module: preset sizes, T5X's parameter tree and axis names, dtypes, masking; a prompt
table's mixed batches."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5
from prompt_tuning.train import partitioning

# The paper's Table 4 totals minus a 100-token prompt.
EXPECTED_COUNTS = {
    'small': 76_961_152,
    'base': 247_577_856,
    'large': 783_150_080,
    'xl': 2_849_757_184,
    'xxl': 11_135_332_352,
}


@pytest.mark.parametrize('name', sorted(EXPECTED_COUNTS))
def test_preset_parameter_counts(name):
  assert t5.count_params(t5.T5Config.preset(name)) == EXPECTED_COUNTS[name]


def test_preset_sizes_and_unknown_name():
  c = t5.T5Config.preset('xxl')
  assert (c.d_model, c.d_ff, c.num_heads, c.head_dim, c.num_encoder_layers) == (4096, 10240, 64,
                                                                                64, 24)
  assert c.vocab_size == 32128 and c.relpos_buckets == 32 and c.relpos_max_distance == 128
  with pytest.raises(ValueError, match="Unknown T5 size 'huge'"):
    t5.T5Config.preset('huge')


def test_parameter_tree_and_logical_axes_match_t5x():
  config = t5.T5Config.preset('tiny')
  axes = {'/'.join(k): tuple(v) for k, v in
          _flat(t5.logical_axes(config)).items()}
  expected = {
      'token_embedder/embedding': ('vocab', 'embed'),
      'encoder/relpos_bias/rel_embedding': ('heads', 'relpos_buckets'),
      'encoder/layers_0/pre_attention_layer_norm/scale': ('embed',),
      'encoder/layers_0/attention/query/kernel': ('embed', 'joined_kv'),
      'encoder/layers_0/attention/out/kernel': ('joined_kv', 'embed'),
      'encoder/layers_1/mlp/wi_0/kernel': ('embed', 'mlp'),
      'encoder/layers_1/mlp/wo/kernel': ('mlp', 'embed'),
      'encoder/encoder_norm/scale': ('embed',),
      'decoder/relpos_bias/rel_embedding': ('heads', 'relpos_buckets'),
      'decoder/layers_0/pre_self_attention_layer_norm/scale': ('embed',),
      'decoder/layers_0/self_attention/key/kernel': ('embed', 'joined_kv'),
      'decoder/layers_0/pre_cross_attention_layer_norm/scale': ('embed',),
      'decoder/layers_1/encoder_decoder_attention/value/kernel': ('embed', 'joined_kv'),
      'decoder/layers_1/pre_mlp_layer_norm/scale': ('embed',),
      'decoder/decoder_norm/scale': ('embed',),
      'decoder/logits_dense/kernel': ('embed', 'vocab'),
  }
  for key, value in expected.items():
    assert axes[key] == value, key
  per_enc_layer = 4 + 3 + 2
  per_dec_layer = 8 + 3 + 3
  # embedding + (relpos, final norm) per stack + layers + logits_dense
  assert len(axes) == 1 + 2 * 2 + 2 * per_enc_layer + 2 * per_dec_layer + 1


def _apply(model, *args, **kwargs):
  # One compiled program per call signature; eager dispatch of a whole model is slow on CPU.
  return jax.jit(model.apply, static_argnames=('enable_dropout', 'method'))(*args, **kwargs)


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def test_forward_dtypes_and_shapes():
  config = t5.T5Config.preset('tiny', param_dtype='bfloat16')
  params = t5.init_params(config)
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.bfloat16
  model = t5.EncoderDecoder(config)
  enc = jnp.array([[5, 6, 7, 1, 0]])
  logits = _apply(model, {'params': params}, enc, jnp.array([[0, 4, 1]]), jnp.array([[4, 1, 0]]))
  assert logits.shape == (1, 3, config.vocab_size)
  assert logits.dtype == jnp.float32
  encoded = _apply(model, {'params': params}, enc, method=model.encode)
  assert encoded.dtype == jnp.bfloat16 and encoded.shape == (1, 5, config.d_model)


def test_padding_does_not_leak_into_real_positions(tiny):
  config, params = tiny
  model = t5.EncoderDecoder(config)
  short = _apply(model, {'params': params}, jnp.array([[5, 6, 1]]), jnp.array([[0, 4]]),
                      jnp.array([[4, 1]]))
  padded = _apply(model, {'params': params}, jnp.array([[5, 6, 1, 0, 0, 0]]),
                       jnp.array([[0, 4, 0]]), jnp.array([[4, 1, 0]]))
  np.testing.assert_allclose(padded[:, :2], short, rtol=1e-5, atol=1e-5)


def test_decoder_is_causal(tiny):
  config, params = tiny
  model = t5.EncoderDecoder(config)
  enc = jnp.array([[5, 6, 1]])
  a = _apply(model, {'params': params}, enc, jnp.array([[0, 4, 9]]), jnp.array([[4, 9, 1]]))
  b = _apply(model, {'params': params}, enc, jnp.array([[0, 4, 17]]), jnp.array([[4, 17, 1]]))
  np.testing.assert_allclose(a[:, :2], b[:, :2], rtol=1e-6)
  assert not np.allclose(a[:, 2], b[:, 2])


def test_dropout_only_when_enabled():
  config = t5.T5Config.preset('tiny', dtype='float32', dropout_rate=0.5)
  params = t5.init_params(config)
  model = t5.EncoderDecoder(config)
  args = (jnp.array([[5, 6, 1]]), jnp.array([[0, 4]]), jnp.array([[4, 1]]))
  det1 = _apply(model, {'params': params}, *args)
  det2 = _apply(model, {'params': params}, *args)
  np.testing.assert_array_equal(det1, det2)
  drop = _apply(model, {'params': params}, *args, enable_dropout=True,
                     rngs={'dropout': jax.random.PRNGKey(0)})
  assert not np.allclose(drop, det1)


def test_remat_policies_give_the_same_gradients():
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=64, dropout_rate=0.1,
                              num_encoder_layers=1, num_decoder_layers=1)
  params = t5.init_params(config)
  args = (jnp.array([[5, 6, 1, 0]]), jnp.array([[0, 4, 7]]), jnp.array([[4, 7, 1]]))

  def grads(c):
    model = t5.EncoderDecoder(c)
    loss = lambda p: model.apply({'params': p}, *args, enable_dropout=True,
                                 rngs={'dropout': jax.random.PRNGKey(1)}).sum()
    return jax.jit(jax.grad(loss))(params)

  ref = grads(config)
  for policy in ('full', 'dots'):
    got = grads(config.replace(remat_policy=policy))
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=policy)


def _fold_args():
  # Ragged padding on both sides, so the folded path's masks are exercised too.
  enc = jnp.array([[5, 6, 7, 8, 9, 10, 11, 1], [12, 13, 1, 0, 0, 0, 0, 0]])
  tgt = jnp.array([[4, 7, 1], [9, 1, 0]])
  dec_in = jnp.array([[0, 4, 7], [0, 9, 0]])
  return enc, dec_in, tgt


def _fold_pair(dropout_rate):
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=64, dropout_rate=dropout_rate,
                              num_encoder_layers=1)
  return config, t5.init_params(config), _fold_args()


def _assert_same_logits_and_grads(config, variant, params, args):
  """`variant` (a changed config) gives config's logits and every parameter gradient."""
  def run(c):
    model = t5.EncoderDecoder(c)
    logits = lambda p: model.apply({'params': p}, *args)
    return jax.jit(lambda p: (logits(p), jax.grad(lambda q: logits(q).sum())(p)))(params)

  (ref_logits, ref_grads), (logits, grads) = run(config), run(variant)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_grads),
                          jax.tree_util.tree_leaves(grads)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  return ref_grads


def test_folded_cross_attention_equals_projected():
  config, params, args = _fold_pair(0.0)
  ref_grads = _assert_same_logits_and_grads(config.replace(cross_attention_fold='never'),
                                            config.replace(cross_attention_fold='always'),
                                            params, args)
  cross = ref_grads['decoder']['layers_0']['encoder_decoder_attention']
  assert float(jnp.abs(cross['key']['kernel']).max()) > 0  # the gradient reaches the kernels


def test_folded_cross_attention_drops_the_same_weights():
  config, params, args = _fold_pair(0.3)
  rngs = {'dropout': jax.random.PRNGKey(3)}

  def run(fold):
    model = t5.EncoderDecoder(config.replace(cross_attention_fold=fold))
    return jax.jit(lambda p: model.apply({'params': p}, *args, enable_dropout=True,
                                         rngs=rngs))(params)

  np.testing.assert_allclose(run('always'), run('never'), rtol=1e-5, atol=1e-5)


def _compiled_flops(config, enc_len, dec_len):
  model = t5.EncoderDecoder(config)
  params = t5.param_shapes(config)
  enc = jax.ShapeDtypeStruct((2, enc_len), jnp.int32)
  dec = jax.ShapeDtypeStruct((2, dec_len), jnp.int32)
  compiled = jax.jit(lambda p, e, d: model.apply({'params': p}, e, d)).lower(
      params, enc, dec).compile()
  analysis = compiled.cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)['flops']


@pytest.mark.parametrize('enc_len,dec_len', [(96, 4), (16, 48)])
def test_auto_fold_picks_the_cheaper_program(enc_len, dec_len):
  # d_model 64, 4 heads of 16: folding pays for few targets over a long input, not otherwise.
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=64, d_model=64, num_heads=4,
                              head_dim=16, num_encoder_layers=1, num_decoder_layers=1)
  flops = {fold: _compiled_flops(config.replace(cross_attention_fold=fold), enc_len, dec_len)
           for fold in ('never', 'always', 'auto')}
  assert flops['never'] != flops['always']
  assert flops['auto'] == min(flops['never'], flops['always'])
  expect_fold = dec_len < enc_len
  assert (flops['always'] < flops['never']) == expect_fold


def test_unknown_fold_mode_and_attention_impl_are_named():
  with pytest.raises(ValueError, match="cross_attention_fold .gin CROSS_ATTENTION_FOLD. is "
                                       "'sometimes'"):
    t5.T5Config.preset('tiny', cross_attention_fold='sometimes')
  with pytest.raises(ValueError, match="attention_impl .gin ATTENTION_IMPL. is 'flash'"):
    t5.T5Config.preset('tiny', attention_impl='flash')


def test_dot_product_attention_impl_equals_einsum():
  # On CPU jax.nn.dot_product_attention runs XLA's implementation: same numbers, masks included.
  config, params, args = _fold_pair(0.0)
  config = config.replace(cross_attention_fold='never')
  _assert_same_logits_and_grads(config, config.replace(attention_impl='dot_product_attention'),
                                params, args)


@pytest.mark.skipif(jax.default_backend() == 'gpu', reason='the error is for non-GPU backends')
def test_cudnn_attention_off_gpu_is_a_clear_error():
  config = t5.T5Config.preset('tiny', vocab_size=64, attention_impl='cudnn')
  with pytest.raises(ValueError, match="'cudnn' needs a CUDA GPU"):
    t5.init_params(config)


def test_folded_cross_attention_in_bfloat16_is_as_accurate():
  # Activations in bf16 (the accelerator default): folding moves where rounding happens, so
  # compare both paths' error against the float32 model.
  config = t5.T5Config.preset('tiny', vocab_size=128, d_model=64, num_heads=4, head_dim=16,
                              num_encoder_layers=1, num_decoder_layers=2, dtype='float32')
  params = t5.init_params(config)
  rng = np.random.RandomState(0)
  enc = jnp.asarray(rng.randint(2, 128, (4, 96)))
  tgt = jnp.asarray(rng.randint(2, 128, (4, 4)))
  dec = jnp.concatenate([jnp.zeros((4, 1), jnp.int32), tgt[:, :-1]], axis=1)

  def run(dtype, fold):
    model = t5.EncoderDecoder(config.replace(dtype=dtype, cross_attention_fold=fold))
    return np.asarray(jax.jit(lambda p: model.apply({'params': p}, enc, dec, tgt))(params),
                      np.float32)

  ref = run('float32', 'never')
  err = {fold: np.sqrt(np.mean((run('bfloat16', fold) - ref) ** 2)) for fold in ('never', 'always')}
  assert 0 < err['always'] <= 1.5 * err['never'], err


# ----------------------------------------------------------------------------------------------
# A prompt table: one model, K prompts, each row steered by its own (prompt_ids).


def _mixed_batch(rows=6, vocab=64):
  """Encoder tokens of varied lengths, teacher-forcing pairs, and ids with 2 rows per prompt."""
  rng = np.random.RandomState(0)
  enc = rng.randint(2, vocab, (rows, 9))
  for row, n in enumerate([9, 5, 3, 7, 1, 6][:rows]):
    enc[row, n:] = 0
    enc[row, n - 1] = t5.EOS_ID
  tgt = rng.randint(2, vocab, (rows, 4))
  tgt[1, 2:] = 0
  dec = np.concatenate([np.zeros((rows, 1), int), tgt[:, :-1]], axis=1) * (tgt > 0)
  ids = np.array([2, 0, 1, 1, 0, 2], np.int32)[:rows]
  return [jnp.asarray(x, jnp.int32) for x in (enc, dec, tgt, ids)]


@pytest.mark.parametrize('placement', ['prefix', 'suffix'])
def test_mixed_prompt_batch_equals_each_prompt_alone(placement):
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=64)
  frozen = t5.init_params(config)
  k, p = 3, 4
  table = np.random.RandomState(1).uniform(-0.5, 0.5, (k, p, config.d_model)).astype(np.float32)
  enc, dec, tgt, ids = _mixed_batch()
  model = t5.EncoderDecoder(config, prompt_lib.PromptConfig(p, placement, num_prompts=k))
  params = prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(table))
  encoded = _apply(model, {'params': params}, enc, prompt_ids=ids, method=model.encode)
  logits = _apply(model, {'params': params}, enc, dec, tgt, prompt_ids=ids)
  assert encoded.shape == (6, 9 + p, config.d_model)
  single = t5.EncoderDecoder(config, prompt_lib.PromptConfig(p, placement))
  for i in range(k):
    rows = np.flatnonzero(np.asarray(ids) == i)
    alone = prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(table[i]))
    want_encoded = _apply(single, {'params': alone}, enc[rows], method=single.encode)
    want_logits = _apply(single, {'params': alone}, enc[rows], dec[rows], tgt[rows])
    np.testing.assert_allclose(encoded[rows], want_encoded, rtol=0, atol=1e-5, err_msg=str(i))
    np.testing.assert_allclose(logits[rows], want_logits, rtol=0, atol=1e-5, err_msg=str(i))
  # The ids matter: every row on prompt 0 changes the rows of prompts 1 and 2.
  zeros = _apply(model, {'params': params}, enc, dec, tgt, prompt_ids=jnp.zeros_like(ids))
  other = np.asarray(ids) != 0
  assert np.abs(np.asarray(zeros - logits)[other]).max(axis=(1, 2)).min() > 1e-3


def test_prompt_table_parameter_path_axes_and_init():
  config = t5.T5Config.preset('tiny', vocab_size=64)
  one, table = prompt_lib.PromptConfig(5), prompt_lib.PromptConfig(5, num_prompts=4)
  for prompt, shape, axes in ((one, (5, 32), ('prompt', 'prompt_embed')),
                              (table, (4, 5, 32), ('prompts', 'prompt', 'prompt_embed'))):
    node, spec = t5.param_shapes(config, prompt), t5.logical_axes(config, prompt)
    for key in prompt_lib.PROMPT_PATH:
      node, spec = node[key], spec[key]
    assert node.shape == shape and node.dtype == jnp.float32 and tuple(spec) == axes
  # The table's prompt axes stay replicated under the standard rules.
  rules = partitioning.standard_logical_axis_rules()
  assert ('prompts', None) in rules
  assert tuple(nn.logical_to_mesh_axes(prompt_lib.TABLE_AXES, rules)) == (None, None, None)
