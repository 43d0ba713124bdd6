"""T5 1.1 building blocks in Flax linen, one component each (the decoder-only families,
models/decoder_only.py, reuse them and add LayerNorm and DenseGeneral's bias).

Parameter names and logical axis names follow T5X/flaxformer so that T5X
checkpoints map one-to-one onto these modules:

  Embed                 embedding        ('vocab', 'embed'), or as given (positions)
  DenseGeneral          kernel           given per use site (+ bias on its output axis)
  RMSNorm               scale            ('embed',)
  LayerNorm             scale, bias      ('embed',)
  RelativePositionBias  rel_embedding    ('heads', 'relpos_buckets')
  MultiHeadAttention    query/key/value  ('embed', 'joined_kv'), out ('joined_kv', 'embed')
  MlpBlock              wi_0/wi_1        ('embed', 'mlp'),       wo  ('mlp', 'embed')

For decoding, MultiHeadAttention also keeps keys/values in the 'cache' collection
(cached_key, cached_value and, for causal self-attention, cache_index; T5X's names).

Shape suffixes: B batch, L/T encoder/decoder length, Q query length, K key length, D d_model,
H heads, Dh head dim, I = H * Dh, F d_ff, V vocabulary.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence, cast, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype
Initializer = Callable[..., jax.Array]

# Large negative bias for masked attention logits (T5X uses the same value).
NEG_INF = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def _param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
           axes: tuple[str, ...], dtype: Dtype) -> jax.Array:
  """Declares a parameter annotated with logical axis names."""
  # Stored boxed (LogicallyPartitioned); flax hands the module the unboxed array.
  return cast(jax.Array, module.param(name, nn.with_logical_partitioning(init, axes),
                                      tuple(shape), dtype))


class DenseGeneral(nn.Module):
  """x @ kernel on the last axis; a bias only with use_bias (T5 has none; some decoder-only
  families do, models/decoder_only.py), on the kernel's output axis."""
  features: int
  kernel_axes: tuple[str, str]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  use_bias: bool = False

  @nn.compact
  def __call__(self, x_BxLxI: Optional[jax.Array] = None,
               in_features: Optional[int] = None) -> jax.Array:
    """x @ kernel; with no x, the kernel [in_features, features] itself (in `dtype`), for
    callers that reorder the product (see MultiHeadAttention's folded cross-attention)."""
    in_features = x_BxLxI.shape[-1] if x_BxLxI is not None else in_features
    if in_features is None:
      raise ValueError('DenseGeneral needs an input or in_features.')
    kernel = _param(self, 'kernel', self.kernel_init, (in_features, self.features),
                    self.kernel_axes, self.param_dtype).astype(self.dtype)
    if x_BxLxI is None:
      return kernel
    y = jnp.einsum('...i,io->...o', x_BxLxI.astype(self.dtype), kernel)
    if self.use_bias:
      bias = _param(self, 'bias', nn.initializers.zeros, (self.features,), self.kernel_axes[1:],
                    self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """Embedding table; lookup by gather, no sqrt(d_model) scaling. `axes` ('vocab', 'embed') for
  tokens; learned absolute positions (GPT-2) use ('abspos_buckets', 'embed')."""
  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)
  axes: tuple[str, str] = ('vocab', 'embed')

  def setup(self):
    self.embedding = _param(self, 'embedding', self.embedding_init,
                            (self.num_embeddings, self.features), self.axes, self.param_dtype)

  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, tokens_BxL, axis=0).astype(self.dtype)

  def attend(self, x_BxLxD: jax.Array) -> jax.Array:
    """Logits against the embedding table (only for tied-embedding models)."""
    return jnp.einsum('bld,vd->blv', x_BxLxD, self.embedding.astype(x_BxLxD.dtype))


class Dtypes:
  """A model config's dtype names as dtypes: `dtype` of the activations, `param_dtype` of the
  stored weights (T5Config and DecoderConfig share them)."""
  dtype: str
  param_dtype: str

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)


