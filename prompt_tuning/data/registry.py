"""Adding SeqIO tasks: TaskInfo/TASK_INFO, a task and its variants (TFDS, local, taskless).

The benchmark modules (super_glue.py, glue.py, quickstart_tasks.py, mrqa.py) register their tasks;
tasks.py's lookups answer from what is recorded: TASK_INFO, each task's pure-Python formatter
(FORMATTERS) and the release files each `*_local` task reads (LOCAL_TASKS, which
`set_local_file` repoints).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import seqio

from prompt_tuning.data import postprocessors, preprocessors, sources, vocabularies


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  labels: Optional[tuple[str, ...]]  # verbalizers in class-id order; None for free text
  main_metric: str  # the metric key used to pick the best checkpoint
  benchmark: str  # 'super_glue' | 'glue' | 'quickstart' | 'mrqa'
  # Targets start with T5's first sentinel `<extra_id_0>` (the `<task>_sentinel` variants of
  # sentinel.py); rank classification prefixes its candidates with it too.
  sentinel_targets: bool = False


TASK_INFO: dict[str, TaskInfo] = {}

# name -> pure-Python formatter (TFDS-schema example -> formatted examples), for tests and tools.
FORMATTERS: dict[str, Callable[[dict], list[dict]]] = {}  # pure-Python `format_example`s
# name -> ({split: path parts}, reader, train filter) of every `*_local` task.
LOCAL_TASKS: dict[str, tuple] = {}

_TEXT_VOCAB = vocabularies.DeferredVocabulary(sources.text_vocabulary)


def _features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {'inputs': seqio.Feature(vocab, add_eos=True),
          'targets': seqio.Feature(vocab, add_eos=True)}


def set_local_file(name: str, split: str, relative_path: str) -> None:
  """Reads `split` of the local task `name` (and its taskless variant) from another file.

  E.g. MRPC: TFDS's glue/mrpc has the tokenized MSR text; to get T5's exact inputs offline use
  `set_local_file('glue_mrpc_local', 'validation', 'glue/MRPC/dev_tokenized_lmbff.tsv')`.
  """
  if name not in LOCAL_TASKS:
    raise ValueError(f'{name!r} is not a `*_local` task.')
  files = LOCAL_TASKS[name][0]
  if split not in files:
    raise ValueError(f'{name!r} has no split {split!r} (splits: {sorted(files)}).')
  files[split] = tuple(relative_path.replace('\\', '/').split('/'))


def classification(labels: Sequence[str]):
  """Postprocessor of a classification task: the label word's class id (-1 when none)."""
  return functools.partial(postprocessors.string_label_to_class_id, label_classes=tuple(labels))


def add_task(name: str, source: seqio.DataSource, text_preprocessors: list, vocab,
             postprocess_fn, metric_fns, info: TaskInfo) -> None:
  """Registers (or re-registers) one task: text preprocessing, then T5's tokenize and EOS."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # idempotent re-import (e.g. importlib.reload)
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=text_preprocessors + [seqio.preprocessors.tokenize,
                                          seqio.CacheDatasetPlaceholder(),
                                          seqio.preprocessors.append_eos_after_trim],
      output_features=_features(vocab), postprocess_fn=postprocess_fn, metric_fns=metric_fns)
  TASK_INFO[name] = info


def _taskless_formatter(formatter: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
  def fn(example):
    return [{**ex, 'inputs': preprocessors.remove_first_token_text(ex['inputs'])}
            for ex in formatter(example)]
  return fn


def add_variants(name: str, tfds: tuple, local: tuple, text_preprocessor, formatter,
                 postprocess_fn, metric_fns, info: TaskInfo, taskless: bool = True) -> None:
  """name, name_local, and (with `taskless`) taskless_name, taskless_name_local."""
  tfds_name, tfds_splits, tfds_train_filter = tfds
  files, reader, train_filter = local
  local_source = sources.Source(
      functools.partial(sources.local_dataset, files, reader, train_filter), splits=tuple(files))
  prefixes: list[tuple[str, list]] = [('', [])]
  if taskless:
    prefixes.append(('taskless_', [preprocessors.remove_first_text_token]))
  for prefix, extra in prefixes:
    # Each TFDS variant's offline error names its own local variant.
    tfds_source = sources.Source(functools.partial(sources.tfds_dataset, tfds_name, tfds_splits,
                                                   f'{prefix}{name}_local', tfds_train_filter),
                                 splits=tuple(tfds_splits))
    for suffix, source in (('', tfds_source), ('_local', local_source)):
      full = f'{prefix}{name}{suffix}'
      add_task(full, source, [text_preprocessor] + extra, _TEXT_VOCAB, postprocess_fn, metric_fns,
               info)
      FORMATTERS[full] = _taskless_formatter(formatter) if prefix else formatter
      if suffix:
        LOCAL_TASKS[full] = local

