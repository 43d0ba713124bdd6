"""Prompt-only training of decoder-only causal LMs (models/decoder_only.py): `DecoderPromptTrainer`
runs PromptTrainer's jitted, sharded, donated step, its loop, orbax checkpoints and MODEL_DIR, with
the decoder-only model, batch features and loss in place of T5's.

Batch features: SeqIO's DecoderFeatureConverter(pack=False) for a prefix LM (inputs then
targets), the form the anchor feeds its decoder-only models:
  decoder_target_tokens [B, L]  inputs then targets, right padded (0)  the sequence itself
  decoder_loss_weights  [B, L]  1 on target positions, 0 elsewhere    required
  decoder_input_tokens  [B, L]  decoder_target_tokens shifted right   optional, checked, unused
  decoder_causal_attention      the prefix mask                       optional, unused
  prompt_ids            [B]     each row's prompt (a table)           required when K > 1
The model reads `decoder_target_tokens` as it is (a Hugging Face model's token stream: BOS first,
no extra start token) minus its last column, and its logits at t are scored against
decoder_target_tokens[t + 1] with decoder_loss_weights[t + 1]: exactly SeqIO's "logits at t
predict decoder_target_tokens[t]" with the leading start token 0 dropped, and exactly transformers'
shifted labels (PEFT's CAUSAL_LM prompt tuning). The first token is never predicted, so a loss
weight on column 0 is refused. The prefix sees only causal attention (HF models have no
bidirectional prefix), which is why decoder_causal_attention is ignored.

`target_length` T (train_causal_lm passes the task's targets feature length): every row's loss
weights lie within T consecutive positions (data/causal_lm.py's targets + EOS), so the step
computes the logits of those T positions only (`DecoderOnly(..., logits_at_BxT)`), not of all L:
the [D, V] head is the largest single matmul per position, and the loss is unchanged. A batch
whose weights span more than T positions is refused on the host.

The trainable tree is the prompt alone, at the same path as T5's (`encoder/prompt/prompt/prompt`,
[P, D] or a table [K, P, D]): the path is the name MODEL_DIR's numpy prompt files, exports and
readers use, so they work unchanged; the decoder-only model has no encoder and takes the prompt
as an argument. Placements: 'prefix' (before BOS, as PEFT) and 'after_bos' (after the first
token, as the anchor). T5's other prompt forms train here too, at T5's paths:
  a table [K, P, D]      each row's `prompt_ids` picks its prompt (a task of a mixture)
  shared + task          encoder/prompt/shared/prompt [P, D], 'add' or 'concat' with each task's
                         (`effective_prompts` is what the model sees, and what files hold)
  deep                   encoder/prompt/deep/prompt [L-1, P, D] (P-tuning v2 style, not the
                         paper's method): layer i >= 1 sees deep[i-1] at the prompt's positions
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from prompt_tuning.models import decoder_only
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models.decoder_config import DecoderConfig
from prompt_tuning.train.trainer import (PACKED_FEATURES, LossConfig, PromptTrainer,
                                         table_optimizer)

FEATURES = ('decoder_target_tokens', 'decoder_loss_weights')
# Accepted as SeqIO emits them: the shifted copy (checked, then dropped), the prefix mask (dropped).
IGNORED_FEATURES = ('decoder_input_tokens', 'decoder_causal_attention')
ARCHITECTURE = 'decoder_only'  # run_info.json's "architecture"


def check_batch(batch: dict, num_prompts: int = 1, target_length: Optional[int] = None) -> None:
  """Clear errors for a batch the decoder-only step cannot take (the module docstring's
  convention): packed, a feature missing, a loss weight on the first token, loss weights that
  span more than `target_length` positions in a row, decoder_input_tokens that are not the
  targets shifted right, bad prompt ids."""
  packed = [k for k in PACKED_FEATURES if k in batch]
  if packed:
    raise ValueError(f'Packed examples ({", ".join(packed)}) are not supported with prompts: '
                     'disable packing in the dataset config.')
  missing = [k for k in FEATURES if k not in batch]
  if missing:
    raise ValueError(f'Batch is missing feature(s) {missing}; it has {sorted(batch)}.')
  targets_BxL = batch['decoder_target_tokens']
  weights_BxL = prompt_lib.host_values(batch['decoder_loss_weights'])
  if weights_BxL is not None and np.ndim(weights_BxL) == 2 and np.any(weights_BxL[:, 0] != 0):
    raise ValueError('decoder_loss_weights weighs the first token, which a causal LM never '
                     'predicts: begin each row with BOS or an input token.')
  if target_length is not None and weights_BxL is not None and np.ndim(weights_BxL) == 2:
    span_B = target_span(np.asarray(weights_BxL))
    if span_B.max(initial=0) > target_length:
      row = int(np.argmax(span_B))
      raise ValueError(f'decoder_loss_weights of row {row} span {span_B[row]} positions, more '
                       f'than the trainer\'s target_length {target_length} (the targets feature '
                       f'length): raise it, or pass None to score every position.')
  inputs = batch.get('decoder_input_tokens')
  if inputs is not None and not isinstance(inputs, jax.Array) and not isinstance(
      targets_BxL, jax.Array):
    if not np.array_equal(np.asarray(inputs)[:, 1:], np.asarray(targets_BxL)[:, :-1]):
      raise ValueError('decoder_input_tokens are not decoder_target_tokens shifted right (SeqIO '
                       "DecoderFeatureConverter's convention); the step reads the targets.")
  prompt_lib.check_prompt_ids(batch.get('prompt_ids'), num_prompts, np.shape(targets_BxL)[0])


def next_token_targets(batch: dict) -> tuple[Any, Any, Any]:
  """(tokens fed [B, L-1], targets [B, L-1], float32 loss weights [B, L-1]) of a batch: the
  model reads decoder_target_tokens minus its last column (it predicts nothing scored), and its
  logits at t are scored against token t + 1 with that token's loss weight."""
  tokens_BxL = batch['decoder_target_tokens']
  return (tokens_BxL[:, :-1], tokens_BxL[:, 1:],
          batch['decoder_loss_weights'][:, 1:].astype(jnp.float32))


