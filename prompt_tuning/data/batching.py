"""Length-aware batches: pad each batch to a bucket that holds its longest row, not to the maximum.

`TASK_FEATURE_LENGTHS` stays the truncation limit (as in T5X); a batch's rows are then padded only
to the smallest bucket length that holds its longest real row, for inputs and targets separately.
Real GLUE/SuperGLUE inputs are far shorter than the paper's 512 (RTE: mean 85 tokens), so most of
a fixed-shape row is padding. The step compiles once per (inputs, targets) bucket pair.

Trimming trailing padding changes no number: padded keys are masked, padded targets weigh 0, and
positions count from the start. (With dropout the random masks follow the shape, so only the
dropout draw differs.) `group_in_windows` optionally sorts a window of batches by length first.

Setting (gin LENGTH_BUCKETS): 'auto' (see `auto_buckets`), None (fixed shape), or
{'inputs': [...], 'targets': [...]} (a list alone applies to both). Pure NumPy: no TensorFlow,
SeqIO or JAX.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np

from prompt_tuning.data.vocab import token_mask

# Which length each T5X batch feature follows. Features not listed have no length axis (e.g.
# `prompt_ids` [B], each row's prompt) and pass through `trim` unchanged.
FEATURE_GROUP = {'encoder_input_tokens': 'inputs', 'decoder_input_tokens': 'targets',
                 'decoder_target_tokens': 'targets', 'decoder_loss_weights': 'targets'}
# The feature whose real tokens give each group's length (decoder inputs start with the pad id).
LENGTH_SOURCE = {'inputs': 'encoder_input_tokens', 'targets': 'decoder_target_tokens'}
SHORT_BUCKETS = (2, 4, 6)
MIN_BUCKET = 8
Buckets = dict[str, tuple[int, ...]]
BucketSetting = Union[None, Literal['auto'], Sequence[int], Mapping[str, Sequence[int]]]


def auto_buckets(max_length: int) -> tuple[int, ...]:
  """2, 4, 6, then multiples of 8 up to 64, of 16 up to 128, of 32 up to 256, of 64 up to 512, and
  so on (the step doubles with the length, so a row pads by less than 8 tokens or 1/8 of its
  length), below `max_length`, then `max_length` itself: 23 shapes up to 512. The short ones are
  for targets: a classification label is 2-6 tokens with EOS (SST-2 2, BoolQ 2-4, RTE 5-6), and a
  target position costs about two input positions (decoder layers plus the vocabulary-wide
  logits)."""
  out, step, length = [b for b in SHORT_BUCKETS if b < max_length], MIN_BUCKET, MIN_BUCKET
  while length < max_length:
    out.append(length)
    if length >= 8 * step:
      step *= 2
    length += step
  return tuple(out) + (max_length,)


def resolve(setting: BucketSetting, feature_lengths: Mapping[str, int],
            macro: str = 'LENGTH_BUCKETS') -> Optional[Buckets]:
  """Bucket lengths per feature group, or None for fixed-shape batches; bad settings are a
  ValueError naming `macro`."""
  if setting is None:
    return None
  lengths = {k: int(feature_lengths[k]) for k in ('inputs', 'targets')}
  if isinstance(setting, str):
    if setting != 'auto':
      raise ValueError(f"{macro} = {setting!r}: use 'auto', None (fixed shape) or a list of "
                       f"increasing lengths (or {{'inputs': [...], 'targets': [...]}}).")
    return {k: auto_buckets(n) for k, n in lengths.items()}
  if isinstance(setting, Mapping):
    unknown = set(setting) - set(lengths)
    if unknown:
      raise ValueError(f"{macro} = {setting!r}: unknown key(s) {sorted(unknown)}; the keys are "
                       f"'inputs' and 'targets'.")
    per_group = {k: setting.get(k, 'auto') for k in lengths}
  else:
    per_group = {k: setting for k in lengths}
  out = {}
  for key, n in lengths.items():
    value = per_group[key]
    if isinstance(value, str) and value == 'auto':
      out[key] = auto_buckets(n)
      continue
    out[key] = _checked(value, key, n, macro, setting)
  return out


def _checked(value: Any, key: str, limit: int, macro: str, setting: Any) -> tuple[int, ...]:
  where = f'{macro} = {setting!r}' + (f" ('{key}')" if isinstance(setting, Mapping) else '')
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
    raise ValueError(f'{where}: give a non-empty list of increasing lengths.')
  if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in value):
    raise ValueError(f'{where}: bucket lengths must be positive integers.')
  buckets = tuple(int(v) for v in value)
  if any(b <= a for a, b in zip(buckets, buckets[1:])):
    raise ValueError(f'{where}: bucket lengths must be strictly increasing.')
  if buckets[-1] < limit:
    raise ValueError(f'{where}: the largest bucket ({buckets[-1]}) is below '
                     f"TASK_FEATURE_LENGTHS['{key}'] = {limit}; rows that long would fit no "
                     f'bucket. End the list at {limit} or more.')
  return tuple(b for b in buckets if b < limit) + (limit,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (at least 1 position, so an all-padding batch has a shape)."""
  for b in buckets:
    if b >= max(length, 1):
      return b
  raise ValueError(f'A row of {length} tokens is longer than the largest bucket {buckets[-1]}.')


