"""`DecoderConfig`: the architecture and numerics of a decoder-only model (models/decoder_only.py),
and its translation from and to a Hugging Face `config.json`.

Owns which families are supported and what each one's config.json fields mean:

  Llama 2/3/3.1/3.2  LlamaForCausalLM    RMSNorm, SwiGLU, RoPE (+ 'linear' / 'llama3' scaling),
                                         grouped-query attention, tied or untied embeddings,
                                         optional attention / MLP biases
  Qwen2 / Qwen2.5    Qwen2ForCausalLM    Llama with q/k/v biases (o has none); sliding window on
                                         the layers `layer_types` names, when use_sliding_window
  Mistral            MistralForCausalLM  Llama with a sliding window on every layer (when set)
  GPT-2              GPT2LMHeadModel     learned absolute positions, LayerNorm with bias, GELU
                                         (tanh) MLP with biases, biased attention, tied head

A sliding window is applied, not refused: query i sees keys j with i - window < j <= i, as
transformers does; the cache keeps every position (no rolling buffer).

Anything else (another `architectures` entry or `model_type`, context-dependent RoPE types,
GPT-2's per-layer attention scaling) is refused with one ValueError line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Optional, get_args


from prompt_tuning.models import layers
from prompt_tuning.models.rope import ROPE_TYPES, RopeScaling

Family = Literal['llama', 'qwen2', 'mistral', 'gpt2']
FAMILIES: tuple[str, ...] = get_args(Family)
# model_type -> the `architectures` entry transformers writes for the causal LM.
ARCHITECTURES: dict[str, str] = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
                                 'mistral': 'MistralForCausalLM', 'gpt2': 'GPT2LMHeadModel'}
# Hugging Face activation names -> ours ('gelu_new' and 'gelu_pytorch_tanh' are the same tanh form).
ACTIVATIONS = ('silu', 'gelu_new', 'gelu_pytorch_tanh', 'gelu', 'relu')
NORMS = ('rms', 'layer')
POSITIONS = ('rope', 'learned')
SLIDING, FULL = 'sliding_attention', 'full_attention'


def supported() -> str:
  return ', '.join(f'{arch} ({family})' for family, arch in ARCHITECTURES.items())


@dataclasses.dataclass(frozen=True)
class DecoderConfig(layers.Dtypes):
  """A decoder-only transformer; defaults are a tiny Llama (tests). Hashable (a module field)."""
  family: Family = 'llama'
  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2      # < num_heads: grouped-query attention
  head_dim: int = 16
  d_ff: int = 128
  norm: str = 'rms'          # 'rms' (RMSNorm, no bias) or 'layer' (LayerNorm with bias)
  norm_epsilon: float = 1e-6
  position: str = 'rope'     # 'rope' or 'learned' (absolute, GPT-2)
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  max_position_embeddings: int = 2048  # the learned table's size; informational for RoPE
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  gated_mlp: bool = True     # act(x wi_0) * (x wi_1) (SwiGLU); False: act(x wi) (GPT-2)
  activation: str = 'silu'
  tie_word_embeddings: bool = False
  sliding_window: Optional[int] = None
  # Per layer, 'full_attention' or 'sliding_attention' (Qwen2); None: the window (if any) on all.
  layer_types: Optional[tuple[str, ...]] = None
  dropout_rate: float = 0.0  # residual and embedding dropout while training; 0 in HF's configs
  dtype: str = 'bfloat16'    # activations
  param_dtype: str = 'float32'
  # Special ids, carried between config.json files (the model itself never reads them).
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int | tuple[int, ...]] = None
  pad_token_id: Optional[int] = None

  def __post_init__(self):
    choices = {'family': tuple(ARCHITECTURES), 'norm': NORMS, 'position': POSITIONS,
               'activation': ACTIVATIONS}
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f'DecoderConfig.{field} is {getattr(self, field)!r}; choose one of '
                         f'{", ".join(allowed)}.')
    if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
      raise ValueError(f'DecoderConfig: {self.num_heads} heads do not split into groups of '
                       f'{self.num_kv_heads} key/value heads.')
    if self.position == 'rope' and self.head_dim % 2:
      raise ValueError(f'RoPE needs an even head_dim, got {self.head_dim}.')
    if self.layer_types is not None:
      object.__setattr__(self, 'layer_types', tuple(self.layer_types))
      if len(self.layer_types) != self.num_layers or set(self.layer_types) - {SLIDING, FULL}:
        raise ValueError(f'DecoderConfig.layer_types must name {self.num_layers} layers, each '
                         f'{FULL!r} or {SLIDING!r}; got {self.layer_types}.')
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, 'eos_token_id', tuple(self.eos_token_id))

  def replace(self, **changes: Any) -> 'DecoderConfig':
    return dataclasses.replace(self, **changes)

  @property
  def architecture(self) -> str:
    return ARCHITECTURES[self.family]


  def window(self, layer: int) -> Optional[int]:
    """Layer `layer`'s sliding window, or None for full causal attention."""
    if self.sliding_window is None:
      return None
    if self.layer_types is not None and self.layer_types[layer] != SLIDING:
      return None
    return self.sliding_window