def target_span(weights_BxL: np.ndarray) -> np.ndarray:
  """Each row's positions from its first to its last nonzero loss weight ([B]; 0 if none)."""
  on_BxL = weights_BxL != 0
  first_B = np.argmax(on_BxL, axis=1)
  last_B = on_BxL.shape[1] - np.argmax(on_BxL[:, ::-1], axis=1)
  return np.where(on_BxL.any(axis=1), last_B - first_B, 0)


def target_window(weights_BxL: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
  """(positions [B, T], inside [B, T]): T = `length` positions from each row's first nonzero
  weight, clipped to the row's end; `inside` is False where clipping repeated a position (its
  weight must count 0)."""
  width = weights_BxL.shape[1]
  start_Bx1 = jnp.argmax(weights_BxL != 0, axis=1)[:, None]
  positions_BxT = start_Bx1 + jnp.arange(length)[None, :]
  return jnp.minimum(positions_BxT, width - 1), positions_BxT < width


class DecoderPromptTrainer(PromptTrainer):
  """Prompt tuning of a frozen decoder-only model; PromptTrainer's step, loop and MODEL_DIR."""

  def __init__(self, model_config: DecoderConfig, prompt_config: prompt_lib.PromptConfig,
               frozen_params: dict, optimizer: optax.GradientTransformation, *,
               mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[list] = None,
               loss: LossConfig = LossConfig(), frozen_dtype: Optional[str] = None,
               learning_rate_fn: Optional[Callable[[Any], Any]] = None,
               target_length: Optional[int] = None):
    c = prompt_config
    if target_length is not None and target_length < 1:
      raise ValueError(f'target_length {target_length}: give the targets feature length (>= 1), '
                       f'or None to score every position.')
    self.target_length = target_length
    if c.placement not in decoder_only.PLACEMENTS:
      raise ValueError(f'Prompt placement {c.placement!r} is not one a decoder-only model takes; '
                       f'choose one of {", ".join(decoder_only.PLACEMENTS)}.')
    if c.shared is not None and not c.is_table:
      raise ValueError(f'PromptConfig.shared = {c.shared!r} combines a shared prompt with each '
                       f'prompt of a table: it needs num_prompts >= 2 (PROMPT_PER_TASK).')
    if c.deep and model_config.num_layers < 2:
      raise ValueError(f'Deep prompts (PromptConfig.deep) need at least 2 layers (one per layer '
                       f'after the first); this model has {model_config.num_layers}.')
    self.model_config = model_config  # type: ignore[assignment]  # DecoderConfig, not T5Config
    self.prompt_config = prompt_config
    placement = cast(decoder_only.Placement, c.placement)  # checked above
    self.model = decoder_only.DecoderOnly(model_config, placement)  # type: ignore[assignment]
    self.optimizer = table_optimizer(optimizer, c.shared is not None) if c.is_table else optimizer
    self._compile(frozen_params, mesh=mesh, rules=rules, loss=loss, frozen_dtype=frozen_dtype,
                  learning_rate_fn=learning_rate_fn)

  # -- what it trains: the prompt, beside (not inside) the model's tree -------------------------

  def param_axes(self) -> dict:
    c = self.prompt_config
    axes = prompt_lib.TABLE_AXES if c.is_table else prompt_lib.PROMPT_AXES
    tree = prompt_lib.prompt_tree(PartitionSpec(*axes),
                                  PartitionSpec(*prompt_lib.DEEP_AXES) if c.deep else None)
    if c.shared is not None:
      tree['encoder']['prompt']['shared'] = {'prompt': PartitionSpec(*prompt_lib.PROMPT_AXES)}
    return {**decoder_only.logical_axes(self.model_config),  # type: ignore[arg-type]
            **tree}

  @property
  def deep_shape(self) -> Optional[tuple[int, int, int]]:
    """(layers - 1, P, D) of the deep prompts, or None without them."""
    c, m = self.prompt_config, self.model_config
    return (m.num_layers - 1, c.length, m.d_model) if c.deep else None  # type: ignore[attr-defined]

  def split(self, tree: dict) -> tuple[dict, dict]:
    frozen = {k: v for k, v in tree.items() if k != 'encoder'}
    return frozen, ({'encoder': tree['encoder']} if 'encoder' in tree else {})

  def merge(self, frozen: dict, trainable: dict) -> dict:
    return {**frozen, **trainable}

  def run_info(self, initial_checkpoint: Optional[str] = None,
               prompt_names: Optional[Sequence[str]] = None) -> dict:
    """PromptTrainer's, with "architecture": "decoder_only" (its model_config: the
    DecoderConfig)."""
    return {**super().run_info(initial_checkpoint, prompt_names), 'architecture': ARCHITECTURE}

  # -- steps ------------------------------------------------------------------------------------

  def batch_loss(self, trainable, frozen, batch, rng, enable_dropout):
    prompt = prompt_lib.effective_prompts(trainable, self.prompt_config.shared)
    if self.prompt_config.is_table:
      prompt = prompt_lib.select_prompts(prompt, batch['prompt_ids'])  # [B, P', D]
    fed_BxLm1, targets_BxLm1, weights_BxLm1 = next_token_targets(batch)
    at_BxT = None
    if self.target_length is not None and self.target_length < targets_BxLm1.shape[1]:
      at_BxT, inside_BxT = target_window(weights_BxLm1, self.target_length)
      targets_BxLm1 = jnp.take_along_axis(targets_BxLm1, at_BxT, axis=1)
      weights_BxLm1 = jnp.take_along_axis(weights_BxLm1, at_BxT, axis=1) * inside_BxT
    logits = self.model.apply({'params': frozen}, fed_BxLm1, prompt,
                              enable_dropout=enable_dropout,
                              deep=prompt_lib.get_deep_prompt(trainable), logits_at_BxT=at_BxT,
                              rngs={'dropout': rng})
    return self.token_loss(logits, targets_BxLm1, weights_BxLm1)

  def describe_shapes(self, batch) -> str:
    return f"sequences {batch['decoder_target_tokens'].shape[1]}"

  def _step_features(self, batch: dict) -> dict:
    check_batch(batch, self.num_prompts, self.target_length)
    keep = FEATURES + (('prompt_ids',) if self.num_prompts > 1 else ())
    return {k: batch[k] for k in keep if k in batch}
