"""Decoder-only causal language models in Flax linen: Llama 2/3/3.1/3.2, Qwen2/2.5, Mistral and
GPT-2, configured by models/decoder_config.py (`DecoderConfig`, read from HF `config.json`).

Owns the modules, where the prompt enters, the decoding cache and the parameter tree (T5X-style
names; HF's in checkpoints/hf_decoder.py):

  token_embedder/embedding                [V, D]        ('vocab', 'embed')
  position_embedder/embedding             [Pos, D]      ('abspos_buckets', 'embed')  GPT-2 only
  layers_i/pre_attention_layer_norm/scale [D]           ('embed',)  (+ bias: GPT-2's LayerNorm)
  layers_i/attention/query/kernel         [D, H*Dh]     ('embed', 'joined_kv')  (+ bias)
  layers_i/attention/{key,value}/kernel   [D, KvH*Dh]   ('embed', 'joined_kv')  (+ bias)
  layers_i/attention/out/kernel           [H*Dh, D]     ('joined_kv', 'embed')  (+ bias)
  layers_i/pre_mlp_layer_norm/scale       [D]
  layers_i/mlp/wi_0 (gate), wi_1 (up)     [D, F]        ('embed', 'mlp'); GPT-2: wi (+ bias)
  layers_i/mlp/wo                         [F, D]        ('mlp', 'embed')  (+ bias)
  decoder_norm/scale                      [D]           (+ bias)
  logits_dense/kernel                     [D, V]        ('embed', 'vocab')  untied heads only

Padding: right padding. A row's real tokens come first, then any ids (in range) as padding;
causal attention keeps every real position from seeing the padding after it, so the forward needs
no mask, positions count from 0 in every row, and the logits at padded positions mean nothing.
Row lengths are needed only where the last real token matters (`prefill`).

The prompt (`prompt`: [P, D] for every row or [B, P, D] per row, float32, cast to the activation
dtype) enters right after the token embedding, at `prompt_placement`:
  'prefix'     [prompt, x_0 .. x_n]            before everything incl. BOS (PEFT's CAUSAL_LM)
  'after_bos'  [x_0, prompt, x_1 .. x_n]       after the first token (google-research/prompt-
                                               tuning's decoder-only placement)
Positions count the combined sequence. Logits are returned for the tokens only, aligned to them
either way: `__call__`'s logits[:, t] predict token t + 1 (the combined sequence's positions
P .. P + L - 1), so the loss is the same with or without a prompt.

Deep prompts (`deep`: [L-1, P, D], or per row [B, L-1, P, D]; P-tuning v2 style, not the paper's
method; T5's meaning, models/prompt.py): before each layer i >= 1 the hidden states at the
prompt's positions (0 .. P-1 for 'prefix', 1 .. P for 'after_bos') are replaced by deep[i-1].
`prefill` writes those layers' keys/values into the cache, so decoding needs nothing more.

Cache (collection 'cache', made by `init_cache`, not by a forward pass): `index` [B] (each row's
next position) and per layer `layers_i/attention/cached_key`, `cached_value` [B, T, KvH, Dh].
Slot t holds position t; `prefill` writes the prompt and inputs at 0 .. P + L - 1 and sets each
row's index to P + its length, so its padding slots are overwritten by the next tokens.

Shape suffixes: B batch, L tokens, P prompt, M = L + P, Q queries, K keys, T cache length,
D d_model, H heads, KvH key/value heads, G = H / KvH, Dh head dim, F d_ff, V vocabulary.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models import layers, rope
from prompt_tuning.models.decoder_config import DecoderConfig

Placement = Literal['prefix', 'after_bos']
PLACEMENTS: tuple[str, ...] = get_args(Placement)
PROMPT_START = {'prefix': 0, 'after_bos': 1}  # the prompt's first position in the sequence
_ACTIVATIONS = {'silu': nn.silu, 'gelu_new': lambda x: nn.gelu(x, approximate=True),
                'gelu_pytorch_tanh': lambda x: nn.gelu(x, approximate=True),
                'gelu': lambda x: nn.gelu(x, approximate=False), 'relu': nn.relu}


def _no_cache():
  raise ValueError('Decoding without a cache: pass {"cache": init_cache(...)} to apply, with '
                   'mutable=["cache"].')


def _norm(c: DecoderConfig, name: Optional[str] = None) -> nn.Module:
  kw: dict[str, Any] = dict(dtype=c.activation_dtype, param_dtype=c.weight_dtype, name=name)
  if c.norm == 'rms':
    return layers.RMSNorm(c.norm_epsilon, **kw)
  return layers.LayerNorm(c.norm_epsilon, **kw)


def _dense(c: DecoderConfig, name: str, features: int, axes: tuple[str, str],
           bias: bool) -> layers.DenseGeneral:
  return layers.DenseGeneral(features, axes, dtype=c.activation_dtype,
                             param_dtype=c.weight_dtype, use_bias=bias, name=name)


class CausalAttention(nn.Module):
  """Grouped-query causal self-attention (KvH = H: multi-head) with RoPE or none, optional
  biases, an optional sliding window, and the decoding cache. Scores scale by 1/sqrt(Dh)."""
  config: DecoderConfig
  window: Optional[int] = None

  @nn.compact
  def __call__(self, x_BxQxD: jax.Array, positions_BxQ: jax.Array,
               use_cache: bool = False) -> jax.Array:
    c = self.config
    batch, q_len, d_model = x_BxQxD.shape
    heads, kv_heads, dh = c.num_heads, c.num_kv_heads, c.head_dim
    q = _dense(c, 'query', heads * dh, ('embed', 'joined_kv'), c.qkv_bias)(x_BxQxD)
    k = _dense(c, 'key', kv_heads * dh, ('embed', 'joined_kv'), c.qkv_bias)(x_BxQxD)
    v = _dense(c, 'value', kv_heads * dh, ('embed', 'joined_kv'), c.qkv_bias)(x_BxQxD)
    q_BxQxHxDh = q.reshape(batch, q_len, heads, dh)
    k_BxKxKvHxDh = k.reshape(batch, q_len, kv_heads, dh)
    v_BxKxKvHxDh = v.reshape(batch, q_len, kv_heads, dh)
    if c.position == 'rope':
      inv_freq = rope.inverse_frequencies(dh, c.rope_theta, c.rope_scaling)
      q_BxQxHxDh = rope.apply_rope(q_BxQxHxDh, positions_BxQ, inv_freq)
      k_BxKxKvHxDh = rope.apply_rope(k_BxKxKvHxDh, positions_BxQ, inv_freq)
    key_positions_BxK = positions_BxQ
    if use_cache:
      k_BxKxKvHxDh, v_BxKxKvHxDh = self._write_cache(k_BxKxKvHxDh, v_BxKxKvHxDh, positions_BxQ)
      key_positions_BxK = jnp.arange(k_BxKxKvHxDh.shape[1], dtype=jnp.int32)[None, :]
    # Slots past a row's position are empty or stale (padding): causality hides them.
    visible_BxQxK = key_positions_BxK[:, None, :] <= positions_BxQ[:, :, None]
    if self.window is not None:
      visible_BxQxK &= key_positions_BxK[:, None, :] > positions_BxQ[:, :, None] - self.window
    # Query head h uses key/value head h // G (HF's repeat_kv order).
    q_BxQxKvHxGxDh = q_BxQxHxDh.reshape(batch, q_len, kv_heads, heads // kv_heads, dh)
    logits = jnp.einsum('bqkgd,bskd->bkgqs', q_BxQxKvHxGxDh, k_BxKxKvHxDh,
                        preferred_element_type=jnp.float32) * (dh ** -0.5)
    logits = jnp.where(visible_BxQxK[:, None, None], logits, layers.NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(c.activation_dtype)
    out = jnp.einsum('bkgqs,bskd->bqkgd', weights, v_BxKxKvHxDh)
    return _dense(c, 'out', d_model, ('joined_kv', 'embed'), c.out_bias)(
        out.reshape(batch, q_len, heads * dh))

  def _write_cache(self, k_BxQxKvHxDh, v_BxQxKvHxDh, positions_BxQ):
    """Writes this call's keys/values at their positions (per row); returns the whole cache."""
    cached_k = self.variable('cache', 'cached_key', _no_cache)
    cached_v = self.variable('cache', 'cached_value', _no_cache)
    rows_Bx1 = jnp.arange(positions_BxQ.shape[0])[:, None]
    cached_k.value = cached_k.value.at[rows_Bx1, positions_BxQ].set(
        k_BxQxKvHxDh.astype(cached_k.value.dtype), mode='drop')
    cached_v.value = cached_v.value.at[rows_Bx1, positions_BxQ].set(
        v_BxQxKvHxDh.astype(cached_v.value.dtype), mode='drop')
    return cached_k.value, cached_v.value