# ----------------------------------------------------------------------------------------------
# config.json


def family_of(hf: Mapping[str, Any]) -> Family:
  """The family named by `architectures` (first entry) or else `model_type`."""
  archs = hf.get('architectures') or []
  arch = archs[0] if isinstance(archs, list) and archs else None
  model_type = hf.get('model_type')
  by_arch = {a: f for f, a in ARCHITECTURES.items()}
  if arch is not None and arch in by_arch:
    return by_arch[arch]  # type: ignore[return-value]
  if arch is None and model_type in ARCHITECTURES:
    return model_type
  raise ValueError(f'Unsupported decoder-only architecture {arch or "(none)"!r} (model_type '
                   f'{model_type!r}); supported: {supported()}.')


def _rope(hf: Mapping[str, Any]) -> tuple[float, Optional[RopeScaling]]:
  """(theta, scaling) from transformers >= 5's `rope_parameters` or the older `rope_theta` and
  `rope_scaling` (whose type key was once 'type')."""
  params = dict(hf.get('rope_parameters') or hf.get('rope_scaling') or {})
  theta = float(params.get('rope_theta', hf.get('rope_theta', 10000.0)))
  rope_type = params.get('rope_type', params.get('type', 'default'))
  if rope_type not in ROPE_TYPES:
    raise ValueError(f'RoPE type {rope_type!r} is not supported; supported: '
                     f'{", ".join(ROPE_TYPES)}.')
  if float(params.get('partial_rotary_factor', hf.get('partial_rotary_factor') or 1.0)) != 1.0:
    raise ValueError('partial_rotary_factor != 1 (RoPE on part of each head) is not supported.')
  if rope_type == 'default':
    return theta, None
  original = params.get('original_max_position_embeddings',
                        hf.get('max_position_embeddings', 2048))
  return theta, RopeScaling(rope_type, float(params.get('factor', 1.0)),
                            float(params.get('low_freq_factor', 1.0)),
                            float(params.get('high_freq_factor', 4.0)), int(original))


