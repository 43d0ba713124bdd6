"""SeqIO tasks' public API: registers GLUE, SuperGLUE, quickstart and MRQA; looks tasks up.

Importing this module registers (idempotently):

  super_glue_{boolq,cb,copa,multirc,record,rte,wic,wsc}          TFDS super_glue/<task>:1.0.2
  glue_{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte}                   TFDS glue/<task>:2.0.0
  glue_mnli_matched, glue_mnli_mismatched                        validation only (as T5's)
  <each of the above>_local                                      the official files in a folder
  taskless_<each of the above>                                   without the leading task name
  quickstart_{first,last,max,min}, quickstart_<op>_taskless, quickstart_mixture,
  quickstart_taskless_mixture (first + max without prefixes: multi-task prompt tuning)
  quickstart_lm_<op>, quickstart_lm_<op>_taskless, quickstart_lm_mixture (inputs end in ' =')
  mrqa_{squad,textbook_qa,bio_asq,relation_extraction,duo_rc,race,drop}   TFDS mrqa/<set>:1.0.0
  mrqa_<set>_local, mrqa_out_of_domain{,_local}   (no taskless_ variants; mrqa.py says more)
  glue_mrpc_from_qqp, glue_qqp_from_mrpc (+ _local, taskless_)   zero-shot transfer, validation
  glue_<target>_from_<source>_zeroshot (+ _local, taskless_)      mixtures: train on the source

`<name>_sentinel` (any task or mixture but the quickstart's, registered on first use:
`sentinel_task`, or a lookup of that name) is `name` with every target starting with T5's first
sentinel `<extra_id_0>`, removed again before the metrics (sentinel.py; the paper's "span
corruption + sentinel" ablation).

Splits are 'train' and 'validation'. `glue_mnli` also has 'validation_matched' and
'validation_mismatched' ('validation' is the matched one). MRQA's six out-of-domain sets have
'validation' only (the paper trains on `mrqa_squad` and scores them zero-shot).

`super_glue_wsc` is T5's "simple" WSC: the model names the pronoun's referent. Its 'train' split
is T5's `super_glue_wsc_v102_simple_train` (only examples whose candidate is the true referent),
its 'validation' split T5's `super_glue_wsc_v102_simple_eval` (every example, scored by
whether the named referent is the candidate, compared with the label).

Local files (folder from `set_local_data_dir` or $PROMPT_TUNING_DATA_DIR, read when a dataset
is built): `superglue/<Task>/{train,val}.jsonl` with SuperGLUE's folder names and
`glue/<Task>/{train,dev}.tsv` (MNLI: dev_matched.tsv / dev_mismatched.tsv) as GLUE ships them,
`mrqa/{train,dev}/<Set>.jsonl.gz` as MRQA ships them.
The folder may be a URL (gs://bucket/prefix): the files are read through prompt_tuning.storage.
They are converted to the TFDS schema, so both sources give the same text
(`set_local_file` points a split at another file, e.g. MRPC's tokenized copy). Every field a
task reads is checked as the file is read: a bad row raises a one-line DataFileError
`<path>:<line>: <what is wrong> (<what to do>)` (TFDS would drop a GLUE row with a missing
column; here it is an error too). `validate_task_data` and `check_vocabulary` raise these
errors (and VocabularyError) up front, before a run writes anything.

Where things live: super_glue.py, glue.py, quickstart_tasks.py, mrqa.py and glue_transfer.py
define and register their tasks (imported here in that order); sentinel.py makes the sentinel
variants; registry.py adds tasks and records TaskInfo; sources.py holds the settings, the errors
and the TFDS and local-file sources. This module re-exports what callers use
(`tasks.set_local_data_dir`, `tasks.DataFileError`, `tasks.TASK_INFO`, ...) and answers lookups:
get_task_or_mixture, read_local_examples, release_file_reader, validate_task_data,
check_vocabulary, format_example, get_vocabulary, sentinel_task, target_prefix.
"""

