"""Rotary position embeddings (RoPE) of the Llama-architecture families: the inverse frequencies
(plain, linear scaling, Llama 3's frequency-dependent scaling) and their rotation of queries
and keys.

The rotation is the "half" layout Hugging Face checkpoints use: a head's first half of features
pairs with its second half (x_i with x_{i + Dh/2}), not adjacent features. Angles and the rotation
are computed in float32 whatever the activation dtype.

Shape suffixes: B batch, L length, H heads, Dh head dim.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# 'default': theta ** (-2i / Dh); 'linear': those divided by `factor`; 'llama3': Llama 3.1's
# smooth per-wavelength scaling. Context-dependent types (dynamic NTK, YaRN, LongRoPE) are not
# supported.
ROPE_TYPES = ('default', 'linear', 'llama3')


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """`rope_scaling` (`rope_parameters` in transformers >= 5) beyond theta; the llama3 fields are
  Llama 3.1's (factor 8, low 1, high 4, original 8192 in Meta's release)."""
  rope_type: str = 'default'
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f'RoPE type {self.rope_type!r} is not supported; supported: '
                       f'{", ".join(ROPE_TYPES)}.')
    if self.rope_type == 'llama3' and self.high_freq_factor <= self.low_freq_factor:
      raise ValueError(f'llama3 RoPE needs high_freq_factor > low_freq_factor, got '
                       f'{self.high_freq_factor} and {self.low_freq_factor}.')


def inverse_frequencies(head_dim: int, theta: float,
                        scaling: Optional[RopeScaling] = None) -> np.ndarray:
  """The [Dh / 2] float32 rotation speeds; a constant of the config, computed with numpy."""
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)
  if scaling is None or scaling.rope_type == 'default':
    return inv_freq
  if scaling.rope_type == 'linear':
    return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
  # llama3: long wavelengths slow down by `factor`, short ones are kept, the band between the
  # two wavelength thresholds is interpolated.
  factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
  old_context = scaling.original_max_position_embeddings
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
  smooth = (old_context / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BxLxHxDh: jax.Array, positions_BxL: jax.Array,
               inv_freq: np.ndarray) -> jax.Array:
  """x rotated by each position's angles: x * cos + rotate_half(x) * sin, in float32, returned in
  x's dtype."""
  angles_BxLxF = positions_BxL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  angles_BxLx1xDh = jnp.concatenate([angles_BxLxF, angles_BxLxF], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles_BxLx1xDh), jnp.sin(angles_BxLx1xDh)
  x = x_BxLxHxDh.astype(jnp.float32)
  first, second = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxLxHxDh.dtype)