def _ids(hf: Mapping[str, Any]) -> dict[str, Any]:
  return {k: hf.get(k) for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')}


def config_from_json(hf: Mapping[str, Any], **overrides: Any) -> DecoderConfig:
  """The DecoderConfig of a transformers `config.json` (as a dict); `overrides` set numerics
  (dtype, param_dtype, dropout_rate). Unsupported families, missing or malformed fields raise
  one ValueError line."""
  family = family_of(hf)
  try:
    if family == 'gpt2':
      return _gpt2_from_json(hf, **overrides)
    return _llama_from_json(family, hf, **overrides)
  except KeyError as e:
    raise ValueError(f'{ARCHITECTURES[family]} config: missing field {e.args[0]!r}.') from e
  except TypeError as e:
    raise ValueError(f'{ARCHITECTURES[family]} config: a malformed field ({e}).') from e


def _llama_from_json(family: Family, hf: Mapping[str, Any], **overrides: Any) -> DecoderConfig:
  d_model, heads = int(hf['hidden_size']), int(hf['num_attention_heads'])
  theta, scaling = _rope(hf)
  # Only Llama has these switches (Qwen2's q/k/v biases are fixed, Mistral has no biases).
  bias = family == 'llama' and bool(hf.get('attention_bias', False))
  window = hf.get('sliding_window', 4096 if family == 'mistral' else None)
  layer_types = None
  n_layers = int(hf['num_hidden_layers'])
  if family == 'qwen2':
    window = window if hf.get('use_sliding_window', False) else None
    if window is not None:
      layer_types = hf.get('layer_types') or [
          SLIDING if i >= int(hf.get('max_window_layers', 28)) else FULL for i in range(n_layers)]
  return DecoderConfig(
      family=family, vocab_size=int(hf['vocab_size']), d_model=d_model, num_layers=n_layers,
      num_heads=heads, num_kv_heads=int(hf.get('num_key_value_heads') or heads),
      head_dim=int(hf.get('head_dim') or d_model // heads),
      d_ff=int(hf['intermediate_size']), norm='rms',
      norm_epsilon=float(hf.get('rms_norm_eps', 1e-6)), position='rope', rope_theta=theta,
      rope_scaling=scaling, max_position_embeddings=int(hf.get('max_position_embeddings', 2048)),
      qkv_bias=bias or family == 'qwen2', out_bias=bias,
      mlp_bias=family == 'llama' and bool(hf.get('mlp_bias', False)),
      gated_mlp=True, activation=hf.get('hidden_act', 'silu'),
      tie_word_embeddings=bool(hf.get('tie_word_embeddings', False)),
      sliding_window=None if window is None else int(window),
      layer_types=None if layer_types is None else tuple(layer_types), **_ids(hf), **overrides)


def _gpt2_from_json(hf: Mapping[str, Any], **overrides: Any) -> DecoderConfig:
  for key, ok in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                  ('add_cross_attention', False)):
    if bool(hf.get(key, ok)) != ok:
      raise ValueError(f'GPT-2 with {key}={hf[key]!r} is not supported (only {key}={ok}).')
  d_model, heads = int(hf.get('n_embd', 768)), int(hf.get('n_head', 12))
  return DecoderConfig(
      family='gpt2', vocab_size=int(hf.get('vocab_size', 50257)), d_model=d_model,
      num_layers=int(hf.get('n_layer', 12)), num_heads=heads, num_kv_heads=heads,
      head_dim=d_model // heads, d_ff=int(hf.get('n_inner') or 4 * d_model), norm='layer',
      norm_epsilon=float(hf.get('layer_norm_epsilon', 1e-5)), position='learned',
      max_position_embeddings=int(hf.get('n_positions', 1024)), qkv_bias=True, out_bias=True,
      mlp_bias=True, gated_mlp=False, activation=hf.get('activation_function', 'gelu_new'),
      tie_word_embeddings=bool(hf.get('tie_word_embeddings', True)), **_ids(hf), **overrides)


def config_to_json(config: DecoderConfig, dtype_name: str) -> dict[str, Any]:
  """The `config.json` transformers reads back into the same model (weights stored as
  `dtype_name`). HF fields outside the architecture (dropouts, initializer range) keep
  transformers' defaults."""
  c = config
  common = {'architectures': [c.architecture], 'model_type': c.family,
            'vocab_size': c.vocab_size, 'tie_word_embeddings': c.tie_word_embeddings,
            'bos_token_id': c.bos_token_id, 'pad_token_id': c.pad_token_id,
            'eos_token_id': list(c.eos_token_id) if isinstance(c.eos_token_id, tuple)
            else c.eos_token_id,
            'dtype': dtype_name, 'torch_dtype': dtype_name, 'use_cache': True}
  if c.family == 'gpt2':
    return {**common, 'n_embd': c.d_model, 'n_layer': c.num_layers, 'n_head': c.num_heads,
            'n_inner': c.d_ff, 'n_positions': c.max_position_embeddings,
            'layer_norm_epsilon': c.norm_epsilon, 'activation_function': c.activation}
  rope: dict[str, Any] = {'rope_type': 'default', 'rope_theta': c.rope_theta}
  if c.rope_scaling is not None:
    rope.update(dataclasses.asdict(c.rope_scaling))
  out = {**common, 'hidden_size': c.d_model, 'intermediate_size': c.d_ff,
         'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
         'num_key_value_heads': c.num_kv_heads, 'head_dim': c.head_dim,
         'hidden_act': c.activation, 'max_position_embeddings': c.max_position_embeddings,
         'rms_norm_eps': c.norm_epsilon, 'rope_parameters': rope,
         # transformers < 5 reads these two instead of rope_parameters.
         'rope_theta': c.rope_theta,
         'rope_scaling': None if c.rope_scaling is None else dict(rope)}
  if c.family == 'llama':
    out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
  elif c.family == 'mistral':
    out.update(sliding_window=c.sliding_window)
  else:
    types = [SLIDING if c.window(i) is not None else FULL for i in range(c.num_layers)]
    out.update(use_sliding_window=c.sliding_window is not None, sliding_window=c.sliding_window,
               max_window_layers=c.num_layers, layer_types=types)
  return out


def check_writable(config: DecoderConfig) -> None:
  """Raises ValueError when `config.json` cannot express `config` (e.g. an output bias on a
  Qwen2, which transformers' Qwen2 lacks): the written file must load as the same model."""
  numerics = {k: getattr(config, k) for k in ('dtype', 'param_dtype', 'dropout_rate')}
  back = config_from_json(config_to_json(config, config.param_dtype), **numerics)
  # Windows are compared per layer: the same layers may be named by layer_types or not.
  differ = [f.name for f in dataclasses.fields(config)
            if f.name not in ('sliding_window', 'layer_types')
            and getattr(config, f.name) != getattr(back, f.name)]
  if [config.window(i) for i in range(config.num_layers)] != [
      back.window(i) for i in range(config.num_layers)]:
    differ.append('sliding_window')
  if differ:
    raise ValueError(f'{config.architecture} config.json cannot express this DecoderConfig\'s '
                     f'{", ".join(differ)}.')

