"""The partitioned, prompt-only train step.

Frozen weights enter the step as an ordinary (non-differentiated) argument: gradients are taken
with respect to the trainable tree (the prompt) alone, so XLA drops every weight-gradient matmul
and no gradient or optimizer buffer exists for frozen weights. The state is donated and the step
is compiled once for the run.

A prompt table (`PromptConfig.num_prompts` K > 1) trains K prompts [K, P, D] in one step: each
row's `prompt_ids` entry picks its prompt, so row k's gradient reaches prompt k alone. The ids
are a batch feature like the others (sharded over 'data') and are checked on the host. The
optimizer sees each prompt as its own parameter (`per_prompt`): Adafactor's update clipping, a
global-norm clip or factoring never mix one task's gradient into another's update.

Deep prompts (`PromptConfig.deep`; P-tuning v2 style, not the paper's method) live in the same
trainable subtree (encoder/prompt/deep/prompt [L-1, P, D]), so they train with the input prompt
under the same optimizer; `init_state` takes their initial value, `deep_prompt` reads them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.inference import runner
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5
from prompt_tuning.train import losses
from prompt_tuning.train import partitioning
from prompt_tuning.train import state as state_lib
from prompt_tuning.data.vocab import token_mask

log = logging.getLogger('prompt_tuning')

FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')
PACKED_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                   'decoder_positions')
# Used when present: per-token loss weights; each row's prompt (required for a prompt table).
OPTIONAL_FEATURES = ('decoder_loss_weights', 'prompt_ids')


def _is_abstract(x: Any) -> bool:
  return isinstance(x, jax.ShapeDtypeStruct)


@flax.struct.dataclass
class TrainState:
  """Everything that changes during prompt tuning; kilobytes for a 100-token prompt."""
  # Array leaves in a live state; the same structure also carries their shardings.
  step: Any          # int32 scalar
  params: Any        # the trainable tree: {'encoder': {'prompt': ...}}
  opt_state: Any
  rng: Any           # raw key data (uint32)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """T5X's loss settings."""
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: Optional[float | Literal['NUM_REAL_TARGET_TOKENS']] = None


def check_batch(batch: dict, num_prompts: int = 1) -> None:
  """Clear errors for a batch the step cannot take: packed, a feature missing, or prompt ids
  that are missing (num_prompts > 1), not one per row, or outside [0, num_prompts)."""
  packed = [k for k in PACKED_FEATURES if k in batch]
  if packed:
    raise ValueError(f'Packed examples ({", ".join(packed)}) are not supported with prompts: '
                     'packing would put one prompt in front of several examples. Disable '
                     'packing in the dataset config.')
  missing = [k for k in FEATURES if k not in batch]
  if missing:
    raise ValueError(f'Batch is missing feature(s) {missing}; it has {sorted(batch)}.')
  prompt_lib.check_prompt_ids(batch.get('prompt_ids'), num_prompts,
                              np.shape(batch['encoder_input_tokens'])[0])