def pad_rows(rows: Sequence[Sequence[int]], height: Optional[int] = None,
             width: Optional[int] = None) -> np.ndarray:
  """Token rows as int32 [height, width], padded with 0 (PAD) below and to the right, a row
  longer than `width` cut there; by default as many rows as given and the longest row's width."""
  out = np.zeros((len(rows) if height is None else height,
                  max(map(len, rows), default=0) if width is None else width), np.int32)
  for i, row in enumerate(rows):
    row = list(row)[:out.shape[1]]
    out[i, :len(row)] = row
  return out


def row_lengths(tokens_BxL: np.ndarray) -> np.ndarray:
  """Each row's length up to its last real token ([B]; 0 for an all-padding row)."""
  real_BxL = np.asarray(token_mask(np.asarray(tokens_BxL)))
  has_any_B = real_BxL.any(axis=1)
  last_B = real_BxL.shape[1] - np.argmax(real_BxL[:, ::-1], axis=1)
  return np.where(has_any_B, last_B, 0)


def needed_lengths(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
  """The longest real row of each feature group in `batch`."""
  return {group: int(row_lengths(batch[source]).max(initial=0))
          for group, source in LENGTH_SOURCE.items() if source in batch}


def trim(batch: Mapping[str, np.ndarray], buckets: Optional[Buckets],
         needed: Optional[Mapping[str, int]] = None) -> dict[str, np.ndarray]:
  """`batch` with each feature cut to its group's bucket. `needed` (e.g. agreed over hosts, so
  every process gets the same shape) defaults to this batch's own longest rows."""
  if buckets is None:
    return dict(batch)
  needed = needed_lengths(batch) if needed is None else needed
  out = {}
  for key, value in batch.items():
    group = FEATURE_GROUP.get(key)
    if group is None or group not in needed:
      out[key] = value
      continue
    width = bucket_for(needed[group], buckets[group])
    # Decoder inputs are the targets shifted right: a row of exactly `width` targets has its EOS
    # at input position `width`. It only feeds the prediction after the last target (masked:
    # its target is padding), and causal attention keeps it from every kept position.
    slack = 1 if key == 'decoder_input_tokens' else 0
    if np.asarray(token_mask(value[:, width + slack:])).any():  # loss weights: 0 on padding too
      raise ValueError(f'{key}: real tokens past the bucket length {width}.')
    out[key] = value[:, :width]
  return out


def group_in_windows(window_batches: Iterator[Mapping[str, np.ndarray]], batch_size: int,
                     window: int, seed: int, start_position: int = 0,
                     sort_keys: Optional[Any] = None) -> Iterator[dict[str, np.ndarray]]:
  """Sorts each window of `window` batches (given as one [window * batch_size, L] batch) by
  length and yields its batches in a seeded random order: rows of a batch are then of similar
  length (less padding), while the window bounds how far the order moves. Deterministic for a
  seed. Resuming at batch `start_position`: `window_batches` starts at window
  start_position // window, and the batches of it before the position are dropped.
  `sort_keys(big) -> arrays` (np.lexsort's keys, the last primary) replaces the T5 rows' default
  (input length, then target length), e.g. for decoder-only rows that carry their lengths."""
  first = start_position // window
  for index, big in enumerate(window_batches, start=first):
    if sort_keys is None:
      inputs = row_lengths(big[LENGTH_SOURCE['inputs']])
      targets = row_lengths(big[LENGTH_SOURCE['targets']])
      order = np.lexsort((targets, inputs))  # by input length, then target length
    else:
      order = np.lexsort(tuple(sort_keys(big)))
    chunks = [order[i * batch_size:(i + 1) * batch_size] for i in range(window)]
    rng = np.random.default_rng([seed, index])
    for k, j in enumerate(rng.permutation(window)):
      if index * window + k < start_position:
        continue
      yield {key: value[chunks[j]] for key, value in big.items()}


def trimmed(batches: Iterator[Mapping[str, np.ndarray]], buckets: Optional[Buckets],
            agree: Optional[Any] = None) -> Iterator[dict[str, np.ndarray]]:
  """`trim` over a stream. `agree(needed) -> needed` makes the processes of a multi-host run
  pick one shape per step (e.g. the largest of their longest rows)."""
  for batch in batches:
    if buckets is None:
      yield dict(batch)
      continue
    needed = needed_lengths(batch)
    yield trim(batch, buckets, agree(needed) if agree is not None else needed)
