"""PromptedModel: the frozen model with a prompt table, run over rows of tokens. The one place
prompts meet batches outside training: evaluation and ensembles (evaluation.py), mixed-task infer
(runs.py), the quickstart and the server's engine (serve/engine.py) all run through it.

  assemble(config, prompt_config)   the Flax model for a prompt config (the trainer's too)
  PromptedModel(...)                frozen params + a prompt [P, D] or a table [K, P, D]
    .from_run / .from_library       ... read from a MODEL_DIR or prompt file / a prompt library
    .generate / .score              one batch: generated ids / candidates' log-likelihoods
    .generate_rows / .score_rows    any number of rows, batched by length (`batches`)
  text(vocab, ids)                  generated ids as text: the one rule eval, infer and serve use
  input_row, label_targets          text to model inputs / rank classification's candidates

Rows of different prompts share batches: row b is answered by prompt `prompt_ids[b]`. Every batch
has `batch_size` rows (filler rows are empty and ask prompt 0), so each width compiles once.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning import checkpoints
from prompt_tuning.data import batching
from prompt_tuning.data.vocab import PAD_ID
from prompt_tuning.inference import decoding as decoding_lib
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import Placement, PromptConfig, merge_params, prompt_tree
from prompt_tuning.prompts import files as prompt_files
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import preemption


def assemble(config: t5.T5Config, prompt: Optional[PromptConfig]) -> t5.EncoderDecoder:
  """The frozen model with a prompt module (None: no prompt): where the runners and the trainer
  build it."""
  return t5.EncoderDecoder(config, prompt)


def load_frozen(initial_checkpoint_path: Optional[str], model: Optional[t5.T5Config],
                frozen_dtype: Optional[str] = None) -> tuple[t5.T5Config, Any]:
  """(config, frozen params) of the base checkpoint, the weights cast to `frozen_dtype`
  ('bfloat16' halves their memory; 'auto': bfloat16 on GPU/TPU, as stored on CPU; None: as
  stored)."""
  config, frozen = checkpoints.load_base(initial_checkpoint_path, model)
  return config, cast_frozen(frozen, frozen_dtype)


def resolve_frozen_dtype(frozen_dtype: Optional[str]) -> Optional[str]:
  """FROZEN_DTYPE as a dtype name or None (as stored): 'auto' is bfloat16 on GPU/TPU, None on
  CPU."""
  import jax
  if frozen_dtype == 'auto':
    return 'bfloat16' if jax.default_backend() in ('gpu', 'tpu') else None
  return frozen_dtype


def cast_frozen(frozen: Any, frozen_dtype: Optional[str]) -> Any:
  """The frozen weights cast to FROZEN_DTYPE (resolve_frozen_dtype)."""
  import jax
  dtype = resolve_frozen_dtype(frozen_dtype)
  if not dtype:
    return frozen
  return jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, dtype=dtype), frozen)


def find_prompt(model_dir: Optional[str], prompt_file: Optional[str],
                step: Optional[int]) -> tuple[np.ndarray, int, Optional[list[str]]]:
  """(prompt [P, D] or a multi-task run's table [K, P, D], step, the table's names) from
  PROMPT_FILE, or MODEL_DIR's `step` (default: its latest committed step)."""
  if prompt_file:
    return prompt_files.load_prompt_file(prompt_file), step or 0, None
  if not model_dir:
    raise ValueError('Nothing to evaluate: set PROMPT_FILE or MODEL_DIR.')
  value, step = model_dir_lib.load_prompt(model_dir, step)
  return value, step, model_dir_lib.prompt_names(model_dir)