from __future__ import annotations

import difflib
from typing import Callable, Optional, Sequence

import seqio

from prompt_tuning.data import registry, sentinel, sources, vocabularies
# Imported for their registrations, in this order (the order of TASK_INFO and of the registry).
from prompt_tuning.data import super_glue  # noqa: F401
from prompt_tuning.data import glue  # noqa: F401
from prompt_tuning.data import quickstart_tasks  # noqa: F401
from prompt_tuning.data import mrqa  # noqa: F401
from prompt_tuning.data import glue_transfer  # noqa: F401
from prompt_tuning.data.quickstart_tasks import (QUICKSTART_LABELS, QUICKSTART_OPS,
                                                 QUICKSTART_SIZES, QUICKSTART_TASKLESS_MIXTURE,
                                                 quickstart_answer, quickstart_examples)
from prompt_tuning.data.registry import TASK_INFO, TaskInfo, set_local_file
from prompt_tuning.data.sources import (LOCAL_DATA_ENV, TFDS_DOWNLOAD_ENV, VOCAB_ENV,
                                        DataFileError, DataFileMissingError, TfdsDataMissingError,
                                        VocabularyError, get_settings, local_data_dir,
                                        restore_settings, set_local_data_dir, set_tfds_data_dir,
                                        set_vocabulary, set_vocabulary_path, text_vocabulary,
                                        tfds_data_dir)

__all__ = [
    # sources.py: settings and errors
    'LOCAL_DATA_ENV', 'TFDS_DOWNLOAD_ENV', 'VOCAB_ENV', 'DataFileError', 'DataFileMissingError',
    'TfdsDataMissingError', 'VocabularyError', 'get_settings', 'local_data_dir',
    'restore_settings', 'set_local_data_dir', 'set_tfds_data_dir', 'set_vocabulary',
    'set_vocabulary_path', 'text_vocabulary', 'tfds_data_dir',
    # registry.py
    'TASK_INFO', 'TaskInfo', 'set_local_file',
    # quickstart_tasks.py
    'QUICKSTART_LABELS', 'QUICKSTART_OPS', 'QUICKSTART_SIZES', 'QUICKSTART_TASKLESS_MIXTURE',
    'quickstart_answer', 'quickstart_examples',
    # lookups (here)
    'check_vocabulary', 'format_example', 'get_task_or_mixture', 'get_vocabulary',
    'read_local_examples', 'release_file_reader', 'sentinel_task', 'target_prefix',
    'validate_task_data',
]


# ================================ lookups ================================

def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture; unknown names raise a ValueError with close matches."""
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  base = sentinel.base_name(name)
  if base is not None and base in (set(seqio.TaskRegistry.names()) |
                                   set(seqio.MixtureRegistry.names())):
    return get_task_or_mixture(sentinel.register(get_task_or_mixture(base)))
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = f' Did you mean: {", ".join(close)}?' if close else ''
  raise ValueError(f'Unknown task or mixture {name!r}.{hint} ({len(TASK_INFO)} registered '
                   f'here; see prompt_tuning.data.tasks.TASK_INFO.)')


def sentinel_task(name: str) -> str:
  """The name of task or mixture `name`'s sentinel variant, `<name>_sentinel`, registered now
  if it is not yet (sentinel.py); a variant's own name is returned as it is."""
  return sentinel.register(get_task_or_mixture(name))


def target_prefix(name: str) -> tuple[int, ...]:
  """The ids every target of `name` starts with (rank classification's candidates too):
  (`<extra_id_0>`'s id,) for a sentinel variant, else ()."""
  info = TASK_INFO.get(name)
  if info is None or not info.sentinel_targets:
    return ()
  return (sentinel.sentinel_id(get_vocabulary(name)),)


