"""CausalPromptedModel: a frozen decoder-only model (models/decoder_only.py) with a prompt or a
table of named prompts, run over rows of tokens: runner.PromptedModel's counterpart, with the
same methods, for eval, infer and the server.

A decoder-only row is [BOS]? + input ids, right padded; its length travels with it (`lengths_B`),
since id 0 may be a real token (GPT-2's '!'). Without lengths, a row ends at its last non-zero id.
Candidates for rank classification are label ids + EOS (data/causal_lm.label_candidates), with
their lengths likewise. `generate_rows` / `score_rows` take any number of rows (lists of ids):
sorted by length, batched by data/causal_lm.eval_batches (each batch at its bucket, `batch_size`
rows), results in the rows' order; with `members` M (an ensemble: the table's first M prompts)
each batch runs once per member in one call.

Where a decoder-only run's pieces are: its MODEL_DIR's run_info.json has "architecture":
"decoder_only", the base checkpoint (an HF folder: config.json, safetensors, tokenizer.json) at
"initial_checkpoint", and the prompt's "placement".
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.data import batching
from prompt_tuning.data import causal_lm as data
from prompt_tuning.inference import causal_lm
from prompt_tuning.inference import decoding as decoding_lib
from prompt_tuning.inference.runner import cast_frozen, run_prompts
from prompt_tuning.models.decoder_config import DecoderConfig
from prompt_tuning.models.decoder_only import DecoderOnly, Placement
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import preemption
from prompt_tuning.train.decoder_trainer import ARCHITECTURE


def is_decoder_only_run(model_dir: Optional[str]) -> bool:
  """Whether MODEL_DIR was written by a decoder-only run (run_info.json says so)."""
  info = model_dir_lib.read_run_info(model_dir) if model_dir else None
  return bool(info) and info.get('architecture') == ARCHITECTURE  # type: ignore[union-attr]


def run_settings(model_dir: str) -> tuple[Optional[str], Placement]:
  """(base checkpoint folder, prompt placement) a decoder-only MODEL_DIR was trained with."""
  info = model_dir_lib.read_run_info(model_dir) or {}
  return info.get('initial_checkpoint'), info.get('placement', 'prefix')


def load_frozen(checkpoint_dir: str, frozen_dtype: Optional[str] = None
                ) -> tuple[DecoderConfig, Any]:
  """(config, frozen params) of an HF decoder-only folder, cast as runner.load_frozen casts."""
  from prompt_tuning.checkpoints import hf_decoder
  config, frozen = hf_decoder.load(checkpoint_dir)
  return config, cast_frozen(frozen, frozen_dtype)


def _lengths(tokens_BxL: np.ndarray, lengths_B: Optional[np.ndarray]) -> np.ndarray:
  if lengths_B is not None:
    return np.asarray(lengths_B, np.int32)
  return batching.row_lengths(np.asarray(tokens_BxL)).astype(np.int32)


class CausalPromptedModel:
  """A frozen decoder-only model with one prompt [P, D] or a table of K named prompts
  [K, P, D] (`names` in table order); without a prompt (None), the model alone. `deep`: a deep
  run's per-layer prompts [L-1, P, D], with its one prompt."""

  def __init__(self, config: DecoderConfig, frozen: Mapping, prompts: Any, *,
               placement: Placement = 'prefix', names: Optional[Sequence[str]] = None,
               deep: Any = None):
    shape = np.shape(prompts) if prompts is not None else None
    if shape is not None and (len(shape) not in (2, 3) or shape[-1] != config.d_model):
      raise ValueError(f'the prompts have shape {shape}; the model takes [P, {config.d_model}] '
                       f'or [K, P, {config.d_model}] (its d_model is {config.d_model}).')
    self.config, self.params, self.prompts, self.deep = config, dict(frozen), prompts, deep
    self.module = DecoderOnly(config, placement)
    self.names = list(names) if names is not None else None

  @classmethod
  def from_run(cls, checkpoint_dir: Optional[str] = None, *, model_dir: Optional[str] = None,
               prompt_file: Optional[str] = None, step: Optional[int] = None,
               task: Optional[str] = None, placement: Optional[Placement] = None,
               frozen_dtype: Optional[str] = None
               ) -> tuple['CausalPromptedModel', int, Optional[dict[str, int]]]:
    """(model, step, {task: prompt id} or None), as PromptedModel.from_run: the base folder and
    placement default to the MODEL_DIR's own."""
    run_checkpoint, run_placement = run_settings(model_dir) if model_dir else (None, 'prefix')
    checkpoint_dir = checkpoint_dir or run_checkpoint
    if not checkpoint_dir:
      raise ValueError('No decoder-only checkpoint: set INITIAL_CHECKPOINT_PATH to its HF folder.')
    config, frozen = load_frozen(checkpoint_dir, frozen_dtype)
    value, step, names, ids, deep = run_prompts(model_dir, prompt_file, step, task,
                                                config.d_model)
    model = cls(config, frozen, value, placement=placement or run_placement, names=names,
                deep=deep)
    return model, step, ids

  @classmethod
  def with_library(cls, config: DecoderConfig, frozen: Mapping,
                   library: Mapping[str, library_lib.LibraryPrompt], *,
                   placement: Placement = 'prefix',
                   names: Optional[Sequence[str]] = None) -> 'CausalPromptedModel':
    """A prompt library's prompts `names` (default: all) as one table (or one prompt)."""
    names, table_KxPxD = library_lib.table(library, names)
    return cls(config, frozen, table_KxPxD if len(names) > 1 else table_KxPxD[0],
               placement=placement, names=names)

  @classmethod
  def from_library(cls, checkpoint_dir: str, spec: library_lib.Spec, *,
                   placement: Placement = 'prefix', names: Optional[Sequence[str]] = None,
                   frozen_dtype: Optional[str] = None) -> 'CausalPromptedModel':
    config, frozen = load_frozen(checkpoint_dir, frozen_dtype)
    library = library_lib.load_library(spec, config.d_model)
    return cls.with_library(config, frozen, library, placement=placement, names=names)

  @classmethod
  def of(cls, module: DecoderOnly, params: Mapping, prompts: Any,
         names: Optional[Sequence[str]] = None, deep: Any = None) -> 'CausalPromptedModel':
    """A model built elsewhere (a training run's module, frozen params and prompt)."""
    self = cls.__new__(cls)
    self.config, self.module, self.params = module.config, module, dict(params)
    self.prompts, self.deep = prompts, deep
    self.names = list(names) if names is not None else None
    return self

  @property
  def is_table(self) -> bool:
    return self.prompts is not None and np.ndim(self.prompts) == 3

  def prompt_ids(self, names: Sequence[str]) -> np.ndarray:
    """The table row of each name."""
    index = {n: k for k, n in enumerate(self.names or [])}
    unknown = [n for n in names if n not in index]
    if unknown:
      raise library_lib.LibraryError(f'no prompt named {unknown[0]!r} in the library; it has '
                                     f'{sorted(index)}.')
    return np.array([index[n] for n in names], np.int32)

  def rows_prompt(self, prompt_ids_B: Optional[np.ndarray]) -> Any:
    """The batch's prompt argument: the one prompt [P, D], or each row's [B, P, D] of a table
    (row b asks prompt_ids_B[b]; none given: prompt 0)."""
    if not self.is_table:
      return self.prompts
    import jax.numpy as jnp
    ids = np.zeros((1,), np.int32) if prompt_ids_B is None else np.asarray(prompt_ids_B)
    if ids.size and (ids.min() < 0 or ids.max() >= np.shape(self.prompts)[0]):
      raise ValueError(f'prompt ids {sorted(set(ids.tolist()))} outside the table of '
                       f'{np.shape(self.prompts)[0]} prompts.')
    return jnp.take(jnp.asarray(self.prompts), jnp.asarray(ids, jnp.int32), axis=0)

  # One batch.
  def generate(self, tokens_BxL: np.ndarray, decoding: decoding_lib.DecodingConfig,
               max_length: int, prompt_ids_B: Optional[np.ndarray] = None,
               lengths_B: Optional[np.ndarray] = None) -> np.ndarray:
    """Generated ids [B, max_length] (cut at EOS by the caller)."""
    import jax
    steps = decoding.max_decode_length or max_length
    return np.asarray(jax.block_until_ready(causal_lm.generate(
        self.module, self.params, np.asarray(tokens_BxL, np.int32),
        _lengths(tokens_BxL, lengths_B), steps, decoding, self.rows_prompt(prompt_ids_B),
        deep=self.deep)))

  def score(self, tokens_BxL: np.ndarray, candidates_CxT: np.ndarray,
            prompt_ids_B: Optional[np.ndarray] = None, lengths_B: Optional[np.ndarray] = None,
            candidate_lengths_C: Optional[np.ndarray] = None) -> np.ndarray:
    """Log-likelihood [B, C] of each candidate continuation (ids + EOS) of each row."""
    import jax
    return np.asarray(jax.block_until_ready(causal_lm.score_candidates(
        self.module, self.params, np.asarray(tokens_BxL, np.int32),
        _lengths(tokens_BxL, lengths_B), np.asarray(candidates_CxT, np.int32),
        _lengths(candidates_CxT, candidate_lengths_C), self.rows_prompt(prompt_ids_B),
        self.deep)))

  # Any number of rows.
  def generate_rows(self, rows: Sequence[Sequence[int]], decoding: decoding_lib.DecodingConfig,
                    max_length: int, *, batch_size: int, buckets: Optional[Sequence[int]] = None,
                    prompt_ids_N: Optional[np.ndarray] = None, members: int = 0) -> np.ndarray:
    """Generated ids [N, max_length] per row ([M, N, max_length] with `members`)."""
    return self._rows(lambda t, n, ids: self.generate(t, decoding, max_length, ids, n), rows,
                      batch_size, buckets, prompt_ids_N, members)

  def score_rows(self, rows: Sequence[Sequence[int]], candidates_CxT: np.ndarray,
                 candidate_lengths_C: np.ndarray, *, batch_size: int,
                 buckets: Optional[Sequence[int]] = None,
                 prompt_ids_N: Optional[np.ndarray] = None, members: int = 0) -> np.ndarray:
    """Log-likelihoods [N, C] of each candidate after each row ([M, N, C] with `members`)."""
    return self._rows(lambda t, n, ids: self.score(t, candidates_CxT, ids, n, candidate_lengths_C),
                      rows, batch_size, buckets, prompt_ids_N, members)

  def _rows(self, run, rows, batch_size, buckets, prompt_ids_N, members) -> np.ndarray:
    order = np.argsort([len(r) for r in rows], kind='stable')  # like lengths share a batch
    out: Optional[np.ndarray] = None
    for batch in data.eval_batches([{'inputs': rows[i]} for i in order], batch_size, buckets):
      preemption.check_interrupt()
      real_B = batch['example_index'] >= 0  # filler rows (copies) come last
      where_B = order[np.maximum(batch['example_index'], 0)]
      tokens_BxL, lengths_B = batch['inputs'], batch['lengths']
      if members:  # row (m, b): batch row b with prompt m
        result = run(np.tile(tokens_BxL, (members, 1)), np.tile(lengths_B, members),
                     np.repeat(np.arange(members, dtype=np.int32), len(tokens_BxL)))
        result = result.reshape((members, len(tokens_BxL)) + result.shape[1:])[:, real_B]
        if out is None:
          out = np.zeros((members, len(rows)) + result.shape[2:], result.dtype)
        out[:, where_B[real_B]] = result
      else:
        ids_B = None if prompt_ids_N is None else np.asarray(prompt_ids_N)[where_B]
        result = run(tokens_BxL, lengths_B, ids_B)[real_B]
        if out is None:
          out = np.zeros((len(rows),) + result.shape[1:], result.dtype)
        out[where_B[real_B]] = result
    if out is None:
      raise ValueError('no rows to run.')
    return out