class Mlp(nn.Module):
  """act(x wi_0) * (x wi_1) -> wo (gated: SwiGLU with silu), or act(x wi) -> wo (GPT-2)."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    c = self.config
    act = _ACTIVATIONS[c.activation]
    up = ('embed', 'mlp')
    if c.gated_mlp:
      h_BxLxF = (act(_dense(c, 'wi_0', c.d_ff, up, c.mlp_bias)(x_BxLxD)) *
                 _dense(c, 'wi_1', c.d_ff, up, c.mlp_bias)(x_BxLxD))
    else:
      h_BxLxF = act(_dense(c, 'wi', c.d_ff, up, c.mlp_bias)(x_BxLxD))
    return _dense(c, 'wo', x_BxLxD.shape[-1], ('mlp', 'embed'), c.mlp_bias)(h_BxLxF)


class Block(nn.Module):
  """Pre-norm layer: x + attention(norm(x)), then + mlp(norm(x))."""
  config: DecoderConfig
  window: Optional[int] = None

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, use_cache=False, enable_dropout=False):
    c = self.config
    drop = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,), deterministic=not enable_dropout)
    h = _norm(c, 'pre_attention_layer_norm')(x_BxLxD)
    h = CausalAttention(c, self.window, name='attention')(h, positions_BxL, use_cache)
    x_BxLxD = x_BxLxD + drop(h)
    h = Mlp(c, name='mlp')(_norm(c, 'pre_mlp_layer_norm')(x_BxLxD))
    return x_BxLxD + drop(h)


def insert_prompt(x_BxLxD: jax.Array, prompt: jax.Array, placement: str) -> jax.Array:
  """The embedded tokens with the prompt ([P, D] or [B, P, D]) inserted: [B, L + P, D]."""
  if placement not in PLACEMENTS:
    raise ValueError(f'Unknown prompt placement {placement!r} for a decoder-only model; choose '
                     f'one of {", ".join(PLACEMENTS)}.')
  batch = x_BxLxD.shape[0]
  prompt_BxPxD = jnp.broadcast_to(prompt.astype(x_BxLxD.dtype), (batch,) + prompt.shape[-2:])
  if placement == 'prefix':
    return jnp.concatenate([prompt_BxPxD, x_BxLxD], axis=1)
  return jnp.concatenate([x_BxLxD[:, :1], prompt_BxPxD, x_BxLxD[:, 1:]], axis=1)


def replace_prompt(x_BxMxD: jax.Array, value: jax.Array, placement: str) -> jax.Array:
  """Hidden states [B, M, D] with the prompt's P positions (where `insert_prompt` put it) set to
  `value` ([P, D] or [B, P, D]); every other position untouched."""
  p = value.shape[-2]
  start = PROMPT_START[placement]
  rest_BxLxD = jnp.concatenate([x_BxMxD[:, :start], x_BxMxD[:, start + p:]], axis=1)
  return insert_prompt(rest_BxLxD, value, placement)


def init_cache(config: DecoderConfig, batch: int, max_length: int) -> dict:
  """The empty decoding cache of `batch` rows and `max_length` positions (prompt + inputs +
  generated tokens; writes past it are dropped, so size it to hold them all)."""
  shape = (batch, max_length, config.num_kv_heads, config.head_dim)
  cache: dict[str, Any] = {'index': jnp.zeros((batch,), jnp.int32)}
  for i in range(config.num_layers):
    cache[f'layers_{i}'] = {'attention': {
        'cached_key': jnp.zeros(shape, config.activation_dtype),
        'cached_value': jnp.zeros(shape, config.activation_dtype)}}
  return cache


class DecoderOnly(nn.Module):
  """A causal LM: `__call__` (teacher-forced logits), `prefill` + `decode_step` (the cache).

  `prompt_placement` says where a prompt given to `__call__`/`prefill` goes (module docstring).
  """
  config: DecoderConfig
  prompt_placement: Placement = 'prefix'

  def setup(self) -> None:
    c = self.config
    kw: dict[str, Any] = dict(dtype=c.activation_dtype, param_dtype=c.weight_dtype)
    self.token_embedder = layers.Embed(c.vocab_size, c.d_model, **kw)
    if c.position == 'learned':
      self.position_embedder = layers.Embed(c.max_position_embeddings, c.d_model,
                                            axes=('abspos_buckets', 'embed'), **kw)
    self.layers = [Block(c, c.window(i)) for i in range(c.num_layers)]
    self.decoder_norm = _norm(c)
    if not c.tie_word_embeddings:
      self.logits_dense = layers.DenseGeneral(c.vocab_size, ('embed', 'vocab'),
                                              dtype=jnp.float32, param_dtype=c.weight_dtype)
    self.dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))

  def _embed(self, tokens_BxL: jax.Array, prompt: Optional[jax.Array]) -> tuple[jax.Array, int]:
    x_BxLxD = self.token_embedder(tokens_BxL)
    p = 0 if prompt is None else prompt.shape[-2]
    c = self.config
    if c.position == 'learned' and tokens_BxL.shape[1] + p > c.max_position_embeddings:
      # A lookup past the table would silently clamp to its last row.
      raise ValueError(f'{tokens_BxL.shape[1]} tokens + a prompt of {p} exceed the '
                       f'{c.max_position_embeddings} learned positions of this {c.architecture}.')
    if prompt is None:
      return x_BxLxD, 0
    return insert_prompt(x_BxLxD, prompt, self.prompt_placement), p

  def _check_deep(self, deep: Optional[jax.Array], p: int) -> None:
    c = self.config
    if deep is None:
      return
    expected = (c.num_layers - 1, p, c.d_model)
    if p == 0 or c.num_layers < 2 or deep.ndim not in (3, 4) or deep.shape[-3:] != expected:
      raise ValueError(f'Deep prompts have shape {tuple(deep.shape)}; this {c.num_layers}-layer '
                       f'model with a prompt of {p} takes [layers - 1, P, D] = {expected} '
                       f'(or one per row), beside an input prompt, with at least 2 layers.')

  def _stack(self, x_BxMxD: jax.Array, positions_BxM: jax.Array, use_cache: bool = False,
             enable_dropout: bool = False, deep: Optional[jax.Array] = None) -> jax.Array:
    """The layers and the final norm: hidden states [B, M, D]. `deep` (checked): layer i >= 1
    sees deep[..., i - 1, :, :] at the prompt's positions."""
    if self.config.position == 'learned':
      x_BxMxD = x_BxMxD + self.position_embedder(positions_BxM)
    x_BxMxD = self.dropout(x_BxMxD, deterministic=not enable_dropout)
    for i, layer in enumerate(self.layers):
      if deep is not None and i > 0:
        x_BxMxD = replace_prompt(x_BxMxD, deep[..., i - 1, :, :], self.prompt_placement)
      x_BxMxD = layer(x_BxMxD, positions_BxM, use_cache, enable_dropout)
    return self.decoder_norm(x_BxMxD)

  def _logits(self, h_BxLxD: jax.Array) -> jax.Array:
    """float32 logits [B, L, V] (the tied table or the untied head)."""
    if self.config.tie_word_embeddings:
      return self.token_embedder.attend(h_BxLxD.astype(jnp.float32))
    return self.logits_dense(h_BxLxD)

  def __call__(self, tokens_BxL: jax.Array, prompt: Optional[jax.Array] = None,
               enable_dropout: bool = False, deep: Optional[jax.Array] = None,
               logits_at_BxT: Optional[jax.Array] = None) -> jax.Array:
    """Next-token logits [B, L, V] float32: [:, t] predicts token t + 1 (prompt or not).
    `deep`: the prompt's per-layer values (module docstring). `logits_at_BxT` (token positions,
    per row): only those logits, [B, T, V]; the vocabulary-wide head is then paid at T
    positions, not L (training scores a few targets)."""
    x_BxMxD, p = self._embed(tokens_BxL, prompt)
    self._check_deep(deep, p)
    batch, m = x_BxMxD.shape[:2]
    positions_BxM = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (batch, m))
    h_BxMxD = self._stack(x_BxMxD, positions_BxM, enable_dropout=enable_dropout, deep=deep)
    h_BxLxD = h_BxMxD[:, p:]
    if logits_at_BxT is not None:
      h_BxLxD = jnp.take_along_axis(h_BxLxD, logits_at_BxT[:, :, None], axis=1)
    return self._logits(h_BxLxD)

  def prefill(self, tokens_BxL: jax.Array, lengths_B: jax.Array,
              prompt: Optional[jax.Array] = None, deep: Optional[jax.Array] = None) -> jax.Array:
    """Writes the prompt and inputs into an empty cache (apply with {'params', 'cache':
    init_cache(...)} and mutable=['cache']); returns the logits [B, V] after each row's last real
    token (at P + lengths_B - 1). Rows need at least one token. `deep` as in `__call__`."""
    x_BxMxD, p = self._embed(tokens_BxL, prompt)
    self._check_deep(deep, p)
    batch, m = x_BxMxD.shape[:2]
    positions_BxM = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (batch, m))
    h_BxMxD = self._stack(x_BxMxD, positions_BxM, use_cache=True, deep=deep)
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    last_Bx1x1 = (p + lengths_B - 1)[:, None, None]
    h_Bx1xD = jnp.take_along_axis(h_BxMxD, last_Bx1x1, axis=1)
    self._set_index(p + lengths_B)
    return self._logits(h_Bx1xD)[:, 0]

  def decode_step(self, tokens_BxQ: jax.Array) -> jax.Array:
    """Logits [B, Q, V] of Q (usually 1) more tokens per row, written at each row's index, which
    advances by Q; apply with {'params', 'cache'} and mutable=['cache']."""
    index_B = self._get_index()
    q_len = tokens_BxQ.shape[1]
    positions_BxQ = index_B[:, None] + jnp.arange(q_len, dtype=jnp.int32)[None, :]
    h_BxQxD = self._stack(self.token_embedder(tokens_BxQ), positions_BxQ, use_cache=True)
    self._set_index(index_B + q_len)
    return self._logits(h_BxQxD)

  def _get_index(self) -> jax.Array:
    if not self.has_variable('cache', 'index'):
      _no_cache()
    return self.get_variable('cache', 'index')

  def _set_index(self, index_B: jax.Array) -> None:
    self._get_index()  # refuses a missing cache rather than creating a partial one
    self.put_variable('cache', 'index', index_B.astype(jnp.int32))

  @nn.nowrap
  def init_cache(self, batch: int, max_length: int) -> dict:
    """`init_cache(self.config, batch, max_length)`; callable on an unbound module."""
    return init_cache(self.config, batch, max_length)


def init_params(config: DecoderConfig, rng: Optional[jax.Array] = None) -> dict:
  """Randomly initialised (unboxed) parameters."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  variables = jax.jit(DecoderOnly(config).init)(rng, jnp.ones((1, 4), jnp.int32))
  return nn.unbox(variables['params'])


def param_shapes(config: DecoderConfig) -> dict:
  """Parameter ShapeDtypeStructs without allocating anything."""
  return jax.eval_shape(lambda: init_params(config))


def logical_axes(config: DecoderConfig) -> dict:
  """Logical PartitionSpecs of every parameter, for train/partitioning.py's rules."""
  boxed = jax.eval_shape(lambda: DecoderOnly(config).init(jax.random.PRNGKey(0),
                                                          jnp.ones((1, 4), jnp.int32)))
  return nn.get_partition_spec(boxed)['params']
