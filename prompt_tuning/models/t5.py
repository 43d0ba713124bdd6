"""T5 1.1 encoder-decoder with T5X's parameter tree.

  token_embedder/embedding                       [V, D]   shared by both stacks
  encoder/relpos_bias/rel_embedding              [H, buckets]
  encoder/layers_i/{pre_attention_layer_norm, attention/{query,key,value,out}, pre_mlp_layer_norm,
                    mlp/{wi_0,wi_1,wo}}
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_i/{pre_self_attention_layer_norm, self_attention, pre_cross_attention_layer_norm,
                    encoder_decoder_attention, pre_mlp_layer_norm, mlp}
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                    [D, V]   untied in T5 1.1
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models import layers
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.data.vocab import EOS_ID, PAD_ID, token_mask  # noqa: F401  (t5.PAD_ID, t5.EOS_ID)

RematPolicy = Literal['none', 'full', 'dots']
REMAT_POLICIES: tuple[str, ...] = get_args(RematPolicy)
SizeName = Literal['tiny', 'small', 'base', 'large', 'xl', 'xxl']

# d_model, d_ff, num_heads, layers per stack. T5 1.1 sizes; head_dim 64 and vocab 32128 throughout.
_SIZES = {
    'small': (512, 1024, 6, 8),
    'base': (768, 2048, 12, 12),
    'large': (1024, 2816, 16, 24),
    'xl': (2048, 5120, 32, 24),
    'xxl': (4096, 10240, 64, 24),
}


@dataclasses.dataclass(frozen=True)
class T5Config(layers.Dtypes):
  """Architecture and numerics of a T5 1.1 model."""
  vocab_size: int = 32128
  d_model: int = 768
  d_ff: int = 2048
  num_heads: int = 12
  head_dim: int = 64
  num_encoder_layers: int = 12
  num_decoder_layers: int = 12
  relpos_buckets: int = 32
  relpos_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  logits_via_embedding: bool = False  # True only for tied (T5 1.0 style) checkpoints.
  dtype: str = 'bfloat16'        # activations (any jnp dtype name)
  param_dtype: str = 'float32'   # storage of the (frozen) weights
  remat_policy: RematPolicy = 'none'  # what each layer keeps for the backward pass
  # Fold cross-attention's key/value kernels into the decoder queries (teacher-forced passes
  # only; see layers.MultiHeadAttention). auto: when it saves FLOPs.
  cross_attention_fold: layers.FoldMode = 'auto'
  # The attention core (see layers.MultiHeadAttention).
  attention_impl: layers.AttentionImpl = 'einsum'

  def __post_init__(self):
    choices = {'remat_policy': REMAT_POLICIES, 'cross_attention_fold': layers.FOLD_MODES,
               'attention_impl': layers.ATTENTION_IMPLS}
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f'T5Config.{field} (gin {field.upper()}) is '
                         f'{getattr(self, field)!r}; choose one of {", ".join(allowed)}.')

  @classmethod
  def preset(cls, name: SizeName, **overrides: Any) -> 'T5Config':
    """A named size: tiny (tests), small, base, large, xl, xxl."""
    if name == 'tiny':
      base = dict(d_model=32, d_ff=64, num_heads=4, head_dim=8, num_encoder_layers=2,
                  num_decoder_layers=2)
    elif name in _SIZES:
      d_model, d_ff, heads, n_layers = _SIZES[name]
      base = dict(d_model=d_model, d_ff=d_ff, num_heads=heads, head_dim=64,
                  num_encoder_layers=n_layers, num_decoder_layers=n_layers)
    else:
      raise ValueError(f'Unknown T5 size {name!r}; choose one of tiny, {", ".join(_SIZES)}.')
    return cls(**{**base, **overrides})

  def replace(self, **changes: Any) -> 'T5Config':
    return dataclasses.replace(self, **changes)

  @property
  def size_name(self) -> Optional[str]:
    """The T5 1.1 size (small ... xxl) with this shape, as gin/models/sizes/*.gin set it; None
    for any other shape (vocabulary and numerics aside)."""
    for name, (d_model, d_ff, heads, n_layers) in _SIZES.items():
      if (self.d_model, self.d_ff, self.num_heads, self.head_dim, self.num_encoder_layers,
          self.num_decoder_layers) == (d_model, d_ff, heads, 64, n_layers, n_layers):
        return name
    return None



_REMAT_POLICIES = {
    'full': None,  # keep only layer inputs; recompute everything
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmuls
}


def _layer_class(cls: type, policy: RematPolicy, static_argnums: tuple[int, ...]) -> type:
  if policy == 'none':
    return cls
  # `self` counts as argument 0 for flax's lifted remat; enable_dropout must stay static.
  return nn.remat(cls, policy=_REMAT_POLICIES[policy], static_argnums=static_argnums)


def _dropout(rate: float, x: jax.Array, enable: bool) -> jax.Array:
  # T5X shares residual dropout masks along the length axis.
  return nn.Dropout(rate, broadcast_dims=(-2,))(x, deterministic=not enable)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x_BxLxD, bias_BxHxLxL, enable_dropout=False):
    c = self.config
    kw = dict(dtype=c.activation_dtype, param_dtype=c.weight_dtype)
    h = layers.RMSNorm(c.layer_norm_epsilon, name='pre_attention_layer_norm', **kw)(x_BxLxD)
    h = layers.MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, name='attention',
                                  impl=c.attention_impl, **kw)(h, h, bias_BxHxLxL, enable_dropout)
    x_BxLxD = x_BxLxD + _dropout(c.dropout_rate, h, enable_dropout)
    h = layers.RMSNorm(c.layer_norm_epsilon, name='pre_mlp_layer_norm', **kw)(x_BxLxD)
    h = layers.MlpBlock(c.d_ff, c.dropout_rate, name='mlp', **kw)(h, enable_dropout)
    return x_BxLxD + _dropout(c.dropout_rate, h, enable_dropout)


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, y_BxTxD, encoded_BxLxD, self_bias, cross_bias, enable_dropout=False,
               use_cache=False):
    """use_cache: read and extend the 'cache' collection (see layers.MultiHeadAttention);
    self_bias is then a function of the query offset and encoded_BxLxD may be None once the
    cache holds it."""
    c = self.config
    kw = dict(dtype=c.activation_dtype, param_dtype=c.weight_dtype)
    h = layers.RMSNorm(c.layer_norm_epsilon, name='pre_self_attention_layer_norm', **kw)(y_BxTxD)
    h = layers.MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, name='self_attention',
                                  impl=c.attention_impl, **kw)(h, h, self_bias, enable_dropout,
                                        'self' if use_cache else None)
    y_BxTxD = y_BxTxD + _dropout(c.dropout_rate, h, enable_dropout)
    h = layers.RMSNorm(c.layer_norm_epsilon, name='pre_cross_attention_layer_norm', **kw)(y_BxTxD)
    cross = layers.MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate,
                                      name='encoder_decoder_attention',
                                      fold_kv=c.cross_attention_fold, impl=c.attention_impl, **kw)
    h = cross(h, encoded_BxLxD, cross_bias, enable_dropout, 'cross' if use_cache else None)
    y_BxTxD = y_BxTxD + _dropout(c.dropout_rate, h, enable_dropout)
    h = layers.RMSNorm(c.layer_norm_epsilon, name='pre_mlp_layer_norm', **kw)(y_BxTxD)
    h = layers.MlpBlock(c.d_ff, c.dropout_rate, name='mlp', **kw)(h, enable_dropout)
    return y_BxTxD + _dropout(c.dropout_rate, h, enable_dropout)


def encoder_mask(encoder_input_tokens_BxL: jax.Array, prompt: Any = None) -> jax.Array:
  """Which encoded positions are real [B, L (+ P)]: what the encoder attends over and the
  decoder's cross-attention may see. `prompt`: a PromptConfig, or None for the plain model."""
  if prompt is None:
    return token_mask(encoder_input_tokens_BxL)
  return prompt.mask(encoder_input_tokens_BxL)


class Encoder(nn.Module):
  """Embeds tokens (+ prompt), runs the bidirectional stack; returns encoded states [B, L, D]."""
  config: T5Config
  shared_embedding: nn.Module
  prompt: Optional[Any] = None  # a models.prompt.PromptConfig; None for the plain model

  @nn.compact
  def __call__(self, encoder_input_tokens_BxL, enable_dropout=False, prompt_ids_B=None):
    """prompt_ids_B: each row's prompt [B] when the prompt is a table (num_prompts > 1)."""
    c = self.config
    kw = dict(dtype=c.activation_dtype, param_dtype=c.weight_dtype)
    x_BxLxD = self.shared_embedding(encoder_input_tokens_BxL)
    deep_LxPxD = None
    if self.prompt is not None:
      # The one place the prompt enters: joined to the embedded inputs, L grows by P.
      prompt = self.prompt.module(c.activation_dtype, name='prompt')
      x_BxLxD = prompt(encoder_input_tokens_BxL, x_BxLxD, prompt_ids_B)
      if self.prompt.deep:
        deep_LxPxD = prompt.deep_prompts(c.num_encoder_layers, c.d_model)
    valid_BxL = encoder_mask(encoder_input_tokens_BxL, self.prompt)
    length = x_BxLxD.shape[1]
    bias = layers.attention_bias(layers.make_attention_mask(valid_BxL, valid_BxL))
    bias = bias + layers.RelativePositionBias(c.relpos_buckets, c.relpos_max_distance,
                                              c.num_heads, bidirectional=True,
                                              name='relpos_bias', **kw)(length, length)
    x_BxLxD = _dropout(c.dropout_rate, x_BxLxD, enable_dropout)
    layer = _layer_class(EncoderLayer, c.remat_policy, static_argnums=(3,))
    for i in range(c.num_encoder_layers):
      if deep_LxPxD is not None and i > 0:
        # Deep prompts (P-tuning v2 style, not the paper's): layer i's prompt slots get deep[i-1].
        x_BxLxD = prompt_lib.replace_prompt_positions(x_BxLxD, encoder_input_tokens_BxL,
                                                      deep_LxPxD[i - 1], self.prompt)
      x_BxLxD = layer(c, name=f'layers_{i}')(x_BxLxD, bias, enable_dropout)
    x_BxLxD = layers.RMSNorm(c.layer_norm_epsilon, name='encoder_norm', **kw)(x_BxLxD)
    return _dropout(c.dropout_rate, x_BxLxD, enable_dropout)


class Decoder(nn.Module):
  """Causal stack with cross-attention to the encoder; returns float32 logits [B, T, V].

  With use_cache=True the self- and cross-attention layers use the 'cache' collection: the first
  call (T = the maximum decode length, with the encoded input) creates it, later calls (T
  tokens from the cache's position on, usually 1; encoded_BxLxD may be None) extend it.
  """
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded_BxLxD, encoder_valid_BxL, decoder_input_tokens_BxT,
               decoder_target_tokens_BxT=None, enable_dropout=False, use_cache=False):
    c = self.config
    kw = dict(dtype=c.activation_dtype, param_dtype=c.weight_dtype)
    length = decoder_input_tokens_BxT.shape[1]
    # T5X masks decoder positions by their *targets* (inputs start with the pad id 0).
    if decoder_target_tokens_BxT is None:
      decoder_valid_BxT = jnp.ones(decoder_input_tokens_BxT.shape, bool)
    else:
      decoder_valid_BxT = token_mask(decoder_target_tokens_BxT)
    relpos = layers.RelativePositionBias(c.relpos_buckets, c.relpos_max_distance, c.num_heads,
                                         bidirectional=False, name='relpos_bias', **kw)
    if use_cache:
      if decoder_target_tokens_BxT is not None:
        raise ValueError('Decoding with the cache takes no decoder_target_tokens.')
      # Each self-attention layer knows its cache position; it asks for the bias of its rows.
      def self_bias(q_offset, q_len, k_len):
        return relpos(q_len, k_len, q_offset) + layers.causal_bias(q_len, k_len, q_offset)
    else:
      self_mask = layers.make_attention_mask(decoder_valid_BxT, decoder_valid_BxT)
      self_bias = layers.attention_bias(self_mask & layers.causal_mask(length))
      self_bias = self_bias + relpos(length, length)
    cross_bias = layers.attention_bias(
        layers.make_attention_mask(decoder_valid_BxT, encoder_valid_BxL))

    y_BxTxD = self.shared_embedding(decoder_input_tokens_BxT)
    y_BxTxD = _dropout(c.dropout_rate, y_BxTxD, enable_dropout)
    # Decoding keeps nothing for a backward pass, so it never needs remat.
    layer = DecoderLayer if use_cache else _layer_class(DecoderLayer, c.remat_policy,
                                                     static_argnums=(5, 6))
    for i in range(c.num_decoder_layers):
      y_BxTxD = layer(c, name=f'layers_{i}')(y_BxTxD, encoded_BxLxD, self_bias, cross_bias,
                                              enable_dropout, use_cache)
    y_BxTxD = layers.RMSNorm(c.layer_norm_epsilon, name='decoder_norm', **kw)(y_BxTxD)
    y_BxTxD = _dropout(c.dropout_rate, y_BxTxD, enable_dropout)
    if c.logits_via_embedding:
      return self.shared_embedding.attend(y_BxTxD.astype(jnp.float32)) / jnp.sqrt(c.d_model)
    return layers.DenseGeneral(c.vocab_size, ('embed', 'vocab'), dtype=jnp.float32,
                               param_dtype=c.weight_dtype, name='logits_dense')(y_BxTxD)


class EncoderDecoder(nn.Module):
  """T5X's EncoderDecoder: `__call__` gives teacher-forced logits; `encode`/`decode` split it;
  `init_cache`/`decode_step` decode autoregressively with a key/value cache.

  With `prompt` (a models.prompt.PromptConfig) the encoder carries
  `encoder/prompt/prompt/prompt`: [P, D], or a table [K, P, D] whose rows `prompt_ids` [B]
  select (`encode` and `__call__` take them; what follows the encoder needs no ids, since every
  prompt has the same length and mask). With `prompt.deep` (P-tuning v2 style, not the paper's
  method) it also carries `encoder/prompt/deep/prompt` [L-1, P, D], the prompt slots' values
  before encoder layers 1..L-1.
  """
  config: T5Config
  prompt: Optional[Any] = None

  def setup(self):
    c = self.config
    self.token_embedder = layers.Embed(c.vocab_size, c.d_model, dtype=c.activation_dtype,
                                       param_dtype=c.weight_dtype)
    self.encoder = Encoder(c, self.token_embedder, self.prompt)
    self.decoder = Decoder(c, self.token_embedder)

  def encoder_mask(self, encoder_input_tokens_BxL: jax.Array) -> jax.Array:
    """Which encoded positions the decoder may attend to [B, L (+ P)]."""
    return encoder_mask(encoder_input_tokens_BxL, self.prompt)

  def encode(self, encoder_input_tokens, enable_dropout=False, prompt_ids=None):
    return self.encoder(encoder_input_tokens, enable_dropout, prompt_ids)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             decoder_target_tokens=None, enable_dropout=False):
    return self.decoder(encoded, self.encoder_mask(encoder_input_tokens), decoder_input_tokens,
                        decoder_target_tokens, enable_dropout)

  def init_cache(self, encoded, encoder_input_tokens, max_decode_length: int):
    """Creates the decoding cache; apply with {'params': ...} only and mutable=['cache'].

    Per decoder layer i, under 'cache'/decoder/layers_i:
      self_attention/cached_key, cached_value    [B, max_decode_length, H, head_dim] zeros
      self_attention/cache_index                 int32 scalar 0 (the next position to write)
      encoder_decoder_attention/cached_key, cached_value   [B, L (+ P), H, head_dim]: the
          keys/values of `encoded` (prompt positions included), computed here once.
    """
    dummy_BxT = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
    self.decoder(encoded, self.encoder_mask(encoder_input_tokens), dummy_BxT, use_cache=True)

  def decode_step(self, encoder_input_tokens, decoder_input_tokens_BxQ):
    """Logits [B, Q, V] for the next Q (usually 1) decoder positions, from the cache.

    Apply with {'params': ..., 'cache': ...} and mutable=['cache']; the returned cache has the
    tokens' keys/values written and cache_index advanced by Q. The encoded input is read from
    the cache; `encoder_input_tokens` only gives the cross-attention mask.
    """
    return self.decoder(None, self.encoder_mask(encoder_input_tokens), decoder_input_tokens_BxQ,
                        use_cache=True)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               enable_dropout=False, prompt_ids=None):
    encoded = self.encode(encoder_input_tokens, enable_dropout, prompt_ids)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout)


def init_params(config: T5Config, rng: Optional[jax.Array] = None,
                batch: int = 1, enc_len: int = 8, dec_len: int = 4, prompt: Any = None) -> dict:
  """Randomly initialised (unboxed) parameters."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  model = EncoderDecoder(config, prompt)
  args, kwargs = _init_inputs(prompt, batch, enc_len, dec_len)
  # One compiled program; eager init dispatches hundreds of small ops.
  variables = jax.jit(model.init)(rng, *args, **kwargs)
  return nn.unbox(variables['params'])


def _init_inputs(prompt: Any, batch: int = 1, enc_len: int = 8,
                 dec_len: int = 4) -> tuple[tuple, dict]:
  """Dummy (encoder tokens, decoder tokens) for `init`, and prompt ids for a prompt table."""
  enc, dec = jnp.ones((batch, enc_len), jnp.int32), jnp.ones((batch, dec_len), jnp.int32)
  if prompt is not None and prompt.num_prompts > 1:
    return (enc, dec), {'prompt_ids': jnp.zeros((batch,), jnp.int32)}
  return (enc, dec), {}


def param_shapes(config: T5Config, prompt: Any = None) -> dict:
  """Parameter ShapeDtypeStructs without allocating anything."""
  return jax.eval_shape(lambda: init_params(config, prompt=prompt))


def logical_axes(config: T5Config, prompt: Any = None) -> dict:
  """Logical PartitionSpecs of every parameter, e.g. PartitionSpec('vocab', 'embed')."""
  args, kwargs = _init_inputs(prompt)
  boxed = jax.eval_shape(lambda: EncoderDecoder(config, prompt).init(
      jax.random.PRNGKey(0), *args, **kwargs))
  return nn.get_partition_spec(boxed)['params']


def count_params(config: T5Config, prompt: Any = None) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(param_shapes(config, prompt)))
