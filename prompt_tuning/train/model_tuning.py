"""Model tuning, the paper's baseline: the same partitioned step trains the model's weights
(TRAINABLE = 'all', or one named subtree such as 'decoder' or 'encoder/layers_0') instead of a
prompt, with no prompt in the model.

Everything else is prompt tuning's: the loop, data, evaluation, MODEL_DIR contract (orbax state
committed after the step's readable copy, which is here the whole model in T5X's format at
MODEL_DIR/checkpoint_<step>), resume, mesh. Trained weights are float32 and sharded by the
logical axis rules; so is the optimizer state (a factored Adafactor row/column statistic takes
its parameter's sharding without the factored dimension).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning import checkpoints, storage
from prompt_tuning.inference import runner
from prompt_tuning.models import t5
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import partitioning
from prompt_tuning.train.model_dir import ModelDirError
from prompt_tuning.train.trainer import LossConfig, PromptTrainer, TrainState

ALL = 'all'


def _path(trainable: str) -> list[str]:
  return [] if trainable == ALL else [k for k in trainable.split('/') if k]


def split_subtree(tree: dict, trainable: str) -> tuple[dict, dict]:
  """(frozen, trainable): the subtree at `trainable` ('all': the whole tree) taken out of `tree`,
  both nested as in `tree`."""
  path = _path(trainable)
  if not path:
    return {}, tree
  frozen: dict = dict(tree)
  node, taken = frozen, None
  for i, key in enumerate(path):
    if not isinstance(node, dict) or key not in node:
      raise KeyError('/'.join(path[:i + 1]))
    if i == len(path) - 1:
      taken = node.pop(key)
    else:
      node[key] = dict(node[key])
      node = node[key]
  trainable_tree: Any = taken
  for key in reversed(path):
    trainable_tree = {key: trainable_tree}
  return frozen, trainable_tree


def merge_trees(a: dict, b: dict) -> dict:
  """`a` with `b`'s entries put in (nested dicts merged): the inverse of `split_subtree`."""
  out = dict(a)
  for key, value in b.items():
    out[key] = (merge_trees(out[key], value) if isinstance(value, dict)
                and isinstance(out.get(key), dict) else value)
  return out


def check_trainable(trainable: Any, params: dict) -> None:
  """TRAINABLE names 'all' or a subtree of the model's parameters (one line otherwise)."""
  if not isinstance(trainable, str) or not trainable.strip('/'):
    raise ValueError(f"TRAINABLE = {trainable!r}: choose 'prompt' (prompt tuning), 'all' (model "
                     f"tuning) or a parameter subtree such as 'decoder'.")
  try:
    split_subtree(params, trainable)
  except KeyError as e:
    raise ValueError(f"TRAINABLE = {trainable!r}: the model has no parameter subtree "
                     f"{e.args[0]!r}; its top-level subtrees are {sorted(params)} (or 'all')."
                     ) from None


def opt_state_shardings(opt_shapes: Any, params: Any, param_shardings: Any,
                        replicated: NamedSharding) -> Any:
  """A sharding for each optimizer-state leaf: its parameter's where the shapes agree, the
  parameter's without the missing dimension for a factored statistic, replicated otherwise
  (counts, unfactored placeholders)."""
  by_name = {}
  for (path, shape), sharding in zip(jax.tree_util.tree_leaves_with_path(params),
                                     jax.tree_util.tree_leaves(param_shardings)):
    by_name['/'.join(str(k.key) for k in path)] = (tuple(shape.shape), sharding)

  def pick(path, leaf):
    name = '/'.join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
    if name not in by_name:
      return replicated
    shape, sharding = by_name[name]
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    if tuple(leaf.shape) == shape:
      return sharding
    if len(leaf.shape) == len(shape) - 1:
      for d in range(len(shape)):
        if shape[:d] + shape[d + 1:] == tuple(leaf.shape):
          return NamedSharding(sharding.mesh, PartitionSpec(*(spec[:d] + spec[d + 1:])))
    return replicated
  return jax.tree_util.tree_map_with_path(pick, opt_shapes)