def read_local_examples(name: str, split: str) -> list[dict]:
  """The raw examples (TFDS schema) a `*_local` task reads for `split`, in file order."""
  if name not in registry.LOCAL_TASKS:
    get_task_or_mixture(name)  # unknown names get the suggestions
    raise ValueError(f'{name!r} does not read local files (the `*_local` tasks do).')
  files, reader, train_filter = registry.LOCAL_TASKS[name]
  if split not in files:
    raise ValueError(f'{name!r} has no split {split!r} (splits: {sorted(files)}).')
  return sources.read_local(files, reader, train_filter, split)


def release_file_reader(name: str) -> Optional[tuple[Callable[[str, bool], list], str]]:
  """(reader, relative path) of the official release files task `name` (or `name`_local)
  reads: `reader(path, labeled)` gives TFDS-schema examples; the path (its first split's, e.g.
  'glue/CoLA/dev.tsv') shows the format. None when the task reads no release files."""
  entry = registry.LOCAL_TASKS.get(name) or registry.LOCAL_TASKS.get(f'{name}_local')
  if entry is None:
    return None
  files, reader, _ = entry
  return reader, '/'.join(next(iter(files.values())))


def _tasks_of(name: str) -> list[seqio.Task]:
  provider = get_task_or_mixture(name)
  return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def validate_task_data(name: str, splits: Sequence[str]) -> None:
  """Reads and checks every local file `name` would read for `splits`, now.

  For a `*_local` task (or a mixture: each of its tasks) each split's file is read completely
  as training would read it; the first bad row raises a one-line DataFileError
  (`<path>:<line>: ...`), a missing file a DataFileMissingError. Call it before writing
  anything. TFDS-sourced and built-in (quickstart) tasks read nothing here (no network).
  Unknown names raise get_task_or_mixture's ValueError; a split the task lacks, a ValueError
  (in a mixture, tasks without that split are skipped: evaluation skips them too).
  """
  provider = get_task_or_mixture(name)
  is_mixture = isinstance(provider, seqio.Mixture)
  for split in splits:
    if not is_mixture and split not in provider.splits:
      raise ValueError(f'{name!r} has no split {split!r} (splits: {sorted(provider.splits)}).')
  for task in _tasks_of(name):
    if task.name not in registry.LOCAL_TASKS:
      continue  # TFDS / generated data: checked by their own loaders
    files, reader, train_filter = registry.LOCAL_TASKS[task.name]
    for split in splits:
      if split in files:
        sources.read_local(files, reader, train_filter, split)


def check_vocabulary(name: str) -> None:
  """Loads the vocabulary file(s) of a task or mixture now.

  A missing or unreadable SentencePiece model raises a one-line VocabularyError naming the file
  and $PROMPT_TUNING_VOCAB, before training writes anything (instead of a TensorFlow error from
  inside the data pipeline). The default gs:// vocabulary is fetched from the network here.
  """
  seen = set()
  for task in _tasks_of(name):
    for feature in task.output_features.values():
      if id(feature.vocabulary) not in seen:
        seen.add(id(feature.vocabulary))
        vocabularies.load_vocabulary(feature.vocabulary)


def format_example(name: str, example: dict) -> list[dict]:
  """Pure-Python version of `name`'s text preprocessing: TFDS-schema example -> its formatted
  example(s) (ReCoRD gives one per answer), with `inputs`, `targets` and the metadata."""
  if name not in registry.FORMATTERS:
    get_task_or_mixture(name)
    raise ValueError(f'{name!r} has no Python formatter (GLUE/SuperGLUE/MRQA tasks do).')
  return registry.FORMATTERS[name](example)


def get_vocabulary(name: str) -> seqio.Vocabulary:
  """The (resolved) vocabulary of a task or mixture's targets."""
  provider = get_task_or_mixture(name)
  task = provider.tasks[0] if isinstance(provider, seqio.Mixture) else provider
  vocab = task.output_features['targets'].vocabulary
  return vocab.resolved if isinstance(vocab, vocabularies.DeferredVocabulary) else vocab

