"""Hugging Face decoder-only checkpoints (Llama, Qwen2, Mistral, GPT-2 directories: `config.json`
+ safetensors, one file or sharded) read into and written from DecoderOnly's parameter tree
(models/decoder_only.py); the files themselves are hf_files.py's.

Owns the name map per family. torch's Linear stores `weight` as [out, in], our kernels are
[in, out]: transposed. GPT-2's Conv1D stores [in, out] already: not transposed, and its fused
`c_attn` ([D, 3D], bias [3D]) is split into our query/key/value (concatenated on saving). A tied
head has no `lm_head.weight` (transformers writes none; one that is read anyway is HF's tied copy
and dropped). Buffers some checkpoints carry (GPT-2's `attn.bias` / `attn.masked_bias` masks,
old `rotary_emb.inv_freq`) are not parameters and are skipped; GPT-2's hub files name tensors
without the `transformer.` prefix, which is added on reading. Reading then saving is bit-exact.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from prompt_tuning import storage
from prompt_tuning.checkpoints import hf_files
from prompt_tuning.checkpoints.common import (CheckpointError, check_against, flatten,
                                              storage_errors, to_numpy_tree, unflatten)
from prompt_tuning.models import decoder_config, decoder_only
from prompt_tuning.models.decoder_config import DecoderConfig

# (HF tensor name, our keys (several: fused along the last axis in HF's layout), transpose)
Entry = tuple[str, tuple[str, ...], bool]
_BUFFERS = re.compile(r'(^|\.)attn\.(masked_)?bias$|rotary_emb\.inv_freq$')
_LLAMA_ATTN = {'q_proj': 'query', 'k_proj': 'key', 'v_proj': 'value', 'o_proj': 'out'}
_LLAMA_MLP = {'gate_proj': 'wi_0', 'up_proj': 'wi_1', 'down_proj': 'wo'}
_GPT2_PREFIX = 'transformer.'


def name_map(config: DecoderConfig) -> list[Entry]:
  """Every HF tensor of `config`'s model and where it goes in our tree."""
  entries = _gpt2_map(config) if config.family == 'gpt2' else _llama_map(config)
  if not config.tie_word_embeddings:
    entries.append(('lm_head.weight', ('logits_dense/kernel',), True))
  return entries


def _llama_map(c: DecoderConfig) -> list[Entry]:
  m: list[Entry] = [('model.embed_tokens.weight', ('token_embedder/embedding',), False),
                    ('model.norm.weight', ('decoder_norm/scale',), False)]
  for i in range(c.num_layers):
    hf, ours = f'model.layers.{i}', f'layers_{i}'
    m += [(f'{hf}.input_layernorm.weight', (f'{ours}/pre_attention_layer_norm/scale',), False),
          (f'{hf}.post_attention_layernorm.weight', (f'{ours}/pre_mlp_layer_norm/scale',), False)]
    for proj, name in _LLAMA_ATTN.items():
      m.append((f'{hf}.self_attn.{proj}.weight', (f'{ours}/attention/{name}/kernel',), True))
      if c.out_bias if name == 'out' else c.qkv_bias:
        m.append((f'{hf}.self_attn.{proj}.bias', (f'{ours}/attention/{name}/bias',), False))
    for proj, name in _LLAMA_MLP.items():
      m.append((f'{hf}.mlp.{proj}.weight', (f'{ours}/mlp/{name}/kernel',), True))
      if c.mlp_bias:
        m.append((f'{hf}.mlp.{proj}.bias', (f'{ours}/mlp/{name}/bias',), False))
  return m


def _gpt2_map(c: DecoderConfig) -> list[Entry]:
  t = _GPT2_PREFIX
  m: list[Entry] = [(f'{t}wte.weight', ('token_embedder/embedding',), False),
                    (f'{t}wpe.weight', ('position_embedder/embedding',), False)]
  for i in range(c.num_layers):
    hf, ours = f'{t}h.{i}', f'layers_{i}'
    for hf_part, our_part in (('ln_1', 'pre_attention_layer_norm'),
                              ('ln_2', 'pre_mlp_layer_norm')):
      m += [(f'{hf}.{hf_part}.weight', (f'{ours}/{our_part}/scale',), False),
            (f'{hf}.{hf_part}.bias', (f'{ours}/{our_part}/bias',), False)]
    for kind in ('weight', 'bias'):
      leaf = 'kernel' if kind == 'weight' else 'bias'
      qkv = tuple(f'{ours}/attention/{n}/{leaf}' for n in ('query', 'key', 'value'))
      m += [(f'{hf}.attn.c_attn.{kind}', qkv, False),
            (f'{hf}.attn.c_proj.{kind}', (f'{ours}/attention/out/{leaf}',), False),
            (f'{hf}.mlp.c_fc.{kind}', (f'{ours}/mlp/wi/{leaf}',), False),
            (f'{hf}.mlp.c_proj.{kind}', (f'{ours}/mlp/wo/{leaf}',), False)]
  m += [(f'{t}ln_f.weight', ('decoder_norm/scale',), False),
        (f'{t}ln_f.bias', ('decoder_norm/bias',), False)]
  return m


def expected_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
  """{our flat key: shape} of `config`'s parameters."""
  return {k: tuple(v.shape) for k, v in flatten(decoder_only.param_shapes(config)).items()}


