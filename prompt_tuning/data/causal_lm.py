"""SeqIO tasks feeding decoder-only models: an HF `tokenizer.json` wrapper, training batches and
eval examples (the decoder-only counterpart of pipeline.py, which feeds T5).

Owns the decoder-only row convention (the trainer and the evaluator rely on it). A task's examples
after its text preprocessors (T5's formats: `inputs`/`targets` text) are tokenized here with the
checkpoint's tokenizer (`CausalLMTokenizer`), each text on its own, without the tokenizer's own
special tokens:

  row = [BOS]? + inputs + targets + [EOS]      no separator token; the inputs are the prefix
  BOS        only where the family adds one (`ADD_BOS`: Llama, Mistral yes; Qwen2, GPT-2 no)
  targets    encoded from ' ' + text on byte-level BPEs (GPT-2, Llama 3, Qwen2), where the space
             belongs to the next word's token ('Ġentailment'); from the text itself elsewhere
             (SentencePiece-style tokenizers mark a text's start as a word start themselves)
  cutting    `{'inputs': Li, 'targets': Lt}`: [BOS] + inputs keep at most Li tokens, cut from
             the LEFT (BOS stays): the end of the inputs, next to the targets, holds what
             decides the label (BoolQ's question follows its passage). targets + EOS keep at
             most Lt, cut from the right with EOS kept (SeqIO's append_eos_after_trim).

Batch features (int32), SeqIO's DecoderFeatureConverter(pack=False) for a task with `inputs`
(its PrefixLMFeatureConverter) applied to inputs = [BOS] + inputs and targets = targets + EOS:
  decoder_target_tokens [B, L]  the row, right padded with 0
  decoder_input_tokens  [B, L]  the same shifted right by one, 0 first (the converter's bos_id)
  decoder_loss_weights  [B, L]  1 on the targets and EOS, 0 on the prefix and padding
  lengths               [B]     each row's real tokens (the prefix ends at the first weight 1)
  prompt_ids            [B]     with `prompt_per_task`: the row's task in `prompt_names`
L is the smallest length bucket (batching.bucket_for) that holds the batch's longest row, of
`batching.auto_buckets(Li + Lt)` by default. The converter counts id 0 as padding: the features
equal its output whenever no real token has id 0; where one does (GPT-2's '!'), its loss
weight stays 1 here and `lengths` says where a row ends. A decoder-only model is fed
decoder_target_tokens: its logits[:, t] predict token t + 1, weighted by loss_weights[:, t + 1].
The converter's `decoder_causal_attention` (a prefix-LM mask) is not made: the models are causal.

Imports TensorFlow/SeqIO only where a task's examples are read.
"""

from __future__ import annotations

import collections.abc
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.data import batching
# The tokenizer's home is hf_tokenizer.py; its names stay reachable here (the row convention's).
from prompt_tuning.data.hf_tokenizer import ADD_BOS, CausalLMTokenizer, TokenizerError  # noqa: F401

log = logging.getLogger('prompt_tuning')

BATCH_FEATURES = ('decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights',
                  'lengths')
PAD_VALUE = 0  # SeqIO's padding; any id would do for the model, as rows carry their lengths
def encode_example(tokenizer: CausalLMTokenizer, inputs: str, targets: str,
                   feature_lengths: Mapping[str, int]) -> tuple[list[int], list[int], bool]:
  """(prefix, targets) ids of one example, cut to `feature_lengths` as the module docstring
  says: prefix = [BOS] + inputs (<= Li), targets ends with EOS (<= Lt); and whether it was cut."""
  limit_in, limit_out = int(feature_lengths['inputs']), int(feature_lengths['targets'])
  if limit_in <= len(_bos(tokenizer)) or limit_out < 1:
    raise ValueError(f'feature lengths {dict(feature_lengths)}: inputs need more than '
                     f'{len(_bos(tokenizer))} token(s) (BOS), targets at least 1 (EOS).')
  body, target = tokenizer.encode(inputs), tokenizer.encode_target(targets)
  prefix = prefix_ids(tokenizer, body, limit_in)
  cut = len(prefix) < len(_bos(tokenizer)) + len(body) or len(target) + 1 > limit_out
  return prefix, target[:limit_out - 1] + [tokenizer.eos_id], cut