class ModelTrainer(PromptTrainer):
  """Trains the model's weights (`trainable`: 'all' or a subtree); the same step, loop and
  MODEL_DIR as PromptTrainer, with no prompt."""

  NORM_METRIC = 'param_norm'

  def __init__(self, model_config: t5.T5Config, params: dict,
               optimizer: optax.GradientTransformation, *, trainable: str = ALL,
               mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[list] = None,
               loss: LossConfig = LossConfig(), frozen_dtype: Optional[str] = None,
               learning_rate_fn: Optional[Callable[[Any], Any]] = None):
    check_trainable(trainable, params)
    self.model_config = model_config
    self.prompt_config = None  # type: ignore[assignment]  # no prompt in model tuning
    self.trainable = trainable
    self.model = runner.assemble(model_config, None)
    self.optimizer = optimizer
    frozen, initial = self.split(params)
    # Trained weights are float32 whatever the checkpoint stores (updates below bfloat16's
    # resolution would vanish).
    self.initial = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), initial)
    self._compile(frozen, mesh=mesh, rules=rules, loss=loss, frozen_dtype=frozen_dtype,
                  learning_rate_fn=learning_rate_fn)

  # -- what it trains ---------------------------------------------------------------------------

  def split(self, tree: dict) -> tuple[dict, dict]:
    return split_subtree(tree, self.trainable)

  def merge(self, frozen: dict, trainable: dict) -> dict:
    return merge_trees(frozen, trainable)

  def opt_state_shardings(self) -> Any:
    params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32),
                                    self.initial)
    # (Called while compiling, before anything is placed: an indivisible weight is named here.)
    partitioning.check_divisible(params, self.trainable_shardings)
    return opt_state_shardings(jax.eval_shape(self.optimizer.init, params), params,
                               self.trainable_shardings, self.replicated)

  def trained_norm(self, trainable: dict) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                        for x in jax.tree_util.tree_leaves(trainable)))

  @property
  def num_prompts(self) -> int:
    return 1

  # -- state ------------------------------------------------------------------------------------

  def init_state(self, seed: int = 0, step: int = 0) -> TrainState:  # type: ignore[override]
    """A fresh state: the base checkpoint's weights and a new optimizer state, on the mesh."""
    params = jax.device_put(self.initial, self.trainable_shardings)
    opt_state = jax.jit(self.optimizer.init,
                        out_shardings=self.state_shardings.opt_state)(params)
    state = TrainState(step=np.asarray(step, np.int32), params=params, opt_state=opt_state,
                       rng=jax.random.key_data(jax.random.PRNGKey(seed)))
    return jax.device_put(state, self.state_shardings)

  def start_state(self, prompt_init: Any = None, seed: int = 0) -> TrainState:
    return self.init_state(seed)

  def abstract_state(self) -> TrainState:
    shapes = jax.eval_shape(lambda: TrainState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree_util.tree_map(jnp.asarray, self.initial),
        opt_state=self.optimizer.init(jax.tree_util.tree_map(jnp.asarray, self.initial)),
        rng=jax.random.key_data(jax.random.PRNGKey(0))))
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
        self._full_state_shardings(shapes))

  def prompt(self, state: TrainState) -> np.ndarray:
    raise AttributeError('model tuning has no prompt')

  def deep_prompt(self, state: TrainState) -> None:
    return None

  def run_info(self, initial_checkpoint: Optional[str] = None,
               prompt_names: Optional[Sequence[str]] = None) -> dict:
    return {'tuning': model_dir_lib.MODEL_TUNING, 'trainable': self.trainable,
            'd_model': self.model_config.d_model, 'initial_checkpoint': initial_checkpoint,
            'model_config': dataclasses.asdict(self.model_config)}

  def host_params(self, state: TrainState) -> dict:
    """The whole model (frozen + trained) on the host, float32 where trained. Every process
    calls it (a weight sharded over hosts is gathered)."""
    trained = state.params
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      trained = multihost_utils.process_allgather(trained, tiled=True)
      frozen = multihost_utils.process_allgather(self.frozen, tiled=True)
    else:
      frozen = self.frozen
    return self.merge(jax.device_get(frozen), jax.device_get(trained))

  def write_copy(self, model_dir: str, state: TrainState, step: int) -> None:
    """The step's whole model as a T5X checkpoint at MODEL_DIR/checkpoint_<step> (written by
    process 0; `overwrite`: a step a kill cut short before its commit is written again)."""
    params = self.host_params(state)
    if jax.process_index() == 0:
      checkpoints.save_t5x(storage.absolute(model_dir), params, step, overwrite=True)

  def prune_copies(self, model_dir: str, kept_steps: set[int]) -> None:
    """After a save: the T5X checkpoints of steps orbax no longer keeps are removed."""
    model_dir_lib.prune_model_checkpoints(model_dir, kept_steps)


def model_checkpoint_steps(model_dir: str) -> list[int]:
  """Steps with a whole T5X checkpoint (its `checkpoint` file is written last), committed or
  not."""
  return storage.checkpoint_steps(model_dir, model_dir_lib.T5X_CHECKPOINT_FILE)


def model_checkpoint(model_dir: str, step: Optional[int] = None) -> tuple[str, int]:
  """(the T5X checkpoint of `step` or of the latest committed step, that step): only a committed
  step's, never one a kill cut short."""
  if not storage.isdir(model_dir):
    raise ModelDirError(f'MODEL_DIR {model_dir}: no such directory.')
  committed = model_dir_lib.committed_steps(model_dir)
  available = [s for s in model_checkpoint_steps(model_dir) if s in committed]
  if not available:
    raise ModelDirError(f'{model_dir}: no committed model checkpoint (checkpoint_<step>/); '
                        f'nothing to read. Train into it first.')
  step = committed[-1] if step is None else step
  if step not in available:
    raise ModelDirError(f'{model_dir}: no model checkpoint for step {step}; available: '
                        f'{available}.')
  return model_dir_lib.model_checkpoint_path(model_dir, step), step
