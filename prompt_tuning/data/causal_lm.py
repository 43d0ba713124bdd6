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

import json
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning import storage
from prompt_tuning.data import batching

log = logging.getLogger('prompt_tuning')

BATCH_FEATURES = ('decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights',
                  'lengths')
PAD_VALUE = 0  # SeqIO's padding; any id would do for the model, as rows carry their lengths
ADD_BOS = {'llama': True, 'mistral': True, 'qwen2': False, 'gpt2': False}
# Special tokens looked up by name when config.json and generation_config.json give no id.
_NAMES = {'bos': ('<s>', '<|begin_of_text|>', '<bos>', '<|endoftext|>'),
          'eos': ('</s>', '<|end_of_text|>', '<|endoftext|>', '<eos>'),
          'pad': ('<pad>', '<|pad|>', '<|finetune_right_pad_id|>')}


class TokenizerError(ValueError):
  """A missing or unreadable tokenizer file, or special ids it cannot provide (one line)."""


def _json_file(path: str) -> dict:
  if not storage.exists(path):
    return {}
  try:
    value = json.loads(storage.read_text(path))
  except (ValueError, OSError) as e:
    raise TokenizerError(f'{path}: not readable JSON ({storage.one_line(e)}).') from None
  return value if isinstance(value, dict) else {}


def _has_type(node: Any, kind: str) -> bool:
  if isinstance(node, dict):
    return node.get('type') == kind or any(_has_type(v, kind) for v in node.values())
  if isinstance(node, list):
    return any(_has_type(v, kind) for v in node)
  return False


def _template_adds_bos(spec: Mapping[str, Any]) -> bool:
  """Whether tokenizer.json's post-processor puts a special token before a single text."""
  def first_is_special(node: Any) -> bool:
    if isinstance(node, dict):
      if node.get('type') == 'TemplateProcessing':
        single = node.get('single') or [{}]
        return 'SpecialToken' in single[0]
      return any(first_is_special(v) for v in node.values())
    return isinstance(node, list) and any(first_is_special(v) for v in node)
  return first_is_special(spec.get('post_processor'))