def run_prompts(model_dir: Optional[str], prompt_file: Optional[str], step: Optional[int],
                task: Optional[str], d_model: int
                ) -> tuple[np.ndarray, int, Optional[list[str]], Optional[dict[str, int]], Any]:
  """(prompt or table, step, the table's names, {task: prompt id} or None, deep prompts or None)
  that eval/infer run (either model kind): find_prompt's, checked against `d_model`. A multi-task
  MODEL_DIR asked for one of its tasks gives that task's prompt; for a mixture, its whole table
  with each task's id. A deep run's per-layer prompts come with its MODEL_DIR (a prompt file
  holds the input prompt only)."""
  value, step, names = find_prompt(model_dir, prompt_file, step)
  if value.shape[-1] != d_model:
    raise ValueError(f'{prompt_file or model_dir}: the prompt has shape {value.shape} but the '
                     f'model width (d_model) is {d_model}.')
  ids = None
  if names is not None and value.ndim == 3:
    if task in names:
      value, names = value[names.index(task)], None
    else:
      ids = {n: k for k, n in enumerate(names)}
  deep = (model_dir_lib.load_deep_prompt(model_dir, step) if model_dir and not prompt_file
          else None)
  return value, step, names, ids, deep


def text(vocab: Any, ids: Any) -> str:
  """Generated ids as text, T5's rule: up to the first EOS, padding dropped, sentinel k shown as
  '<extra_id_k>' and an id past the vocabulary as ' ⁇ '. A SeqIO vocabulary renders them
  (it cuts at EOS itself); `SentencePieceVocab.text` renders them alike without TensorFlow."""
  if hasattr(vocab, 'text'):
    return vocab.text(ids)
  return vocab.decode([int(t) for t in ids if t > PAD_ID])


def input_row(vocab: Any, text_or_ids: str | Sequence[int], max_length: int) -> list[int]:
  """A model input: the text's ids (or the ids as given) cut to leave room for EOS, then EOS
  (as the tasks do)."""
  ids = (list(vocab.encode(text_or_ids)) if isinstance(text_or_ids, str)
         else list(text_or_ids))
  return ids[:max_length - 1] + [vocab.eos_id]


def label_targets(vocab: Any, labels: Sequence[str], width: Optional[int] = None,
                  prefix: Sequence[int] = ()) -> np.ndarray:
  """Rank classification's candidates [C, T]: `prefix` (the ids a task's targets start with,
  e.g. a sentinel), each label's ids and EOS, padded to `width` (default: the longest)."""
  return batching.pad_rows(
      [list(prefix) + list(vocab.encode(label)) + [vocab.eos_id] for label in labels],
      width=width)


