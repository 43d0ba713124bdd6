"""Shared pieces of the checkpoint formats: error type, flat paths, config derivation, checks."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, Optional, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from prompt_tuning import storage
from prompt_tuning.models import t5

_F = TypeVar('_F', bound=Callable[..., Any])


class CheckpointError(ValueError):
  """A checkpoint could not be read or written; the message names the file and key at fault.

  The message is always one line (logs and CLI output grep cleanly): a multi-line text is folded.
  """

  def __init__(self, message: str = ''):
    super().__init__(' '.join(line.strip() for line in str(message).splitlines() if line.strip()))


def storage_errors(fn: _F) -> _F:
  """Lets a StorageError of the file layer (unknown scheme or bucket, missing object, unreachable
  service; its message names the URL) leave `fn` as a CheckpointError with the same message."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except CheckpointError:
      raise
    except storage.StorageError as e:
      raise CheckpointError(str(e)) from e
  return wrapper  # type: ignore[return-value]


def first_line(e: BaseException) -> str:
  """The first line of an exception's text (tensorstore and safetensors errors can run on)."""
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


# For messages: what a parameter may be stored as.
FLOAT_DTYPES = 'float32, bfloat16, float16 or float64'


def is_floating(dtype: Any) -> bool:
  """True for numpy floats and ml_dtypes' (bfloat16, float8_*; numpy's kind for those is 'V')."""
  try:
    return bool(jnp.issubdtype(np.dtype(dtype), jnp.floating))
  except TypeError:
    return False


def check_dtypes(flat: Mapping[str, Any], source: str) -> None:
  """Raises CheckpointError on a parameter that is not floating point (int, bool, complex, ...).

  An integer kernel would otherwise be cast to float on load and give silently wrong weights.
  """
  for key, value in flat.items():
    dtype = _dtype(value)
    if not is_floating(dtype):
      raise CheckpointError(f'{source}: parameter {key!r} has dtype {dtype}; checkpoint '
                            f'parameters must be floating point ({FLOAT_DTYPES}).')


def _dtype(value: Any) -> np.dtype:
  dtype = getattr(value, 'dtype', None)
  return np.dtype(dtype) if dtype is not None else np.asarray(value).dtype


def _shape(value: Any) -> tuple[int, ...]:
  shape = getattr(value, 'shape', None)
  return tuple(shape) if shape is not None else np.shape(value)


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


def _require_matrix(flat: Mapping[str, Any], key: str, source: str) -> Any:
  value = _require(flat, key, source)
  if len(_shape(value)) != 2:
    raise CheckpointError(f'{source}: parameter {key!r} has shape {_shape(value)}; expected a '
                          f'2-d array; cannot derive the model config.')
  return value


def derive_config(flat: Mapping[str, Any], source: str,
                  base: Optional[t5.T5Config] = None) -> t5.T5Config:
  """Architecture from array shapes; what shapes cannot carry comes from `base` (or defaults).

  With `base`, the result is `base` itself: the check against shapes is done by `check_params`,
  which names the offending key and both shapes.
  """
  if base is not None:
    return base
  check_dtypes(flat, source)
  embedding, rel, query, wi_0 = (_require_matrix(flat, key, source) for key in (
      'token_embedder/embedding', 'encoder/relpos_bias/rel_embedding',
      'encoder/layers_0/attention/query/kernel', 'encoder/layers_0/mlp/wi_0/kernel'))
  num_heads, buckets = rel.shape
  if num_heads == 0 or query.shape[1] % num_heads:
    raise CheckpointError(
        f"{source}: parameter 'encoder/layers_0/attention/query/kernel' has shape "
        f"{tuple(query.shape)}, not a whole number of heads for the {num_heads} heads of "
        f"'encoder/relpos_bias/rel_embedding' {tuple(rel.shape)}.")
  return t5.T5Config(
      vocab_size=embedding.shape[0], d_model=embedding.shape[1], d_ff=wi_0.shape[1],
      num_heads=num_heads, head_dim=query.shape[1] // num_heads,
      num_encoder_layers=_layer_count(flat, 'encoder'),
      num_decoder_layers=_layer_count(flat, 'decoder'), relpos_buckets=buckets,
      logits_via_embedding='decoder/logits_dense/kernel' not in flat,
      param_dtype=np.dtype(embedding.dtype).name)


def check_params(flat: Mapping[str, Any], config: t5.T5Config, source: str,
                 ignore: tuple[str, ...] = ()) -> None:
  """Raises CheckpointError on missing keys, extra keys, non-float arrays or shapes that disagree
  with `config`.

  Keys under any prefix in `ignore` (e.g. a prompt stored with the model) are allowed extra.
  """
  expected = {k: tuple(v.shape) for k, v in flatten(t5.param_shapes(config)).items()}
  check_against(flat, expected, source, 'the T5 1.1 model', ignore)


def check_against(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], source: str,
                  model: str, ignore: tuple[str, ...] = ()) -> None:
  """`check_params` against any model's expected {key: shape}; `model` names it in errors."""
  check_dtypes(flat, source)
  extra = sorted(k for k in flat if k not in expected and not k.startswith(ignore))
  missing = sorted(k for k in expected if k not in flat)
  if missing:
    raise CheckpointError(
        f'{source}: missing {len(missing)} parameter(s) expected by the config '
        f'({_short(missing)}); is this checkpoint for a different architecture?')
  if extra:
    raise CheckpointError(
        f'{source}: unexpected parameter(s) not in {model} ({_short(extra)}).')
  for key, shape in expected.items():
    got = _shape(flat[key])
    if got != shape:
      raise CheckpointError(
          f'{source}: parameter {key!r} has shape {got} but the config expects {shape}.')


def _short(keys: list[str], limit: int = 5) -> str:
  shown = ', '.join(keys[:limit])
  return shown + (f', ... (+{len(keys) - limit} more)' if len(keys) > limit else '')


def to_numpy_tree(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flat {path: np.ndarray} from a (possibly device-resident) nested tree."""
  return {k: np.asarray(jax.device_get(v)) for k, v in flatten(params).items()}