def per_prompt(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` run on each prompt of a table [K, P, D] as on a parameter of its own (vmapped
  over K; its state gains a leading K axis), so each prompt's update is what a single-prompt run
  would make of the same gradient."""
  def update(updates, state, params=None):
    return jax.vmap(optimizer.update)(updates, state, params)
  return optax.GradientTransformation(jax.vmap(optimizer.init), update)


def table_optimizer(optimizer: optax.GradientTransformation,
                    shared: bool) -> optax.GradientTransformation:
  """`per_prompt(optimizer)` on the table; a shared prompt [P, D] (if any) gets `optimizer`
  as it is."""
  if not shared:
    return per_prompt(optimizer)
  labels = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, _: 'shared' if any(getattr(k, 'key', None) == 'shared' for k in path)
      else 'table', tree)
  return optax.multi_transform({'table': per_prompt(optimizer), 'shared': optimizer}, labels)


def initial_prompt(prompt_init: Callable[[Any, tuple[int, ...]], Any], rng: Any,
                   shape: tuple[int, ...]) -> np.ndarray:
  """`prompt_init`'s [P, D] prompt; for a table [K, P, D], K of them, prompt k drawn with
  fold_in(rng, k) (K seeds of one ensemble differ; a deterministic initializer gives K equal
  starts)."""
  if len(shape) == 2:
    return np.asarray(prompt_init(rng, shape), np.float32)
  k, rest = shape[0], tuple(shape[1:])
  return np.stack([np.asarray(prompt_init(jax.random.fold_in(rng, i), rest), np.float32)
                   for i in range(k)])


class PromptTrainer:
  """Builds the sharded train/eval steps for one model, prompt, optimizer and mesh. With a
  prompt table (num_prompts > 1) the optimizer runs `per_prompt`."""

  def __init__(self, model_config: t5.T5Config, prompt_config: prompt_lib.PromptConfig,
               frozen_params: dict, optimizer: optax.GradientTransformation, *,
               mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[list] = None,
               loss: LossConfig = LossConfig(), frozen_dtype: Optional[str] = None,
               learning_rate_fn: Optional[Callable[[Any], Any]] = None):
    self.model_config = model_config
    self.prompt_config = prompt_config
    self.model = runner.assemble(model_config, prompt_config)
    self.optimizer = (table_optimizer(optimizer, prompt_config.shared is not None)
                      if prompt_config.is_table else optimizer)
    self._compile(frozen_params, mesh=mesh, rules=rules, loss=loss, frozen_dtype=frozen_dtype,
                  learning_rate_fn=learning_rate_fn)

  def _compile(self, frozen_params: dict, *, mesh: Optional[jax.sharding.Mesh],
               rules: Optional[list], loss: LossConfig, frozen_dtype: Optional[str],
               learning_rate_fn: Optional[Callable[[Any], Any]]) -> None:
    """Shardings of the frozen and trainable trees (`split`), the frozen weights placed on the
    mesh, and the jitted steps: what every trainer shares, whatever it trains."""
    self.loss = loss
    self.learning_rate_fn = learning_rate_fn
    self.mesh = partitioning.make_mesh() if mesh is None else mesh
    self.rules = partitioning.standard_logical_axis_rules() if rules is None else rules
    self.trace_count = 0  # how many times the train step was traced (= compiled)

    frozen_axes, trainable_axes = self.split(self.param_axes())
    self.frozen_shardings = partitioning.logical_to_sharding(frozen_axes, self.mesh, self.rules)
    self.trainable_shardings = partitioning.logical_to_sharding(trainable_axes, self.mesh,
                                                                self.rules)
    partitioning.check_divisible(frozen_params, self.frozen_shardings)
    if frozen_dtype is not None:
      # e.g. bfloat16 halves the frozen weights' memory; they are never updated.
      frozen_params = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape, frozen_dtype) if _is_abstract(x)
          else x.astype(frozen_dtype), frozen_params)
    if all(_is_abstract(x) for x in jax.tree_util.tree_leaves(frozen_params)):
      # Shapes only (planning: lower and compile without allocating the model).
      self.frozen = frozen_params
    else:
      self.frozen = jax.device_put(frozen_params, self.frozen_shardings)

    self.replicated = partitioning.replicated(self.mesh)
    self.batch_sharding = partitioning.batch_sharding(self.mesh)
    self.state_shardings = TrainState(step=self.replicated, params=self.trainable_shardings,
                                      opt_state=self.opt_state_shardings(),
                                      rng=self.replicated)
    self._train_step = jax.jit(self._step, donate_argnums=(0,),
                               in_shardings=(self.state_shardings, self.frozen_shardings,
                                             self.batch_sharding),
                               out_shardings=(self.state_shardings, self.replicated))
    self._eval_step = jax.jit(self._eval, in_shardings=(self.trainable_shardings,
                                                        self.frozen_shardings,
                                                        self.batch_sharding),
                              out_shardings=self.replicated)

  # -- what a trainer trains: the prompt here (train/model_tuning.py: the model's weights) -------

  # The norm of the trained tree after each step, a train metric (the loop checks it is finite).
  NORM_METRIC = 'prompt_norm'

  def param_axes(self) -> dict:
    """Logical axes of the whole parameter tree (frozen and trainable), for the shardings."""
    return t5.logical_axes(self.model_config, self.prompt_config)

  def split(self, tree: dict) -> tuple[dict, dict]:
    """(frozen, trainable) parts of a parameter tree (or of its axes or shardings)."""
    return prompt_lib.split_params(tree)

  def merge(self, frozen: dict, trainable: dict) -> dict:
    """Inverse of `split`."""
    return prompt_lib.merge_params(frozen, trainable)

  def opt_state_shardings(self) -> Any:
    """The optimizer state's sharding: replicated (kilobytes for a prompt)."""
    return self.replicated

  def trained_norm(self, trainable: dict) -> jax.Array:
    return jnp.linalg.norm(prompt_lib.get_prompt(trainable))

  @property
  def num_prompts(self) -> int:
    return self.prompt_config.num_prompts

  def run_info(self, initial_checkpoint: Optional[str] = None,
               prompt_names: Optional[Sequence[str]] = None) -> dict:
    """run_info.json. A table adds num_prompts, the prompts' names (a multi-task run: its
    tasks) and the shared mode; a single prompt's stays as it always was (plus `deep`)."""
    c = self.prompt_config
    info: dict[str, Any] = {'prompt_length': c.length,
                            'd_model': self.model_config.d_model,
                            'placement': c.placement,
                            'deep': c.deep,
                            'initial_checkpoint': initial_checkpoint,
                            'model_config': dataclasses.asdict(self.model_config)}
    if c.is_table:
      info.update(num_prompts=c.num_prompts, prompt_shared=c.shared,
                  prompt_names=list(prompt_names) if prompt_names is not None else
                  [str(k) for k in range(c.num_prompts)])
    return info

  def write_copy(self, model_dir: str, state: TrainState, step: int) -> None:
    """A step's readable copy, written before its commit: the numpy prompt."""
    state_lib.write_prompt_copy(model_dir, state, step, self.prompt_config.shared)

  def prune_copies(self, model_dir: str, kept_steps: set[int]) -> None:
    """After a save: nothing (every step's numpy prompt is kept, as the anchor keeps them)."""

  def start_state(self, prompt_init: Optional[Callable[[Any, tuple[int, ...]], Any]],
                  seed: int = 0) -> TrainState:
    """A new run's state: the prompt (each prompt of a table, the shared prompt) drawn by
    `prompt_init` from `seed`."""
    if prompt_init is None:
      raise ValueError('Prompt tuning needs a prompt initializer (gin PROMPT_INIT).')
    rng = jax.random.PRNGKey(seed)
    shared = None
    if self.prompt_config.shared == 'concat':  # 'add' starts from zeros: shared + task = task
      shared = initial_prompt(prompt_init, jax.random.fold_in(rng, 2), self.prompt_shape[1:])
    return self.init_state(initial_prompt(prompt_init, jax.random.fold_in(rng, 1),
                                          self.prompt_shape), seed=seed, shared_PxD=shared)

  # -- state ------------------------------------------------------------------------------------

  @property
  def prompt_shape(self) -> tuple[int, ...]:
    """(P, D), or (K, P, D) for a table of K prompts."""
    return self.prompt_config.shape(self.model_config.d_model)

  @property
  def deep_shape(self) -> Optional[tuple[int, int, int]]:
    """(L-1, P, D) of the deep prompts, or None without them."""
    if not self.prompt_config.deep:
      return None
    return self.prompt_config.deep_shape(self.model_config.num_encoder_layers,
                                         self.model_config.d_model)

  def init_state(self, prompt_PxD: Any, seed: int = 0, step: int = 0,
                 deep_LxPxD: Any = None, shared_PxD: Any = None) -> TrainState:
    """A fresh state holding `prompt_PxD`: [P, D], or the table [K, P, D] when num_prompts K
    > 1. With deep prompts, `deep_LxPxD` [L-1, P, D] starts them (default: the initial prompt
    repeated for each layer after the first); with a shared prompt (PromptConfig.shared),
    `shared_PxD` (default zeros)."""
    prompt_PxD = np.asarray(prompt_PxD, np.float32)
    if prompt_PxD.shape != self.prompt_shape:
      if self.prompt_config.is_table:
        raise ValueError(f'Initial prompt table has shape {prompt_PxD.shape} but the model '
                         f'expects {self.prompt_shape} (num_prompts, prompt length, d_model).')
      raise ValueError(f'Initial prompt has shape {prompt_PxD.shape} but the model expects '
                       f'{self.prompt_shape} (prompt length, d_model).')
    deep_shape = self.deep_shape
    if deep_shape is None:
      if deep_LxPxD is not None:
        raise ValueError('Initial deep prompts were given but the model has none: set '
                         'PromptConfig.deep = True (gin prompts/deep.gin), or drop them.')
    elif deep_LxPxD is None:
      deep_LxPxD = np.repeat(prompt_PxD[None], deep_shape[0], axis=0)
    else:
      deep_LxPxD = np.asarray(deep_LxPxD, np.float32)
      if deep_LxPxD.shape != deep_shape:
        raise ValueError(f'Initial deep prompts have shape {deep_LxPxD.shape} but the model '
                         f'expects {deep_shape} (encoder layers - 1, prompt length, d_model).')
    params = prompt_lib.prompt_tree(prompt_PxD, deep_LxPxD)
    if self.prompt_config.shared is not None:
      shape = prompt_PxD.shape[1:]
      shared_PxD = np.zeros(shape, np.float32) if shared_PxD is None else np.asarray(
          shared_PxD, np.float32)
      if shared_PxD.shape != shape:
        raise ValueError(f'Initial shared prompt has shape {shared_PxD.shape} but the model '
                         f'expects {shape} (prompt length, d_model).')
      params['encoder']['prompt']['shared'] = {'prompt': shared_PxD}
    state = TrainState(step=np.asarray(step, np.int32), params=params,
                       opt_state=self.optimizer.init(params),
                       rng=jax.random.key_data(jax.random.PRNGKey(seed)))
    return jax.device_put(state, self.state_shardings)

  def abstract_state(self) -> TrainState:
    """Shapes/dtypes/shardings of the state, for restoring a checkpoint without allocating."""
    shapes = jax.eval_shape(lambda: self.init_state(np.zeros(self.prompt_shape, np.float32)))
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
        self._full_state_shardings(shapes))

  def _full_state_shardings(self, shapes: TrainState) -> TrainState:
    opt = self.state_shardings.opt_state
    if isinstance(opt, jax.sharding.Sharding):  # one sharding for the whole state
      opt = jax.tree_util.tree_map(lambda _: opt, shapes.opt_state)
    return TrainState(step=self.replicated, params=self.trainable_shardings, opt_state=opt,
                      rng=self.replicated)

  # -- what callers read: no caller indexes the parameter trees ---------------------------------

  def embedding(self) -> np.ndarray:
    """The frozen token embedding table [V, D] on the host (prompt initializers read it)."""
    return np.asarray(jax.device_get(self.frozen['token_embedder']['embedding']))

  def full_params(self, state: TrainState) -> dict:
    """Frozen weights + the state's trained tree: the tree `self.model.apply` takes."""
    return self.merge(self.frozen, state.params)

  def prompt(self, state: TrainState) -> np.ndarray:
    """The state's prompt [P, D] (or table [K, P, D]) on the host, float32; with a shared
    prompt, each task's effective (combined) prompt [K, P', D]."""
    params = jax.device_get(state.params)
    return np.asarray(prompt_lib.effective_prompts(params, self.prompt_config.shared), np.float32)

  def deep_prompt(self, state: TrainState) -> Optional[np.ndarray]:
    """The state's deep prompts [L-1, P, D] on the host, float32; None without them."""
    deep = prompt_lib.get_deep_prompt(state.params)
    return None if deep is None else np.asarray(jax.device_get(deep), np.float32)

  # -- steps ------------------------------------------------------------------------------------

  def batch_loss(self, trainable, frozen, batch, rng, enable_dropout):
    params = self.merge(frozen, trainable)
    logits = self.model.apply(
        {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
        batch['decoder_target_tokens'], enable_dropout=enable_dropout,
        prompt_ids=batch.get('prompt_ids'), rngs={'dropout': rng})
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', token_mask(targets).astype(jnp.float32))
    return self.token_loss(logits, targets, weights)

  def token_loss(self, logits, targets, weights):
    """(loss, aux) of a step's logits against its targets: the LossConfig's cross entropy, and
    its z-loss, weight sum and correct tokens (the metrics the step reports)."""
    loss, z_loss, weight_sum = losses.cross_entropy_loss(
        logits, targets, weights, z_loss=self.loss.z_loss,
        label_smoothing=self.loss.label_smoothing,
        loss_normalizing_factor=self.loss.loss_normalizing_factor)
    correct, _ = losses.token_accuracy(logits, targets, weights)
    return loss, {'z_loss': z_loss, 'weight_sum': weight_sum, 'correct': correct}

  def _step(self, state: TrainState, frozen, batch):
    self.trace_count += 1  # runs while tracing: once per batch shape
    log.info('Compiling the train step for %s (batch %d; compilation %d).',
             self.describe_shapes(batch), batch['decoder_target_tokens'].shape[0],
             self.trace_count)
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(self.batch_loss, has_aux=True)
    (loss, aux), grads = grad_fn(state.params, frozen, batch, rng,
                                 self.model_config.dropout_rate > 0)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    weight_sum = jnp.maximum(aux['weight_sum'], 1e-8)
    metrics = {
        'loss': loss,
        'loss_per_token': loss / weight_sum,
        'z_loss': aux['z_loss'],
        'accuracy': aux['correct'] / weight_sum,
        self.NORM_METRIC: self.trained_norm(params),
        'grad_norm': jnp.sqrt(sum(jnp.sum(jnp.square(g))
                                  for g in jax.tree_util.tree_leaves(grads))),
    }
    if self.learning_rate_fn is not None:
      metrics['learning_rate'] = jnp.asarray(self.learning_rate_fn(state.step), jnp.float32)
    new_state = dataclasses.replace(state, step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  def describe_shapes(self, batch) -> str:
    """The batch's lengths as the compile log names them."""
    return (f"inputs {batch['encoder_input_tokens'].shape[1]}, "
            f"targets {batch['decoder_target_tokens'].shape[1]}")

  def _eval(self, trainable, frozen, batch):
    loss, aux = self.batch_loss(trainable, frozen, batch, jax.random.PRNGKey(0), False)
    return {'loss': loss, 'weight_sum': aux['weight_sum'], 'correct': aux['correct']}

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    return self._train_step(state, self.frozen, self._global(self._step_features(batch)))

  def eval_step(self, state: TrainState, batch: dict) -> dict:
    return self._eval_step(state.params, self.frozen, self._global(self._step_features(batch)))

  def _step_features(self, batch: dict) -> dict:
    """The checked features a step takes. With one prompt, prompt ids (all 0, as checked) are
    dropped: the single prompt's step stays exactly today's."""
    check_batch(batch, self.num_prompts)
    dropped = () if self.num_prompts > 1 else ('prompt_ids',)
    return {k: batch[k] for k in FEATURES + OPTIONAL_FEATURES if k in batch and k not in dropped}

  def _global(self, batch):
    if all(isinstance(v, jax.Array) for v in batch.values()):
      return batch
    return partitioning.global_batch(batch, self.mesh)

  # -- introspection ----------------------------------------------------------------------------

  def lower_train_step(self, batch_shapes: Mapping[str, Sequence[int]]):
    """Lowers the step for shapes alone (no data, no state allocation): for cost/memory plans.

    Works with abstract frozen params (jax.ShapeDtypeStruct leaves), so an XXL step can be
    planned on a machine that could never hold the model.
    """
    batch = {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=self.batch_sharding)
             for k, s in batch_shapes.items()}
    frozen = jax.tree_util.tree_map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), self.frozen,
        self.frozen_shardings)
    return self._train_step.lower(self.abstract_state(), frozen, batch)