def _hf_shape(entry: Entry, expected: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
  _, keys, transpose = entry
  shapes = [expected[k] for k in keys]
  shape = shapes[0][:-1] + (sum(s[-1] for s in shapes),)
  return shape[::-1] if transpose else shape


def config_file_error(path: str, e: Exception) -> CheckpointError:
  return CheckpointError(f'{storage.join(path, hf_files.CONFIG_FILE)}: {e}')


@storage_errors
def read_config(path: str, **overrides: Any) -> DecoderConfig:
  """The DecoderConfig of a directory's config.json (`overrides`: dtype, param_dtype, ...)."""
  try:
    return decoder_config.config_from_json(hf_files.read_config(path, 'decoder-only'),
                                           **overrides)
  except CheckpointError:
    raise
  except ValueError as e:
    raise config_file_error(path, e) from e


@storage_errors
def is_decoder_dir(path: str) -> bool:
  """Whether `path` is an HF directory whose config.json names a supported decoder-only family
  (its `architectures` or `model_type`); T5's and unreadable configs are not."""
  if not (storage.isdir(path) and hf_files.is_hf_dir(path)):
    return False
  try:
    decoder_config.family_of(hf_files.read_config(path))
  except (CheckpointError, ValueError):
    return False
  return True


@storage_errors
def read_embedding(path: str) -> tuple[np.ndarray, str]:
  """(the token embedding [vocab, d_model], 'file [tensor]') of a decoder-only directory, reading
  no other tensor (GPT-2's hub files name it without the `transformer.` prefix)."""
  names = ((f'{_GPT2_PREFIX}wte.weight', 'wte.weight') if read_config(path).family == 'gpt2'
           else ('model.embed_tokens.weight',))
  return hf_files.read_one(path, names, f'token embedding ({names[0]})')


def _hf_names(config: DecoderConfig, tensors: dict, files: dict) -> tuple[dict, dict]:
  """Buffers dropped; GPT-2's unprefixed names (the hub's files) given the prefix."""
  def name(n: str) -> str:
    if config.family == 'gpt2' and not n.startswith((_GPT2_PREFIX, 'lm_head.')):
      return _GPT2_PREFIX + n
    return n
  keep = [n for n in tensors if not _BUFFERS.search(n)]
  return {name(n): tensors[n] for n in keep}, {name(n): files[n] for n in keep}


@storage_errors
def read_params(path: str, config: Optional[DecoderConfig] = None
                ) -> tuple[DecoderConfig, dict[str, Any]]:
  """(config, flat params) of an HF decoder-only directory (a local path or a URL). The config
  comes from config.json, its param_dtype from the embedding's dtype; a given `config` is used
  instead and arrays are cast to its param_dtype. Any disagreement is one CheckpointError line
  naming the file and tensor."""
  derived = config is None
  config = read_config(path) if config is None else config
  tensors, files = _hf_names(config, *hf_files.read_tensors(path))
  entries = name_map(config)
  hf_files.check_floating(tensors, files, {e[0]: '+'.join(e[1]) for e in entries}, 'Flax')
  if config.tie_word_embeddings:
    tensors.pop('lm_head.weight', None)
  expected = expected_shapes(config)
  source = f'{path} (Hugging Face safetensors)'
  flat: dict[str, Any] = {}
  for entry in entries:
    hf_name, keys, transpose = entry
    if hf_name not in tensors:
      raise CheckpointError(f'{source}: missing tensor {hf_name!r} (Flax {"+".join(keys)!r}) '
                            f'expected by the {config.architecture} config.')
    value = tensors.pop(hf_name)
    if tuple(value.shape) != _hf_shape(entry, expected):
      raise CheckpointError(f'{files[hf_name]}: tensor {hf_name!r} has shape {tuple(value.shape)} '
                            f'but the config expects {_hf_shape(entry, expected)}.')
    value = value.T if transpose else value
    splits = np.cumsum([expected[k][-1] for k in keys])[:-1]
    for key, part in zip(keys, np.split(value, splits, axis=-1)):
      flat[key] = np.ascontiguousarray(part)
  if tensors:
    extra = sorted(tensors)
    raise CheckpointError(f'{files[extra[0]]}: unexpected tensor(s) not in a '
                          f'{config.architecture} model: {", ".join(extra[:5])}.')
  if derived:
    config = config.replace(param_dtype=np.dtype(flat['token_embedder/embedding'].dtype).name)
  else:
    flat = {k: v.astype(config.weight_dtype, copy=False) for k, v in flat.items()}
  return config, flat


def load(path: str, config: Optional[DecoderConfig] = None) -> tuple[DecoderConfig, dict]:
  """`read_params` with the nested tree DecoderOnly.apply takes."""
  config, flat = read_params(path, config)
  return config, unflatten(flat)


@storage_errors
def save(directory: str, config: DecoderConfig, params: Mapping[str, Any],
         max_shard_bytes: int = 10 * 1024**3) -> str:
  """Writes `config.json` and safetensors in transformers' layout (sharded with an index above
  `max_shard_bytes`), which `AutoModelForCausalLM.from_pretrained` loads; returns the
  directory. Everything is checked before anything is written."""
  try:
    decoder_config.check_writable(config)
  except ValueError as e:
    raise CheckpointError(f'{directory}: {e}') from e
  flat = to_numpy_tree(params)
  check_against(flat, expected_shapes(config), directory, f'a {config.architecture} model')
  tensors = {}
  for hf_name, keys, transpose in name_map(config):
    value = np.concatenate([flat[k] for k in keys], axis=-1) if len(keys) > 1 else flat[keys[0]]
    tensors[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  dtype_name = np.dtype(flat['token_embedder/embedding'].dtype).name
  return hf_files.write(directory, tensors, decoder_config.config_to_json(config, dtype_name),
                        max_shard_bytes)
