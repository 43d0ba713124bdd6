"""Unit checks of each T5 building block against formulas written out here or in transformers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.t5 import modeling_t5

from prompt_tuning.models import layers


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('buckets,max_distance', [(32, 128), (8, 20), (4, 8)])
def test_relative_position_bucket_matches_transformers(bidirectional, buckets, max_distance):
  rel = np.arange(-300, 301)
  ours = np.asarray(layers.relative_position_bucket(jnp.asarray(rel), bidirectional, buckets,
                                                    max_distance))
  ref = modeling_t5.T5Attention._relative_position_bucket(
      torch.tensor(rel), bidirectional=bidirectional, num_buckets=buckets,
      max_distance=max_distance).numpy()
  np.testing.assert_array_equal(ours, ref)


def test_rms_norm_formula_in_float32():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 16)) * 3
  norm = layers.RMSNorm(dtype=jnp.bfloat16)
  params = {'scale': jnp.linspace(0.5, 2.0, 16)}
  y = norm.apply({'params': params}, x)
  expected = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6) * params['scale']
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=1e-2, atol=1e-2)
  y32 = layers.RMSNorm().apply({'params': params}, x)
  np.testing.assert_allclose(y32, expected, rtol=1e-5, atol=1e-6)


def test_attention_has_no_runtime_scaling_and_2d_kernels():
  heads, head_dim, d = 2, 4, 8
  attn = layers.MultiHeadAttention(heads, head_dim)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 5, d))
  bias = jnp.zeros((1, heads, 5, 5))
  params = nn.unbox(attn.init(jax.random.PRNGKey(2), x, x, bias))['params']
  assert params['query']['kernel'].shape == (d, heads * head_dim)
  assert params['out']['kernel'].shape == (heads * head_dim, d)
  out = attn.apply({'params': params}, x, x, bias)
  q = (x @ params['query']['kernel']).reshape(1, 5, heads, head_dim)
  k = (x @ params['key']['kernel']).reshape(1, 5, heads, head_dim)
  v = (x @ params['value']['kernel']).reshape(1, 5, heads, head_dim)
  w = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k), -1)  # no 1/sqrt(head_dim)
  expected = jnp.einsum('bhqk,bkhd->bqhd', w, v).reshape(1, 5, -1) @ params['out']['kernel']
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_query_init_folds_in_head_dim_scaling():
  attn = layers.MultiHeadAttention(4, 64)
  x = jnp.ones((1, 2, 256))
  params = nn.unbox(attn.init(jax.random.PRNGKey(0), x, x, jnp.zeros((1, 4, 2, 2))))['params']
  ratio = np.std(params['query']['kernel']) / np.std(params['key']['kernel'])
  assert abs(ratio - 1 / 8) < 0.01


def test_gated_gelu_mlp():
  mlp = layers.MlpBlock(6)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 4))
  params = nn.unbox(mlp.init(jax.random.PRNGKey(4), x))['params']
  out = mlp.apply({'params': params}, x)
  h0 = x @ params['wi_0']['kernel']
  gelu_tanh = 0.5 * h0 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h0 + 0.044715 * h0**3)))
  expected = (gelu_tanh * (x @ params['wi_1']['kernel'])) @ params['wo']['kernel']
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_relative_position_bias_shape_and_decode_offset():
  rpb = layers.RelativePositionBias(8, 20, num_heads=3, bidirectional=False)
  params = rpb.init(jax.random.PRNGKey(0), 6, 6)
  full = rpb.apply(params, 6, 6)
  assert full.shape == (1, 3, 6, 6)
  # Row 4 of the full table equals a one-query table whose position is offset by 4.
  np.testing.assert_array_equal(rpb.apply(params, 1, 6, q_offset=4)[0, :, 0], full[0, :, 4])
