"""The paper's "span corruption + sentinel" targets: a `<name>_sentinel` variant of any task.

Lester et al. 2021 (Sections 2.2 and 3.2, Figure 3c) prompt-tune the off-the-shelf
span-corruption T5 1.1 checkpoints once as they are and once with every downstream target
starting with a sentinel, so that targets begin as those models were pretrained to begin them.
`<name>_sentinel` is task (or mixture) `name` with two changes:

- its tokenized targets start with T5's first sentinel `<extra_id_0>` (the vocabulary's last id,
  32099 in T5's), added before SeqIO trims them and appends EOS, for training and evaluation
  alike, as the token preprocessor `add_sentinel_to_targets` of google-research/prompt-tuning
  (prompt_tuning/data/preprocessors.py) does;
- a prediction loses a leading `<extra_id_0>`, then leading whitespace, before the task's own
  postprocessor and metrics, as that code's `remove_extra_id_0`
  (prompt_tuning/data/postprocessors.py) does, so a perfect prediction scores as on the task.

Everything else is the task's own: sources, splits, text (`inputs_pretokenized`,
`targets_pretokenized`), metrics, local files and TaskInfo (with `sentinel_targets` set, so rank
classification scores `<extra_id_0> label EOS`). Where the sentinel is removed is a choice: the
metrics see the text without it, but prediction files (inference_eval/*.jsonl) keep in
`prediction` the text the model generated, sentinel included, as every task's files do; their
`target` is the label text, which never holds the sentinel (it is added as a token).

Variants are registered on first use (tasks.sentinel_task, or looking up `<name>_sentinel`), so
every task works, also those of a MIXTURE_OR_TASK_MODULE; gin/runs/sentinel_targets.gin turns
them on for `prompt-tuning train` and `eval`. A task with a vocabulary without sentinels (the
quickstart's bytes) has no variant.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import seqio
import tensorflow as tf

from prompt_tuning.data import postprocessors, registry, vocabularies

SUFFIX = '_sentinel'
SENTINEL = '<extra_id_0>'
VARIANTS: set[str] = set()  # the names registered here


def sentinel_id(vocab: seqio.Vocabulary) -> int:
  """`<extra_id_0>`: SeqIO numbers extra ids down from the vocabulary's end (T5's: 32099)."""
  return vocab.vocab_size - 1


def _no_sentinel_error(name: str) -> ValueError:
  return ValueError(f'{name!r}: its vocabulary has no sentinel ids (extra ids), so its targets '
                    f'cannot start with {SENTINEL} (use a T5 SentencePiece task).')


def add_sentinel_to_targets(dataset: tf.data.Dataset,
                            output_features: dict[str, seqio.Feature]) -> tf.data.Dataset:
  """Token preprocessor: `<extra_id_0>` before each example's target ids."""
  vocab = output_features['targets'].vocabulary
  if not vocab.extra_ids:
    raise _no_sentinel_error('this task')
  first = sentinel_id(vocab)

  def add(ex):
    targets = ex['targets']
    return {**ex, 'targets': tf.concat([tf.constant([first], targets.dtype), targets], 0)}

  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _postprocess(text, *, postprocess, **kwargs):
  if not kwargs.get('is_target', False):
    text = postprocessors.remove_sentinel(text, SENTINEL)
  return postprocess(text, **kwargs) if postprocess is not None else text


def _with_sentinel(steps: list) -> list:
  """The task's preprocessors with the sentinel step just before EOS is appended (the end if
  none appends it)."""
  eos = (seqio.preprocessors.append_eos_after_trim, seqio.preprocessors.append_eos)
  at = next((i for i, step in enumerate(steps) if step in eos), len(steps))
  return steps[:at] + [add_sentinel_to_targets] + steps[at:]


def base_name(name: str) -> Optional[str]:
  """`name` without the variants' suffix; None if it has none."""
  return name[:-len(SUFFIX)] if name.endswith(SUFFIX) and len(name) > len(SUFFIX) else None


def register(provider: seqio.Task | seqio.Mixture) -> str:
  """Registers the sentinel variant of a task or mixture (a mixture's: of each of its tasks,
  at the same rates) unless it is there; returns its name. A variant is its own variant."""
  if provider.name in VARIANTS:
    return provider.name
  name = provider.name + SUFFIX
  info = registry.TASK_INFO.get(provider.name)
  if isinstance(provider, seqio.Mixture):
    if name not in seqio.MixtureRegistry.names():
      members = [(register(task), provider.get_rate(task)) for task in provider.tasks]
      seqio.MixtureRegistry.add(name, members)
    # A main metric of one member ('glue_qqp/f1') names that member's variant.
    task, _, metric = info.main_metric.rpartition('/') if info else ('', '', '')
    if info is not None and task in {t.name for t in provider.tasks}:
      info = dataclasses.replace(info, main_metric=f'{task}{SUFFIX}/{metric}')
    return _recorded(name, info)
  if name not in seqio.TaskRegistry.names():
    vocab = provider.output_features['targets'].vocabulary
    # A deferred vocabulary is checked when a dataset is built (its file may not be set yet).
    if not isinstance(vocab, vocabularies.DeferredVocabulary) and not vocab.extra_ids:
      raise _no_sentinel_error(provider.name)
    seqio.TaskRegistry.add(
        name, source=provider.source, preprocessors=_with_sentinel(list(provider.preprocessors)),
        output_features=provider.output_features,
        postprocess_fn=functools.partial(_postprocess, postprocess=provider.postprocessor),
        metric_fns=list(provider.metric_fns))
  # The same text and the same files as the task's.
  if provider.name in registry.FORMATTERS:
    registry.FORMATTERS[name] = registry.FORMATTERS[provider.name]
  if provider.name in registry.LOCAL_TASKS:
    registry.LOCAL_TASKS[name] = registry.LOCAL_TASKS[provider.name]
  return _recorded(name, info)


def _recorded(name: str, info: Optional[registry.TaskInfo]) -> str:
  if info is not None:
    registry.TASK_INFO[name] = dataclasses.replace(info, sentinel_targets=True)
  VARIANTS.add(name)
  return name


def remove_variants() -> None:
  """Unregisters every variant made here (e.g. after a test), leaving the tasks as imported."""
  for name in sorted(VARIANTS):
    for registry_cls in (seqio.MixtureRegistry, seqio.TaskRegistry):
      if name in registry_cls.names():
        registry_cls.remove(name)
    for table in (registry.TASK_INFO, registry.FORMATTERS, registry.LOCAL_TASKS):
      table.pop(name, None)
  VARIANTS.clear()