def _norm_scale(module: nn.Module, features: int, dtype: Dtype) -> jax.Array:
  """A layer norm's scale [D] (ones), its axis 'embed'."""
  return _param(module, 'scale', nn.initializers.ones, (features,), ('embed',), dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: x * rsqrt(mean(x^2) + eps) * scale, in float32, no bias, no centring."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = _norm_scale(self, x.shape[-1], self.param_dtype)
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
  """GPT-2's layer norm: (x - mean) * rsqrt(var + eps) * scale + bias, in float32."""
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = _norm_scale(self, x.shape[-1], self.param_dtype)
    bias = _param(self, 'bias', nn.initializers.zeros, (x.shape[-1],), ('embed',),
                  self.param_dtype)
    x = x.astype(jnp.float32)
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) +
                                self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """Maps key_position - query_position to a bucket id (T5's log-spaced buckets)."""
  n = -relative_position
  bucket = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(n.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # eps keeps exact powers on the right side of the floor, as in T5/T5X.
  log_ratio = jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
  large = max_exact + (log_ratio / np.log(max_distance / max_exact) *
                       (num_buckets - max_exact)).astype(n.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """Per-head scalar bias from bucketed relative position; one per stack."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')

  @nn.compact
  def __call__(self, q_len: int, k_len: int, q_offset: jax.Array | int = 0) -> jax.Array:
    """Returns the bias [1, H, q_len, k_len]; q_offset shifts query positions (decoding)."""
    rel_embedding = _param(self, 'rel_embedding', self.embedding_init,
                           (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'),
                           self.param_dtype)
    q_pos = jnp.arange(q_len, dtype=jnp.int32)[:, None] + q_offset
    k_pos = jnp.arange(k_len, dtype=jnp.int32)[None, :]
    buckets_QxK = relative_position_bucket(k_pos - q_pos, self.bidirectional,
                                           self.num_buckets, self.max_distance)
    bias_HxQxK = jnp.take(rel_embedding, buckets_QxK, axis=1)
    return bias_HxQxK[None].astype(self.dtype)


# MultiHeadAttention.fold_kv (T5Config.cross_attention_fold), .impl (T5Config.attention_impl),
# and which cache a call uses while decoding.
FoldMode = Literal['never', 'always', 'auto']
AttentionImpl = Literal['einsum', 'dot_product_attention', 'cudnn']
CacheKind = Literal['self', 'cross']
FOLD_MODES: tuple[str, ...] = get_args(FoldMode)
ATTENTION_IMPLS: tuple[str, ...] = get_args(AttentionImpl)
CACHE_KINDS: tuple[str, ...] = get_args(CacheKind)


def fold_saves_flops(q_len: int, kv_len: int, d_model: int, num_heads: int,
                     head_dim: int) -> bool:
  """Whether folding the key/value kernels into the queries costs fewer FLOPs than projecting
  the keys/values: H*Q*D*(K + head_dim) vs K*D*H*head_dim + H*Q*K*head_dim, per product."""
  folded = num_heads * q_len * d_model * (kv_len + head_dim)
  projected = kv_len * d_model * num_heads * head_dim + num_heads * q_len * kv_len * head_dim
  return folded < projected


class MultiHeadAttention(nn.Module):
  """T5 attention: no biases, no 1/sqrt(d_kv) at run time (folded into the query init).

  fold_kv ('never' | 'always' | 'auto') applies to attention over a given kv without the cache
  (cross-attention in training and scoring). Folded, the key and value kernels go to the Q
  queries' side instead of projecting all K encoded positions: logits = (q Wk^T) kv^T and
  out = (weights kv) Wv. Same parameters and result (up to rounding); with few targets and a
  long input it skips most of the cross-attention's FLOPs. 'auto' folds when that is cheaper.

  impl picks the unfolded attention core: 'einsum' (ours: two einsums and a float32 softmax),
  'dot_product_attention' (jax.nn.dot_product_attention, which takes cuDNN's fused kernel where
  it applies on a GPU and XLA's otherwise) or 'cudnn' (that kernel or an error). Both library
  paths fall back to 'einsum' while attention dropout is active, which they do not implement.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  fold_kv: FoldMode = 'never'
  impl: AttentionImpl = 'einsum'

  @nn.compact
  def __call__(self, x_BxQxD: jax.Array, kv_BxKxD: Optional[jax.Array], bias_BxHxQxK: Any,
               enable_dropout: bool = False, cache: Optional[CacheKind] = None) -> jax.Array:
    """Attention of x's queries to kv's keys/values.

    cache selects the 'cache' collection's use during autoregressive decoding:
      None     no cache; bias_BxHxQxK is an array [B or 1, H or 1, Q, K].
      'self'   causal self-attention (kv is x). The first call creates zeroed
               cached_key/cached_value [B, K, H, Dh] with K = the call's length (the
               maximum decode length) and cache_index 0; later calls write their Q keys/values
               at cache_index and advance it. bias_BxHxQxK is then a function
               (q_offset, q_len, k_len) -> bias, since only this layer knows the position.
      'cross'  attention to the encoded input: given kv, its keys/values are computed and
               stored; with kv None they are read back, so each sequence projects them once.
    """
    inner = self.num_heads * self.head_dim
    d_model = x_BxQxD.shape[-1]

    def query_init(key, shape, dtype=jnp.float32):
      return self.kernel_init(key, shape, dtype) / np.sqrt(self.head_dim).astype(dtype)

    def dense(name, features, axes, init=self.kernel_init):
      return DenseGeneral(features, axes, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=init, name=name)

    def split(y_BxLxI):
      return y_BxLxI.reshape(*y_BxLxI.shape[:2], self.num_heads, self.head_dim)

    q = split(dense('query', inner, ('embed', 'joined_kv'), query_init)(x_BxQxD))
    if cache is None and kv_BxKxD is not None and self._folds(q.shape[1], kv_BxKxD.shape[1],
                                                                 d_model):
      key_DxHxDh = dense('key', inner, ('embed', 'joined_kv'))(in_features=d_model)
      value_DxHxDh = dense('value', inner, ('embed', 'joined_kv'))(in_features=d_model)
      shape = (d_model, self.num_heads, self.head_dim)
      out_BxQxHxDh = self.attend_folded(q, kv_BxKxD.astype(self.dtype), key_DxHxDh.reshape(shape),
                                        value_DxHxDh.reshape(shape), bias_BxHxQxK,
                                        enable_dropout)
    else:
      if cache == 'cross' and kv_BxKxD is None:
        if not self.has_variable('cache', 'cached_key'):
          raise ValueError('Cross-attention decode step without cached keys: initialise the '
                           'cache with the encoded input first (EncoderDecoder.init_cache).')
        k: jax.Array = self.get_variable('cache', 'cached_key')
        v: jax.Array = self.get_variable('cache', 'cached_value')
      else:
        k = split(dense('key', inner, ('embed', 'joined_kv'))(kv_BxKxD))
        v = split(dense('value', inner, ('embed', 'joined_kv'))(kv_BxKxD))
        if cache == 'cross':
          self.put_variable('cache', 'cached_key', k)
          self.put_variable('cache', 'cached_value', v)
        elif cache == 'self':
          k, v, bias_BxHxQxK = self._causal_cache(k, v, bias_BxHxQxK)
        elif cache is not None:
          raise ValueError(f'Unknown cache kind {cache!r}; choose None or one of {CACHE_KINDS}.')
      out_BxQxHxDh = self.attend(q, k, v, bias_BxHxQxK, enable_dropout)
    out_BxQxI = out_BxQxHxDh.reshape(*out_BxQxHxDh.shape[:2], inner)
    return dense('out', d_model, ('joined_kv', 'embed'))(out_BxQxI)

  def _folds(self, q_len: int, kv_len: int, d_model: int) -> bool:
    if self.fold_kv not in FOLD_MODES:
      raise ValueError(f"Unknown fold_kv {self.fold_kv!r}; choose one of {', '.join(FOLD_MODES)}.")
    if self.fold_kv == 'auto':
      return fold_saves_flops(q_len, kv_len, d_model, self.num_heads, self.head_dim)
    return self.fold_kv == 'always'

  def _causal_cache(self, k_BxQxHxDh, v_BxQxHxDh, bias_fn):
    """Creates, or writes this call's keys/values into, the self-attention cache."""
    q_len = k_BxQxHxDh.shape[1]
    initialized = self.has_variable('cache', 'cached_key')
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k_BxQxHxDh.shape, k_BxQxHxDh.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v_BxQxHxDh.shape,
                             v_BxQxHxDh.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not initialized:
      # The creating call only fixes the cache's length; it attends like a full causal pass.
      return k_BxQxHxDh, v_BxQxHxDh, bias_fn(0, q_len, q_len)
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(
        cached_k.value, k_BxQxHxDh.astype(cached_k.value.dtype), (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(
        cached_v.value, v_BxQxHxDh.astype(cached_v.value.dtype), (0, i, 0, 0))
    index.value = i + q_len
    # Positions past i + q_len are still zeros; the causal bias hides them.
    return cached_k.value, cached_v.value, bias_fn(i, q_len, cached_k.value.shape[1])

  def _softmax(self, logits_BxHxQxK, bias_BxHxQxK, enable_dropout):
    weights = jax.nn.softmax(logits_BxHxQxK + bias_BxHxQxK.astype(jnp.float32), axis=-1)
    if enable_dropout and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate, deterministic=False)(weights)
    return weights.astype(self.dtype)

  def attend(self, q_BxQxHxDh, k_BxKxHxDh, v_BxKxHxDh, bias_BxHxQxK, enable_dropout):
    if self.impl not in ATTENTION_IMPLS:
      raise ValueError(f"Unknown attention impl {self.impl!r}; choose one of "
                       f"{', '.join(ATTENTION_IMPLS)}.")
    if self.impl != 'einsum' and not (enable_dropout and self.dropout_rate > 0):
      if self.impl == 'cudnn' and jax.default_backend() != 'gpu':
        raise ValueError(f"attention impl 'cudnn' needs a CUDA GPU; the backend here is "
                         f"{jax.default_backend()!r} (use 'dot_product_attention' or 'einsum').")
      return jax.nn.dot_product_attention(
          q_BxQxHxDh, k_BxKxHxDh, v_BxKxHxDh, bias=bias_BxHxQxK.astype(q_BxQxHxDh.dtype),
          scale=1.0,
          implementation='cudnn' if self.impl == 'cudnn' else None)
    # Heads leading: plain batched matmuls, measured ~2x faster on XLA:CPU than strided heads.
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_BxQxHxDh, k_BxKxHxDh, v_BxKxHxDh))
    logits = jnp.einsum('bhqd,bhkd->bhqk', q, k, preferred_element_type=jnp.float32)
    weights = self._softmax(logits, bias_BxHxQxK, enable_dropout)
    return jnp.einsum('bhqk,bhkd->bhqd', weights, v).transpose(0, 2, 1, 3)

  def attend_folded(self, q_BxQxHxDh, kv_BxKxD, key_DxHxDh, value_DxHxDh, bias_BxHxQxK,
                    enable_dropout):
    qk_BxHxQxD = jnp.einsum('bqhe,dhe->bhqd', q_BxQxHxDh, key_DxHxDh)
    logits = jnp.einsum('bhqd,bkd->bhqk', qk_BxHxQxD, kv_BxKxD,
                        preferred_element_type=jnp.float32)
    weights = self._softmax(logits, bias_BxHxQxK, enable_dropout)
    mixed_BxHxQxD = jnp.einsum('bhqk,bkd->bhqd', weights, kv_BxKxD)
    return jnp.einsum('bhqd,dhe->bqhe', mixed_BxHxQxD, value_DxHxDh)


class MlpBlock(nn.Module):
  """Gated-GELU feed-forward: wo(gelu_tanh(x wi_0) * (x wi_1))."""
  intermediate_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, enable_dropout: bool = False) -> jax.Array:
    def dense(name, features, axes):
      return DenseGeneral(features, axes, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=self.kernel_init, name=name)

    gate = nn.gelu(dense('wi_0', self.intermediate_dim, ('embed', 'mlp'))(x_BxLxD),
                   approximate=True)
    h_BxLxF = gate * dense('wi_1', self.intermediate_dim, ('embed', 'mlp'))(x_BxLxD)
    h_BxLxF = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
        h_BxLxF, deterministic=not enable_dropout)
    return dense('wo', x_BxLxD.shape[-1], ('mlp', 'embed'))(h_BxLxF)


def attention_bias(mask_BxQxK: jax.Array) -> jax.Array:
  """Boolean mask [B, Q, K] -> additive bias [B, 1, Q, K]."""
  return jnp.where(mask_BxQxK, 0.0, NEG_INF).astype(jnp.float32)[:, None]


def make_attention_mask(query_valid_BxQ: jax.Array, key_valid_BxK: jax.Array) -> jax.Array:
  return query_valid_BxQ[:, :, None] & key_valid_BxK[:, None, :]


def causal_mask(length: int) -> jax.Array:
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None]


def causal_bias(q_len: int, k_len: int, q_offset: jax.Array | int = 0) -> jax.Array:
  """Additive bias [1, 1, Q, K] letting query q_offset + i see keys 0 .. q_offset + i."""
  q_pos = jnp.arange(q_len, dtype=jnp.int32)[:, None] + q_offset
  k_pos = jnp.arange(k_len, dtype=jnp.int32)[None, :]
  return attention_bias((k_pos <= q_pos)[None])
