"""The quickstart tasks: one digit of 5-8 random digits (first, last, max, min), made offline.

Registers, on import, quickstart_{first,last,max,min} ('max: 38251' -> '8', byte vocabulary),
their `_taskless` variants, quickstart_mixture and quickstart_taskless_mixture (first + max
without prefixes: multi-task prompt tuning). Examples are fixed by (op, split, seed).
"""

from __future__ import annotations

import functools
import zlib
from typing import Callable, Optional

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics, preprocessors, registry, sources, vocabularies

QUICKSTART_OPS: dict[str, Callable[[str], str]] = {
    'first': lambda digits: digits[0],
    'last': lambda digits: digits[-1],
    'max': max,
    'min': min,
}
QUICKSTART_SIZES = {'train': 20_000, 'validation': 200}
QUICKSTART_LABELS = tuple('0123456789')
QUICKSTART_TASKLESS_MIXTURE = 'quickstart_taskless_mixture'

_BYTE_VOCAB = vocabularies.byte_vocabulary()


def quickstart_examples(op: str, split: str, num_examples: Optional[int] = None,
                        seed: int = 0) -> list[tuple[str, str]]:
  """(digits, answer) pairs: 5-8 random digits; fixed by (op, split, seed), not by shuffling."""
  n = QUICKSTART_SIZES[split] if num_examples is None else num_examples
  return list(_quickstart_examples(op, split, n, seed))


@functools.lru_cache(maxsize=32)
def _quickstart_examples(op: str, split: str, n: int, seed: int) -> tuple[tuple[str, str], ...]:
  rng = np.random.default_rng([seed, zlib.crc32(f'{op}/{split}'.encode())])
  # One row per example (length, then 8 digits), drawn in order: the first k examples do not
  # depend on how many are asked for.
  rows = rng.integers([5] + [0] * 8, [9] + [10] * 8, size=(n, 9)).tolist()
  strings = [''.join(map(str, row[1:1 + row[0]])) for row in rows]
  fn = QUICKSTART_OPS[op]
  return tuple((s, fn(s)) for s in strings)


def _quickstart_dataset(op: str, split: str, shuffle_files: bool,
                        seed: Optional[int] = None) -> tf.data.Dataset:
  pairs = quickstart_examples(op, split)
  ds = tf.data.Dataset.from_tensor_slices({
      'inputs': np.array([f'{op}: {digits}' for digits, _ in pairs], dtype=object),
      'targets': np.array([answer for _, answer in pairs], dtype=object)})
  return sources.shuffled(ds, len(pairs), shuffle_files, seed)


def _register_quickstart() -> None:
  info = registry.TaskInfo(QUICKSTART_LABELS, 'accuracy', 'quickstart')
  names = []
  for op in QUICKSTART_OPS:
    source = sources.Source(functools.partial(_quickstart_dataset, op),
                            splits=tuple(QUICKSTART_SIZES))
    for suffix, extra in (('', []), ('_taskless', [preprocessors.remove_first_text_token])):
      registry.add_task(f'quickstart_{op}{suffix}', source, extra, _BYTE_VOCAB,
                        registry.classification(QUICKSTART_LABELS), [metrics.accuracy], info)
    names.append(f'quickstart_{op}')
  if 'quickstart_mixture' in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove('quickstart_mixture')
  seqio.MixtureRegistry.add('quickstart_mixture', names, default_rate=1.0)
  registry.TASK_INFO['quickstart_mixture'] = info
  # Two tasks whose inputs look alike ("38251"): only a prompt per task tells them apart.
  if QUICKSTART_TASKLESS_MIXTURE in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(QUICKSTART_TASKLESS_MIXTURE)
  seqio.MixtureRegistry.add(QUICKSTART_TASKLESS_MIXTURE,
                            ['quickstart_first_taskless', 'quickstart_max_taskless'],
                            default_rate=1.0)
  registry.TASK_INFO[QUICKSTART_TASKLESS_MIXTURE] = info


_register_quickstart()
