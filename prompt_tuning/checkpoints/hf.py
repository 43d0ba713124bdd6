"""Hugging Face T5 directories (`config.json` + safetensors), mapped to and from T5X names (the
files themselves: hf_files.py).

torch's Linear stores `weight` as [out, in]; T5X kernels are [in, out], hence the transposes.
The relative position table lives in block 0 of each stack as [buckets, heads].
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from prompt_tuning import storage
from prompt_tuning.checkpoints import hf_files
from prompt_tuning.checkpoints.common import (CheckpointError, check_dtypes, first_line,
                                              storage_errors, to_numpy_tree)
from prompt_tuning.checkpoints.hf_files import CONFIG_FILE, is_hf_dir  # noqa: F401  (hf.is_hf_dir)
from prompt_tuning.models import t5
from prompt_tuning.models.decoder_config import FAMILIES as DECODER_FAMILIES

_ATTN = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'out'}
_MLP = ('wi_0', 'wi_1', 'wo')
# HF's copies of the shared table; identical to shared.weight in T5 1.1 checkpoints.
_TIED_COPIES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')


def name_map(config: t5.T5Config) -> list[tuple[str, str, bool]]:
  """(t5x key, hf name, transpose) for every parameter of `config`."""
  m = [('token_embedder/embedding', 'shared.weight', False)]
  for stack, n_layers in (('encoder', config.num_encoder_layers),
                          ('decoder', config.num_decoder_layers)):
    m.append((f'{stack}/relpos_bias/rel_embedding',
              f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', True))
    norm = 'encoder_norm' if stack == 'encoder' else 'decoder_norm'
    m.append((f'{stack}/{norm}/scale', f'{stack}.final_layer_norm.weight', False))
    if stack == 'encoder':
      sublayers = [('attention', 'pre_attention_layer_norm', 'SelfAttention')]
    else:
      sublayers = [('self_attention', 'pre_self_attention_layer_norm', 'SelfAttention'),
                   ('encoder_decoder_attention', 'pre_cross_attention_layer_norm',
                    'EncDecAttention')]
    for i in range(n_layers):
      t, h = f'{stack}/layers_{i}', f'{stack}.block.{i}.layer'
      for j, (attn, norm_name, hf_attn) in enumerate(sublayers):
        m.append((f'{t}/{norm_name}/scale', f'{h}.{j}.layer_norm.weight', False))
        for hf_proj, proj in _ATTN.items():
          m.append((f'{t}/{attn}/{proj}/kernel', f'{h}.{j}.{hf_attn}.{hf_proj}.weight', True))
      j = len(sublayers)
      m.append((f'{t}/pre_mlp_layer_norm/scale', f'{h}.{j}.layer_norm.weight', False))
      for w in _MLP:
        m.append((f'{t}/mlp/{w}/kernel', f'{h}.{j}.DenseReluDense.{w}.weight', True))
  if not config.logits_via_embedding:
    m.append(('decoder/logits_dense/kernel', 'lm_head.weight', True))
  return m


def config_from_json(path: str, hf: Mapping[str, Any]) -> t5.T5Config:
  file = storage.join(path, CONFIG_FILE)
  family = hf.get('model_type')
  if family in DECODER_FAMILIES:  # the decoder-only runs read it (models/decoder_model.py)
    raise CheckpointError(f'{file}: a decoder-only {family} model, not T5 1.1: give the gin '
                          f'files models/{family}.gin in place of the T5 model files (train: '
                          f'runs/causal_lm_prompt_tuning.gin).')
  act = hf.get('feed_forward_proj', 'relu')
  if act != 'gated-gelu':
    raise CheckpointError(f'{file}: feed_forward_proj is {act!r}; only T5 1.1 models '
                          f"('gated-gelu', e.g. google/t5-v1_1-* and *-lm-adapt) are supported.")
  try:
    n_layers = int(hf['num_layers'])
    return t5.T5Config(
        vocab_size=int(hf['vocab_size']), d_model=int(hf['d_model']), d_ff=int(hf['d_ff']),
        num_heads=int(hf['num_heads']), head_dim=int(hf['d_kv']),
        num_encoder_layers=n_layers,
        num_decoder_layers=int(hf.get('num_decoder_layers') or n_layers),
        relpos_buckets=int(hf.get('relative_attention_num_buckets', 32)),
        relpos_max_distance=int(hf.get('relative_attention_max_distance', 128)),
        layer_norm_epsilon=float(hf.get('layer_norm_epsilon', 1e-6)),
        logits_via_embedding=_scales_tied_logits(hf))
  except KeyError as e:
    raise CheckpointError(f'{file}: missing field {e.args[0]!r} of a T5 config.') from e
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{file}: not a valid T5 config ({first_line(e)}).') from e


def _scales_tied_logits(hf: Mapping[str, Any]) -> bool:
  # T5 1.0 ties and scales logits by d_model**-0.5; T5 1.1 does neither. transformers >= 5
  # records that as `scale_decoder_outputs` (and always says tie_word_embeddings=True); older
  # versions used tie_word_embeddings alone.
  return bool(hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True)))


@storage_errors
def read_tensors(path: str) -> dict[str, np.ndarray]:
  return hf_files.read_tensors(path)[0]


@storage_errors
def read_embedding(path: str) -> tuple[np.ndarray, str]:
  """(the token embedding [vocab, d_model], where it was read) of an HF T5 directory, reading
  no other tensor: `shared.weight`, else one of its tied copies."""
  return hf_files.read_one(path, ('shared.weight',) + _TIED_COPIES,
                           'token embedding (shared.weight)')


@storage_errors
def read_params(path: str, config: Optional[t5.T5Config] = None
                ) -> tuple[t5.T5Config, dict[str, np.ndarray]]:
  """Reads an HF T5 1.1 directory (a local path or a URL) into (config, flat T5X params)."""
  hf_config = hf_files.read_config(path, 'T5')
  tensors, files = hf_files.read_tensors(path)
  param_dtype_from_file = config is None
  if config is None:
    config = config_from_json(path, hf_config)
  # Before the dtype of `shared` becomes the config's: an int tensor would be cast silently.
  t5x_keys = {hf_name: key for key, hf_name, _ in name_map(config)}
  t5x_keys.update({name: 'token_embedder/embedding' for name in _TIED_COPIES})
  hf_files.check_floating(tensors, files, t5x_keys)
  if 'shared.weight' not in tensors and 'encoder.embed_tokens.weight' in tensors:
    tensors['shared.weight'] = tensors['encoder.embed_tokens.weight']
  if param_dtype_from_file and 'shared.weight' in tensors:
    config = config.replace(param_dtype=np.dtype(tensors['shared.weight'].dtype).name)
  if (not config.logits_via_embedding and 'lm_head.weight' not in tensors and
      'shared.weight' in tensors and hf_config.get('tie_word_embeddings', True)):
    # transformers >= 5 may save a T5 1.1 head tied to `shared` (and runs it unscaled).
    tensors['lm_head.weight'] = tensors['shared.weight']
  source = f'{path} (Hugging Face safetensors)'
  flat = {}
  for key, hf_name, transpose in name_map(config):
    if hf_name not in tensors:
      raise CheckpointError(f'{source}: missing tensor {hf_name!r} (T5X {key!r}) expected by the '
                            f'config.')
    value = tensors.pop(hf_name)
    flat[key] = np.ascontiguousarray(value.T) if transpose else value
  extra = sorted(k for k in tensors if k not in _TIED_COPIES)
  if extra:
    raise CheckpointError(f'{source}: unexpected tensor(s) not in a T5 1.1 model: '
                          f'{", ".join(extra[:5])}.')
  return config, flat


def config_to_json(config: t5.T5Config, dtype_name: str) -> dict[str, Any]:
  return {
      'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5',
      'vocab_size': config.vocab_size, 'd_model': config.d_model, 'd_kv': config.head_dim,
      'd_ff': config.d_ff, 'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers, 'num_heads': config.num_heads,
      'relative_attention_num_buckets': config.relpos_buckets,
      'relative_attention_max_distance': config.relpos_max_distance,
      'dropout_rate': config.dropout_rate, 'layer_norm_epsilon': config.layer_norm_epsilon,
      'initializer_factor': 1.0, 'feed_forward_proj': 'gated-gelu', 'dense_act_fn': 'gelu_new',
      'is_gated_act': True, 'tie_word_embeddings': config.logits_via_embedding,
      'scale_decoder_outputs': config.logits_via_embedding,
      'is_encoder_decoder': True, 'pad_token_id': t5.PAD_ID, 'eos_token_id': t5.EOS_ID,
      'decoder_start_token_id': t5.PAD_ID, 'use_cache': True, 'torch_dtype': dtype_name,
  }


@storage_errors
def save(directory: str, config: t5.T5Config, params: Mapping[str, Any],
         max_shard_bytes: int = 10 * 1024**3) -> str:
  """Writes `config.json` and safetensors (sharded with an index above `max_shard_bytes`), each
  file whole or not at all (storage.save_atomic), into a local directory or under a URL."""
  flat = to_numpy_tree(params)
  check_dtypes(flat, directory)  # Refused before anything is written.
  tensors = {}
  for key, hf_name, transpose in name_map(config):
    if key not in flat:
      raise CheckpointError(f'{directory}: cannot save, parameter {key!r} is missing.')
    tensors[hf_name] = np.ascontiguousarray(flat[key].T if transpose else flat[key])
  dtype_name = np.dtype(tensors['shared.weight'].dtype).name
  return hf_files.write(directory, tensors, config_to_json(config, dtype_name), max_shard_bytes)