def _bos(tokenizer: CausalLMTokenizer) -> list[int]:
  return [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []


def prefix_ids(tokenizer: CausalLMTokenizer, ids: Sequence[int], limit: int) -> list[int]:
  """A row's prefix: [BOS]? + the inputs' `ids`, at most `limit` tokens, the ids cut from the
  left (BOS stays; see the module docstring). Training, eval and the server cut by it."""
  bos = _bos(tokenizer)
  keep = max(int(limit) - len(bos), 0)
  return bos + list(ids)[max(len(ids) - keep, 0):]  # the left goes


def rows_to_features(prefixes: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                     width: int) -> dict[str, np.ndarray]:
  """The batch features (without prompt_ids) of rows prefix + targets, padded to `width`."""
  rows = [list(p) + list(t) for p, t in zip(prefixes, targets)]
  lengths = np.array([len(r) for r in rows], np.int32)
  if lengths.max(initial=0) > width:
    raise ValueError(f'a row of {lengths.max()} tokens is longer than the width {width}.')
  target_tokens = batching.pad_rows(rows, width=width)  # pads with 0 = PAD_VALUE
  input_tokens = np.zeros_like(target_tokens)
  input_tokens[:, 1:] = target_tokens[:, :-1]
  positions = np.arange(width)[None, :]
  starts = np.array([len(p) for p in prefixes], np.int32)[:, None]
  weights = ((positions >= starts) & (positions < lengths[:, None])).astype(np.int32)
  return {'decoder_target_tokens': target_tokens, 'decoder_input_tokens': input_tokens,
          'decoder_loss_weights': weights, 'lengths': lengths}


def text_dataset(name: str, split: str) -> Any:
  """A task's examples after its text preprocessors, before tokenization (tf.data, file order)."""
  import seqio
  task = seqio.get_mixture_or_task(name)
  ds = task.source.get_dataset(split=split, shuffle=False)
  for preprocessor in task.preprocessors:
    if preprocessor is seqio.preprocessors.tokenize:
      break
    ds = preprocessor(ds)
  return ds


def text_examples(task_name: str, split: str, max_examples: Optional[int] = None) -> list[dict]:
  """`text_dataset` as Python dicts (str, not bytes), in file order."""
  from prompt_tuning.data import pipeline
  with pipeline._input_errors_unwrapped():  # pylint: disable=protected-access
    ds = text_dataset(task_name, split)
  if max_examples is not None:
    ds = ds.take(max_examples)
  # Batched (ragged): iterating tf.data one example at a time is slow in Python.
  return [{k: pipeline._python(v[i]) for k, v in batch.items()}  # pylint: disable=protected-access
          for batch in ds.ragged_batch(1024).as_numpy_iterator()
          for i in range(len(next(iter(batch.values()))))]


def _members(name: str) -> tuple[list[str], np.ndarray]:
  import seqio

  from prompt_tuning.data import tasks
  provider = tasks.get_task_or_mixture(name)
  if not isinstance(provider, seqio.Mixture):
    return [provider.name], np.ones(1)
  members = list(provider.tasks)
  rates = np.array([provider.get_rate(t) for t in members], np.float64)
  if not (rates > 0).all():
    raise ValueError(f'Mixture {name!r}: every task needs a positive rate.')
  return [t.name for t in members], rates / rates.sum()


def _order(sizes: Sequence[int], rates: np.ndarray, seed: int, shuffle: bool, repeat: bool,
           start: int) -> Iterator[tuple[int, int]]:
  """(task, example) of each position of the stream from `start` on. Task k's examples run in
  epochs, each permuted by rng([seed, k, epoch]) (in order without `shuffle`); a mixture picks
  each position's task with one uniform draw of rng([seed, -1]) at the rates. Without `repeat`
  the tasks' single epochs follow one another. Position p depends only on p: resumable."""
  if not repeat:
    flat = [(k, int(i)) for k, n in enumerate(sizes)
            for i in (np.random.default_rng([seed, k, 0]).permutation(n) if shuffle
                      else range(n))]
    yield from flat[start:]
    return
  cumulative = np.cumsum(rates)[:-1]
  mix = np.random.default_rng([seed, len(sizes), 2**31]) if len(sizes) > 1 else None
  used = np.zeros(len(sizes), np.int64)
  skip = start
  while mix is not None and skip:  # replay the draws before `start` (chunked: bounded memory)
    n = min(skip, 1 << 20)
    used += np.bincount(np.searchsorted(cumulative, mix.random(n), side='right'),
                        minlength=len(sizes))
    skip -= n
  if mix is None:
    used[0] = start
  perms: dict[tuple[int, int], np.ndarray] = {}
  while True:
    picks = (np.searchsorted(cumulative, mix.random(4096), side='right') if mix is not None
             else np.zeros(4096, np.int64))
    for k in picks.tolist():
      epoch, offset = divmod(int(used[k]), sizes[k])
      used[k] += 1
      if not shuffle:
        yield k, offset
        continue
      if (k, epoch) not in perms:
        perms = {key: v for key, v in perms.items() if key[0] != k}  # one epoch per task kept
        perms[(k, epoch)] = np.random.default_rng([seed, k, epoch]).permutation(sizes[k])
      yield k, int(perms[(k, epoch)][offset])


def get_batches(name: str, split: str, tokenizer: CausalLMTokenizer,
                feature_lengths: Mapping[str, int], batch_size: int, *, shuffle: bool = True,
                seed: Optional[int] = 0, repeat: bool = True, shard_index: int = 0,
                num_shards: int = 1, start_position: int = 0, group_window: int = 0,
                prompt_per_task: bool = False,
                buckets: Optional[Sequence[int]] = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields batches of `BATCH_FEATURES` (+ `prompt_ids` with `prompt_per_task`) of this host's
  shard (every num_shards-th example from shard_index), each padded to its bucket of `buckets`
  (default `batching.auto_buckets(Li + Lt)`); the last partial batch is dropped. For a fixed seed
  the stream is fixed and `start_position=k` starts at its k-th batch, as pipeline.get_batches.
  `group_window=W` > 1 sorts each run of W batches' rows by length (batching.group_in_windows).
  The task's text is read and encoded here; `row_batches` makes the batches.
  """
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'shard_index {shard_index} not in [0, {num_shards}).')
  names, rates = _members(name)
  encoded = []
  for task_name in names:
    examples = text_examples(task_name, split)[shard_index::num_shards]
    if not examples:
      raise ValueError(f'{task_name}:{split} has no examples for shard {shard_index}.')
    encoded.append(_LazyRows(examples, tokenizer, feature_lengths))
  return row_batches(encoded, feature_lengths, batch_size, rates=rates, shuffle=shuffle,
                     seed=seed, repeat=repeat, start_position=start_position,
                     group_window=group_window, prompt_per_task=prompt_per_task,
                     buckets=buckets)


class _LazyRows(collections.abc.Sequence):
  """A task's (prefix, targets) rows, each encoded when first drawn: a short run pays only for
  the examples it reads (the quickstart's tasks have 80k rows)."""

  def __init__(self, examples: Sequence[dict], tokenizer: CausalLMTokenizer,
               feature_lengths: Mapping[str, int]):
    self.examples, self.tokenizer, self.lengths = examples, tokenizer, feature_lengths
    self.rows: dict[int, tuple[list[int], list[int]]] = {}

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, i):  # type: ignore[override]
    if i not in self.rows:
      ex = self.examples[i]
      self.rows[i] = encode_example(self.tokenizer, ex['inputs'], ex['targets'],
                                    self.lengths)[:2]
    return self.rows[i]


def row_batches(encoded: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]],
                feature_lengths: Mapping[str, int], batch_size: int, *,
                rates: Optional[np.ndarray] = None, shuffle: bool = True,
                seed: Optional[int] = 0, repeat: bool = True, start_position: int = 0,
                group_window: int = 0, prompt_per_task: bool = False,
                buckets: Optional[Sequence[int]] = None,
                example_index: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """`get_batches`' stream made from rows already encoded (no SeqIO): `encoded[k]` holds task
  k's (prefix, targets) of `encode_example`, `rates` the mixture's (default: equal).
  `example_index` adds the feature `example_index` [B]: each row's index in its task's list."""
  if not encoded or not all(encoded):
    raise ValueError('row_batches needs at least one row for every task.')
  limit = int(feature_lengths['inputs']) + int(feature_lengths['targets'])
  widths = tuple(buckets) if buckets is not None else batching.auto_buckets(limit)
  rates = np.full(len(encoded), 1 / len(encoded)) if rates is None else np.asarray(rates)
  window = max(int(group_window), 1)
  seed = int(seed or 0)
  order = _order([len(r) for r in encoded], rates, seed, shuffle, repeat,
                 (start_position // window) * window * batch_size)

  def window_batches():
    while True:
      picked = [p for _, p in zip(range(window * batch_size), order)]
      if len(picked) < window * batch_size:
        return
      chosen = [encoded[k][i] for k, i in picked]
      big = rows_to_features([c[0] for c in chosen], [c[1] for c in chosen], limit)
      if prompt_per_task:
        big['prompt_ids'] = np.array([k for k, _ in picked], np.int32)
      if example_index:
        big['example_index'] = np.array([i for _, i in picked], np.int32)
      yield big

  batches: Iterator[dict[str, np.ndarray]] = window_batches()
  if window > 1:
    batches = batching.group_in_windows(batches, batch_size, window, seed,
                                        start_position=start_position,
                                        sort_keys=lambda big: (big['lengths'],))
  for batch in batches:
    width = batching.bucket_for(int(batch['lengths'].max()), widths)
    yield {k: v[:, :width] if v.ndim == 2 else v for k, v in batch.items()}


def get_eval_examples(name: str, split: str, tokenizer: CausalLMTokenizer,
                      feature_lengths: Mapping[str, int],
                      max_examples: Optional[int] = None) -> tuple[list[dict], int]:
  """(examples, num_cut), in the split's order. Each example has the task's metadata (e.g.
  `idx`), `inputs_pretokenized` / `targets_pretokenized` (the text), `inputs` (the prefix ids,
  [BOS] + inputs, cut as training cuts them), `targets` (target ids + EOS) and `task`. For a
  mixture, the examples of each of its tasks with metrics follow one another."""
  from prompt_tuning.data import pipeline, tasks
  provider = tasks.get_task_or_mixture(name)
  examples, cut = [], 0
  for task in pipeline._eval_tasks(provider, split):  # pylint: disable=protected-access
    for ex in text_examples(task.name, split, max_examples):
      prefix, target, was_cut = encode_example(tokenizer, ex['inputs'], ex['targets'],
                                               feature_lengths)
      cut += was_cut
      meta = {k: v for k, v in ex.items() if k not in ('inputs', 'targets')}
      examples.append({**meta, 'inputs_pretokenized': ex['inputs'],
                       'targets_pretokenized': ex['targets'], 'inputs': prefix,
                       'targets': target, 'task': task.name})
  if cut:
    log.warning('%d of %d examples of %s:%s were cut to feature lengths %s.', cut,
                len(examples), name, split, dict(feature_lengths))
  return examples, cut


def eval_batches(examples: Sequence[Mapping[str, Any]], batch_size: int,
                 buckets: Optional[Sequence[int]] = None) -> Iterator[dict[str, np.ndarray]]:
  """The examples' prefixes in order, `batch_size` rows a batch: `inputs` [B, W] right padded
  with 0 to the bucket of the batch's longest prefix (default: auto buckets up to the longest
  prefix), `lengths` [B], `example_index` [B]. The last batch is filled with copies of its first
  row, marked `example_index` -1 (their outputs are dropped)."""
  prefixes = [list(ex['inputs']) for ex in examples]
  longest = max(map(len, prefixes), default=1)
  widths = tuple(buckets) if buckets is not None else batching.auto_buckets(longest)
  for start in range(0, len(prefixes), batch_size):
    index = list(range(start, min(start + batch_size, len(prefixes))))
    fill = batch_size - len(index)
    rows = [prefixes[i] for i in index] + [prefixes[index[0]]] * fill
    width = batching.bucket_for(max(map(len, rows)), widths)
    yield {'inputs': batching.pad_rows(rows, width=width),
           'lengths': np.array([len(r) for r in rows], np.int32),
           'example_index': np.array(index + [-1] * fill, np.int32)}


def label_candidates(name: str, tokenizer: CausalLMTokenizer) -> list[list[int]]:
  """Rank classification's candidates: each label word of the task (TaskInfo.labels, class-id
  order) as a target, ids + EOS, as training's targets are encoded (not cut)."""
  from prompt_tuning.data import tasks
  info = tasks.TASK_INFO.get(name)
  if info is None or not info.labels:
    raise ValueError(f'{name!r} has no label words (a classification task has).')
  return candidate_ids(tokenizer, info.labels)


def candidate_ids(tokenizer: CausalLMTokenizer, labels: Sequence[str]) -> list[list[int]]:
  """Each label as a target continuation, ids + EOS (not cut): what rank classification scores."""
  return [tokenizer.encode_target(label) + [tokenizer.eos_id] for label in labels]


def evaluate_predictions(name: str, examples: Sequence[dict],
                         predictions: Sequence[str]) -> dict[str, float]:
  """The task's own postprocessor and metrics (pipeline.evaluate_predictions) of predicted
  texts, e.g. `tokenizer.target_text` of the generated ids, or the label word ranked first."""
  from prompt_tuning.data import pipeline
  return pipeline.evaluate_predictions(name, examples, predictions)
