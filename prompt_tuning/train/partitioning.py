"""Device mesh ('data', 'model'), T5X's logical-axis rules, and shardings built from them."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'model')
LogicalRules = Sequence[tuple[str, Optional[str]]]

# Prompt axes stay replicated so every host holds the whole prompt (and can save it as .npy);
# 'prompts' is the K axis of a prompt table [K, P, D], replicated for the same reason (K prompts
# of P x D floats are small beside the frozen model), and so is 'prompt_layers', the L-1 axis of
# deep prompts [L-1, P, D].
PROMPT_RULES = (('prompts', None), ('prompt_layers', None), ('prompt', None),
                ('prompt_embed', None))


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1,
                                additional_rules: LogicalRules = PROMPT_RULES) -> list:
  """T5X's default rules (1-D or 2-D partitioning) plus the prompt's."""
  if (activation_partitioning_dims, parameter_partitioning_dims) == (1, 1):
    rules = [('batch', 'data'), ('vocab', 'model'), ('embed', None), ('mlp', 'model'),
             ('heads', 'model'), ('kv', None), ('joined_kv', 'model')]
  elif (activation_partitioning_dims, parameter_partitioning_dims) == (2, 1):
    rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
             ('kv', None), ('joined_kv', 'model'), ('embed', 'model')]
  elif (activation_partitioning_dims, parameter_partitioning_dims) == (1, 2):
    rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
             ('kv', None), ('joined_kv', 'model'), ('embed', 'data')]
  elif (activation_partitioning_dims, parameter_partitioning_dims) == (2, 2):
    rules = [('batch', 'data'), ('vocab', 'model'), ('mlp', 'model'), ('heads', 'model'),
             ('kv', None), ('joined_kv', 'model'), ('embed', 'model'), ('embed', 'data')]
  else:
    raise ValueError('activation/parameter partitioning dims must each be 1 or 2, got '
                     f'{activation_partitioning_dims}/{parameter_partitioning_dims}.')
  rules += [('relpos_buckets', None), ('abspos_buckets', None), ('length', None),
            ('layers', None), ('stack', None), ('mlp_activations', None)]
  return rules + list(additional_rules)


def make_mesh(mesh_shape: Optional[Sequence[int]] = None,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ('data', 'model') mesh; by default every device is on 'data'.

  `mesh_shape` may use -1 for one axis, e.g. (-1, 2) for 2-way model parallelism.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  shape = [n, 1] if mesh_shape is None else list(mesh_shape)
  if len(shape) != 2:
    raise ValueError(f'MESH_SHAPE must have 2 entries (data, model), got {tuple(shape)}.')
  if shape.count(-1) == 1:
    known = int(np.prod([s for s in shape if s != -1]))
    shape[shape.index(-1)] = n // known if known and n % known == 0 else 0
  if int(np.prod(shape)) != n or min(shape) < 1:
    asked = tuple(shape if mesh_shape is None else mesh_shape)
    raise ValueError(f'MESH_SHAPE {asked} does not cover the {n} available '
                     f'device(s); data x model must equal {n}.')
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Tree of logical PartitionSpecs -> tree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def check_divisible(shapes: Any, shardings: Any) -> None:
  """Clear error when a parameter dimension does not split evenly over its mesh axis."""
  flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
  flat_shardings = jax.tree_util.tree_leaves(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, shape), sharding in zip(flat_shapes, flat_shardings):
    for dim, axis in zip(shape.shape, sharding.spec):
      if axis is None:
        continue
      size = int(np.prod([sharding.mesh.shape[a] for a in
                          (axis if isinstance(axis, tuple) else (axis,))]))
      if dim % size:
        name = '/'.join(str(getattr(k, 'key', k)) for k in path)
        raise ValueError(f'Parameter {name} of shape {tuple(shape.shape)} cannot be split '
                         f'{size} ways over mesh axis {axis!r}; choose a mesh_shape whose '
                         f"'{axis}' size divides {dim}.")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension over 'data'; replicated over 'model'."""
  return NamedSharding(mesh, PartitionSpec('data'))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded over 'data' (multi-host aware)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def process0_flag(flag: bool) -> bool:
  """Process 0's answer on every process (hosts must take the same branches, e.g. which
  evaluations to rerun)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def process_max(values: dict[str, int]) -> dict[str, int]:
  """Each value's maximum over all processes (e.g. the longest row of a step's batch, so every
  host pads to the same shape)."""
  if jax.process_count() == 1:
    return dict(values)
  from jax.experimental import multihost_utils
  keys = sorted(values)
  gathered = multihost_utils.process_allgather(np.asarray([values[k] for k in keys], np.int64))
  return {k: int(v) for k, v in zip(keys, np.asarray(gathered).reshape(-1, len(keys)).max(0))}