class CausalLMTokenizer:
  """A decoder-only checkpoint's tokenizer (`<directory>/tokenizer.json`, read with the
  `tokenizers` library, offline). Special ids come from config.json, then
  generation_config.json (a list of EOS ids: the first), then the tokenizer's tokens by name;
  `add_bos` defaults to the family's habit (config.json's model_type, `ADD_BOS`), else to
  whether the tokenizer's own template starts with a special token."""

  def __init__(self, directory: str, add_bos: Optional[bool] = None):
    import tokenizers
    path = storage.join(directory, 'tokenizer.json')
    if not storage.exists(path):
      raise TokenizerError(f'{path}: tokenizer file not found (a decoder-only checkpoint '
                           f'directory holds its tokenizer.json).')
    try:
      text = storage.read_text(path)
      spec = json.loads(text)
      self._tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # pylint: disable=broad-except  # json, OS and tokenizers' errors
      raise TokenizerError(f'{path}: not a readable tokenizer.json '
                           f'({storage.one_line(e)}).') from None
    self.path = path
    config = _json_file(storage.join(directory, 'config.json'))
    generation = _json_file(storage.join(directory, 'generation_config.json'))
    self.family: Optional[str] = config.get('model_type')
    ids: dict[str, Optional[int]] = {}
    for key, names in _NAMES.items():
      value = config.get(f'{key}_token_id')
      if value is None:
        value = generation.get(f'{key}_token_id')
      if isinstance(value, (list, tuple)):
        value = value[0] if value else None
      if value is None:
        value = next((i for n in names if (i := self._tok.token_to_id(n)) is not None), None)
      ids[key] = None if value is None else int(value)
    self.bos_id, self.pad_id = ids['bos'], ids['pad']
    if ids['eos'] is None:
      raise TokenizerError(f'{path}: no EOS id in config.json, generation_config.json or the '
                           f'tokenizer\'s tokens ({", ".join(_NAMES["eos"])}).')
    self.eos_id: int = ids['eos']
    if add_bos is None:
      add_bos = ADD_BOS.get(self.family or '', _template_adds_bos(spec))
    if add_bos and self.bos_id is None:
      raise TokenizerError(f'{path}: the family adds BOS but no BOS id was found.')
    self.add_bos = bool(add_bos)
    # Byte-level BPEs keep a word's leading space in its token (see the module docstring).
    self.byte_level = _has_type(spec.get('pre_tokenizer'), 'ByteLevel') or _has_type(
        spec.get('decoder'), 'ByteLevel')

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """The ids of `text` alone: no BOS, no EOS, nothing the tokenizer's template adds."""
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def encode_target(self, text: str) -> list[int]:
    """The ids of `text` as it follows the inputs (a target, a label word), without EOS."""
    return self.encode((' ' if self.byte_level else '') + text)

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids` up to the first EOS, special tokens dropped."""
    kept = []
    for i in ids:
      if int(i) == self.eos_id:
        break
      kept.append(int(i))
    return self._tok.decode(kept, skip_special_tokens=True)

  def target_text(self, ids: Sequence[int]) -> str:
    """The text of target ids (generated, or a label word): `decode` without the space
    `encode_target` put before it, so that it compares with the task's targets."""
    text = self.decode(ids)
    return text[1:] if self.byte_level and text.startswith(' ') else text

  def __repr__(self) -> str:
    return (f'CausalLMTokenizer({self.path!r}, bos={self.bos_id}, eos={self.eos_id}, '
            f'pad={self.pad_id}, add_bos={self.add_bos}, byte_level={self.byte_level})')


def encode_example(tokenizer: CausalLMTokenizer, inputs: str, targets: str,
                   feature_lengths: Mapping[str, int]) -> tuple[list[int], list[int], bool]:
  """(prefix, targets) ids of one example, cut to `feature_lengths` as the module docstring
  says: prefix = [BOS] + inputs (<= Li), targets ends with EOS (<= Lt); and whether it was cut."""
  bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
  limit_in, limit_out = int(feature_lengths['inputs']), int(feature_lengths['targets'])
  if limit_in <= len(bos) or limit_out < 1:
    raise ValueError(f'feature lengths {dict(feature_lengths)}: inputs need more than '
                     f'{len(bos)} token(s) (BOS), targets at least 1 (EOS).')
  body, target = tokenizer.encode(inputs), tokenizer.encode_target(targets)
  keep = limit_in - len(bos)
  cut = len(body) > keep or len(target) + 1 > limit_out
  body = body[len(body) - keep:] if len(body) > keep else body  # the left goes
  return bos + body, target[:limit_out - 1] + [tokenizer.eos_id], cut


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
  """
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'shard_index {shard_index} not in [0, {num_shards}).')
  limit = int(feature_lengths['inputs']) + int(feature_lengths['targets'])
  widths = tuple(buckets) if buckets is not None else batching.auto_buckets(limit)
  names, rates = _members(name)
  texts = []
  for task_name in names:
    examples = text_examples(task_name, split)[shard_index::num_shards]
    if not examples:
      raise ValueError(f'{task_name}:{split} has no examples for shard {shard_index}.')
    texts.append(examples)
  encoded: list[dict[int, tuple[list[int], list[int], bool]]] = [{} for _ in names]

  def encoded_row(k: int, i: int) -> tuple[list[int], list[int], bool]:
    # Encoded when first drawn: a short run pays only for the examples it reads.
    if i not in encoded[k]:
      ex = texts[k][i]
      encoded[k][i] = encode_example(tokenizer, ex['inputs'], ex['targets'], feature_lengths)
    return encoded[k][i]
  window = max(int(group_window), 1)
  seed = int(seed or 0)
  order = _order([len(t) for t in texts], rates, seed, shuffle, repeat,
                 (start_position // window) * window * batch_size)

  def window_batches():
    while True:
      picked = [p for _, p in zip(range(window * batch_size), order)]
      if len(picked) < window * batch_size:
        return
      chosen = [encoded_row(k, i) for k, i in picked]
      big = rows_to_features([c[0] for c in chosen], [c[1] for c in chosen], limit)
      if prompt_per_task:
        big['prompt_ids'] = np.array([k for k, _ in picked], np.int32)
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
  return [tokenizer.encode_target(label) + [tokenizer.eos_id] for label in info.labels]


def evaluate_predictions(name: str, examples: Sequence[dict],
                         predictions: Sequence[str]) -> dict[str, float]:
  """The task's own postprocessor and metrics (pipeline.evaluate_predictions) of predicted
  texts, e.g. `tokenizer.target_text` of the generated ids, or the label word ranked first."""
  from prompt_tuning.data import pipeline
  return pipeline.evaluate_predictions(name, examples, predictions)