def batches(inputs_NxL: np.ndarray, batch_size: int, *, buckets: Optional[Sequence[int]] = None,
            prompt_ids_N: Optional[np.ndarray] = None
            ) -> Iterator[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
  """(row indices, tokens [batch_size, W], prompt ids [batch_size] or None) over padded rows.

  With `buckets` rows go by length (stable sort) and each batch is as wide as the smallest
  bucket holding its longest row; without, rows go in order at the full width L.
  """
  lengths = batching.row_lengths(inputs_NxL)
  order = (np.arange(len(inputs_NxL)) if buckets is None
           else np.argsort(lengths, kind='stable'))
  for start in range(0, len(order), batch_size):
    indices = order[start:start + batch_size]
    width = (inputs_NxL.shape[1] if buckets is None
             else batching.bucket_for(int(lengths[indices].max()), buckets))
    tokens = np.zeros((batch_size, width), np.int32)
    tokens[:len(indices)] = inputs_NxL[indices, :width]
    ids = None
    if prompt_ids_N is not None:
      ids = np.zeros((batch_size,), np.int32)
      ids[:len(indices)] = prompt_ids_N[indices]
    yield indices, tokens, ids


class PromptedModel:
  """A frozen T5 with one prompt [P, D] (optionally a deep run's per-layer prompts) or a table of
  K named prompts [K, P, D] (`names` in table order)."""

  def __init__(self, config: t5.T5Config, frozen: Mapping, prompts: Any, *,
               placement: Placement = 'prefix', names: Optional[Sequence[str]] = None,
               deep: Optional[np.ndarray] = None):
    """`prompts`: [P, D] or [K, P, D], numpy or already on the devices (the server's table)."""
    shape = np.shape(prompts)
    if shape[-1] != config.d_model:
      raise ValueError(f'the prompts have width {shape[-1]} but the model\'s d_model is '
                       f'{config.d_model}.')
    prompt = PromptConfig(shape[-2], placement, shape[0] if len(shape) == 3 else 1,
                          deep=deep is not None)
    self.config = config
    self.names = list(names) if names is not None else None
    self.module = assemble(config, prompt)
    self.params = merge_params(dict(frozen), prompt_tree(prompts, deep))

  @classmethod
  def from_run(cls, initial_checkpoint_path: Optional[str], model: Optional[t5.T5Config], *,
               placement: Placement = 'prefix', model_dir: Optional[str] = None,
               prompt_file: Optional[str] = None, step: Optional[int] = None,
               task: Optional[str] = None, frozen_dtype: Optional[str] = None
               ) -> tuple['PromptedModel', int, Optional[dict[str, int]]]:
    """(model, step, {task: prompt id} or None) for eval/infer (find_prompt). A multi-task
    MODEL_DIR asked for one of its tasks gives that task's prompt; for a mixture, its whole
    table, each task's rows to be answered by their own prompt (the returned ids)."""
    if model_dir and not prompt_file and model_dir_lib.is_model_tuning(model_dir):
      return cls.from_model_tuning(model_dir, model, step=step, frozen_dtype=frozen_dtype)
    config, frozen = load_frozen(initial_checkpoint_path, model, frozen_dtype)
    value, step, names, ids, deep = run_prompts(model_dir, prompt_file, step, task,
                                                config.d_model)
    return cls(config, frozen, value, placement=placement, names=names, deep=deep), step, ids

  @classmethod
  def from_model_tuning(cls, model_dir: str, model: Optional[t5.T5Config], *,
                        step: Optional[int] = None, frozen_dtype: Optional[str] = None
                        ) -> tuple['PromptedModel', int, None]:
    """(the model a model-tuning MODEL_DIR trained, at `step` or its latest committed step, that
    step, no ids): its T5X checkpoint, no prompt."""
    from prompt_tuning.train import model_tuning  # (it builds on the trainer, which uses this)
    path, step = model_tuning.model_checkpoint(model_dir, step)
    config, params = load_frozen(path, model, frozen_dtype)
    return cls.of(assemble(config, None), params), step, None

  @classmethod
  def from_library(cls, initial_checkpoint_path: Optional[str], model: Optional[t5.T5Config],
                   spec: library_lib.Spec, *, placement: Placement = 'prefix',
                   names: Optional[Sequence[str]] = None,
                   frozen_dtype: Optional[str] = None) -> 'PromptedModel':
    """A prompt library's prompts `names` (default: all, in library order) as one table (a
    single prompt when there is one)."""
    config, frozen = load_frozen(initial_checkpoint_path, model, frozen_dtype)
    library = library_lib.load_library(spec, config.d_model)
    return cls.with_library(config, frozen, library, placement=placement, names=names)

  @classmethod
  def with_library(cls, config: t5.T5Config, frozen: Mapping,
                   library: Mapping[str, library_lib.LibraryPrompt], *,
                   placement: Placement = 'prefix',
                   names: Optional[Sequence[str]] = None) -> 'PromptedModel':
    """As from_library, for a library and frozen params at hand."""
    names, table_KxPxD = library_lib.table(library, names)
    return cls(config, frozen, table_KxPxD if len(names) > 1 else table_KxPxD[0],
               placement=placement, names=names)

  @classmethod
  def of(cls, module: t5.EncoderDecoder, params: Any,
         names: Optional[Sequence[str]] = None) -> 'PromptedModel':
    """A model assembled elsewhere (a training state's params) run as a PromptedModel."""
    self = cls.__new__(cls)
    self.config, self.module, self.params = module.config, module, params
    self.names = list(names) if names is not None else None
    return self

  @property
  def is_table(self) -> bool:
    return self.module.prompt is not None and self.module.prompt.is_table

  def prompt_ids(self, names: Sequence[str]) -> np.ndarray:
    """The table row of each name."""
    index = {n: k for k, n in enumerate(self.names or [])}
    unknown = [n for n in names if n not in index]
    if unknown:
      raise library_lib.LibraryError(f'no prompt named {unknown[0]!r} in the library; it has '
                                     f'{sorted(index)}.')
    return np.array([index[n] for n in names], np.int32)

  # One batch.
  def generate(self, tokens_BxL: np.ndarray, decoding: decoding_lib.DecodingConfig,
               max_length: int, prompt_ids_B: Optional[np.ndarray] = None) -> np.ndarray:
    """Generated ids [B, max_length] (EOS, then padding)."""
    return np.asarray(decoding.generate(self.module, self.params, tokens_BxL, max_length,
                                        prompt_ids=self._ids(prompt_ids_B)))

  def score(self, tokens_BxL: np.ndarray, candidates_CxT: np.ndarray,
            prompt_ids_B: Optional[np.ndarray] = None) -> np.ndarray:
    """Log-likelihood [B, C] of each candidate target (with EOS, padded) for each row."""
    import jax
    return np.asarray(jax.block_until_ready(decoding_lib.score_candidates(
        self.module, self.params, tokens_BxL, candidates_CxT,
        prompt_ids=self._ids(prompt_ids_B))))

  def _ids(self, prompt_ids_B: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return prompt_ids_B if self.is_table else None

  # Any number of rows.
  def generate_rows(self, inputs_NxL: np.ndarray, decoding: decoding_lib.DecodingConfig,
                    max_length: int, *, batch_size: int, buckets: Optional[Sequence[int]] = None,
                    prompt_ids_N: Optional[np.ndarray] = None, members: int = 0) -> np.ndarray:
    """Generated ids [N, max_length] per row (in the rows' order); with `members` M (an
    ensemble: the table's first M prompts) every batch runs once per member, M x batch_size
    rows in one call, and the result is [M, N, max_length]."""
    return self._rows(lambda t, ids: self.generate(t, decoding, max_length, ids), inputs_NxL,
                      batch_size, buckets, prompt_ids_N, members)

  def score_rows(self, inputs_NxL: np.ndarray, candidates_CxT: np.ndarray, *, batch_size: int,
                 buckets: Optional[Sequence[int]] = None,
                 prompt_ids_N: Optional[np.ndarray] = None, members: int = 0) -> np.ndarray:
    """Log-likelihoods [N, C] ([M, N, C] with `members`), as generate_rows."""
    return self._rows(lambda t, ids: self.score(t, candidates_CxT, ids), inputs_NxL,
                      batch_size, buckets, prompt_ids_N, members)

  def _rows(self, run, inputs_NxL, batch_size, buckets, prompt_ids_N, members) -> np.ndarray:
    out: Optional[np.ndarray] = None
    for indices, tokens, ids in batches(inputs_NxL, batch_size, buckets=buckets,
                                        prompt_ids_N=prompt_ids_N):
      preemption.check_interrupt()
      if members:  # row (m, b): batch row b with prompt m
        result = run(np.tile(tokens, (members, 1)),
                     np.repeat(np.arange(members, dtype=np.int32), len(tokens)))
        result = result.reshape((members, len(tokens)) + result.shape[1:])[:, :len(indices)]
        if out is None:
          out = np.zeros((members, len(inputs_NxL)) + result.shape[2:], result.dtype)
        out[:, indices] = result
      else:
        result = run(tokens, ids)[:len(indices)]
        if out is None:
          out = np.zeros((len(inputs_NxL),) + result.shape[1:], result.dtype)
        out[indices] = result
    assert out is not None, 'no rows'
    return out
