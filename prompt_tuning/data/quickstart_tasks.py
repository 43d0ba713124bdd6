"""The quickstart tasks: one digit of 5-8 random digits (first, last, max, min), made offline.

Registers, on import, quickstart_{first,last,max,min} ('max: 38251' -> '8', byte vocabulary),
their `_taskless` variants, quickstart_mixture and quickstart_taskless_mixture (first + max
without prefixes: multi-task prompt tuning). Examples are fixed by (op, split, seed).

For decoder-only models (the causal-LM quickstart), quickstart_lm_{op} ('max: 38251 =' -> '8'),
their `_taskless` variants ('38251 =') and quickstart_lm_mixture: the same examples with inputs
that end in ' =', since a causal LM reads inputs and targets as one row without a separator and
could not tell a last input digit from the answer.
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
QUICKSTART_LM_MIXTURE = 'quickstart_lm_mixture'
LM_INPUT_END = ' ='  # where a causal LM's answer follows (see the module docstring)

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


def quickstart_answer(task: str, inputs: str) -> str:
  """What the quickstart task `task` (any variant, e.g. 'quickstart_lm_max_taskless') answers
  for the digits of an input text ('565343 =' -> '6')."""
  op = task.removeprefix('quickstart_').removeprefix('lm_').removesuffix('_taskless')
  if op not in QUICKSTART_OPS:
    raise ValueError(f'{task!r} is not a quickstart task: quickstart_[lm_]<op>[_taskless] with '
                     f'<op> one of {", ".join(QUICKSTART_OPS)}.')
  return QUICKSTART_OPS[op](''.join(c for c in inputs if c.isdigit()))


def _quickstart_dataset(op: str, end: str, split: str, shuffle_files: bool,
                        seed: Optional[int] = None) -> tf.data.Dataset:
  pairs = quickstart_examples(op, split)
  ds = tf.data.Dataset.from_tensor_slices({
      'inputs': np.array([f'{op}: {digits}{end}' for digits, _ in pairs], dtype=object),
      'targets': np.array([answer for _, answer in pairs], dtype=object)})
  return sources.shuffled(ds, len(pairs), shuffle_files, seed)


def _register_quickstart() -> None:
  info = registry.TaskInfo(QUICKSTART_LABELS, 'accuracy', 'quickstart')
  for prefix, end, mixture in (('quickstart_', '', 'quickstart_mixture'),
                               ('quickstart_lm_', LM_INPUT_END, QUICKSTART_LM_MIXTURE)):
    names = []
    for op in QUICKSTART_OPS:
      source = sources.Source(functools.partial(_quickstart_dataset, op, end),
                              splits=tuple(QUICKSTART_SIZES))
      for suffix, extra in (('', []), ('_taskless', [preprocessors.remove_first_text_token])):
        registry.add_task(f'{prefix}{op}{suffix}', source, extra, _BYTE_VOCAB,
                          registry.classification(QUICKSTART_LABELS), [metrics.accuracy], info)
      names.append(f'{prefix}{op}')
    _add_mixture(mixture, names, info)
  # Two tasks whose inputs look alike ("38251"): only a prompt per task tells them apart.
  _add_mixture(QUICKSTART_TASKLESS_MIXTURE,
               ['quickstart_first_taskless', 'quickstart_max_taskless'], info)


def _add_mixture(name: str, task_names: list[str], info: registry.TaskInfo) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)  # idempotent re-import
  seqio.MixtureRegistry.add(name, task_names, default_rate=1.0)
  registry.TASK_INFO[name] = info


_register_quickstart()
