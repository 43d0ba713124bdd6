"""Shared pieces of the checkpoint formats: the error type, flat paths, config derivation, checks."""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import jax
import numpy as np
from flax import traverse_util

from prompt_tuning.models import t5


class CheckpointError(ValueError):
  """A checkpoint could not be read or written; the message names the file and key at fault."""


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  return traverse_util.flatten_dict(dict(params), sep='/')


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def _layer_count(flat: Mapping[str, Any], stack: str) -> int:
  ids = {int(m.group(1)) for k in flat if (m := re.match(rf'{stack}/layers_(\d+)/', k))}
  return max(ids) + 1 if ids else 0


def _require(flat: Mapping[str, Any], key: str, source: str) -> Any:
  if key not in flat:
    raise CheckpointError(f'{source}: missing parameter {key!r}; cannot derive the model config.')
  return flat[key]


def derive_config(flat: Mapping[str, Any], source: str,
                  base: Optional[t5.T5Config] = None) -> t5.T5Config:
  """Architecture from array shapes; what shapes cannot carry comes from `base` (or defaults).

  With `base`, the result is `base` itself: the check against shapes is done by `check_params`,
  which names the offending key and both shapes.
  """
  if base is not None:
    return base
  embedding = _require(flat, 'token_embedder/embedding', source)
  rel = _require(flat, 'encoder/relpos_bias/rel_embedding', source)
  query = _require(flat, 'encoder/layers_0/attention/query/kernel', source)
  wi_0 = _require(flat, 'encoder/layers_0/mlp/wi_0/kernel', source)
  num_heads, buckets = rel.shape
  return t5.T5Config(
      vocab_size=embedding.shape[0], d_model=embedding.shape[1], d_ff=wi_0.shape[1],
      num_heads=num_heads, head_dim=query.shape[1] // num_heads,
      num_encoder_layers=_layer_count(flat, 'encoder'),
      num_decoder_layers=_layer_count(flat, 'decoder'), relpos_buckets=buckets,
      logits_via_embedding='decoder/logits_dense/kernel' not in flat,
      param_dtype=np.dtype(embedding.dtype).name)


def check_params(flat: Mapping[str, Any], config: t5.T5Config, source: str,
                 ignore: tuple[str, ...] = ()) -> None:
  """Raises CheckpointError on missing keys, extra keys or shapes that disagree with `config`.

  Keys under any prefix in `ignore` (e.g. a prompt stored with the model) are allowed extra.
  """
  expected = {k: tuple(v.shape) for k, v in flatten(t5.param_shapes(config)).items()}
  extra = sorted(k for k in flat if k not in expected and not k.startswith(ignore))
  missing = sorted(k for k in expected if k not in flat)
  if missing:
    raise CheckpointError(
        f'{source}: missing {len(missing)} parameter(s) expected by the config '
        f'({_short(missing)}); is this checkpoint for a different architecture?')
  if extra:
    raise CheckpointError(
        f'{source}: unexpected parameter(s) not in the T5 1.1 model ({_short(extra)}).')
  for key, shape in expected.items():
    got = tuple(flat[key].shape)
    if got != shape:
      raise CheckpointError(
          f'{source}: parameter {key!r} has shape {got} but the config expects {shape}.')


def _short(keys: list[str], limit: int = 5) -> str:
  shown = ', '.join(keys[:limit])
  return shown + (f', ... (+{len(keys) - limit} more)' if len(keys) > limit else '')


def to_numpy_tree(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flat {path: np.ndarray} from a (possibly device-resident) nested tree."""
  return {k: np.asarray(jax.device_get(v)) for k, v in flatten(params).items()}
