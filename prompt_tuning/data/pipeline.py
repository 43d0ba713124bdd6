"""NumPy batches and eval examples from the SeqIO tasks (the only TF-facing entry points).

Training batches use T5X's feature names and SeqIO's `EncDecFeatureConverter(pack=False)`;
eval examples keep their text and metadata so `evaluate_predictions` can apply the task's
postprocessor and metrics as T5 does.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio

from prompt_tuning.data import batching
from prompt_tuning.data import tasks

log = logging.getLogger('prompt_tuning')

AVERAGE = 'average'  # a mixture's mean over tasks of their main metrics
BATCH_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                  'decoder_loss_weights')

# Our one-line input errors; raised while tf.data traces a map function, autograph re-raises
# them as a multi-line StagingError (keeping the original as its __context__).
_INPUT_ERRORS = (tasks.DataFileError, tasks.VocabularyError)


def _autograph_off() -> contextlib.AbstractContextManager:
  """tf.data traces each map function when the pipeline is built; with AutoGraph on it first
  rewrites every function's Python source (SeqIO's and ours), which took 1.6 of the 1.9 s
  that building RTE's train pipeline took here, in every process. None of them branches on a
  tensor, so their graphs (and batches: checked byte for byte) are the same without it, and a
  function that did would fail loudly at trace time, not change silently."""
  try:
    from tensorflow.python.autograph.core import ag_ctx  # pylint: disable=g-direct-tensorflow-import
  except ImportError:  # a TensorFlow without this module: build with AutoGraph
    return contextlib.nullcontext()
  return ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED)


@contextlib.contextmanager
def _input_errors_unwrapped():
  """Builds a pipeline (AutoGraph off) and re-raises a DataFileError/VocabularyError that
  tf.data's tracing wrapped, as itself."""
  try:
    with _autograph_off():
      yield
  except Exception as e:  # pylint: disable=broad-except  # re-raised unless it wraps ours
    cause, seen = e, set()
    while cause is not None and id(cause) not in seen:
      if isinstance(cause, _INPUT_ERRORS):
        if cause is e:
          raise
        raise cause from None
      seen.add(id(cause))
      cause = cause.__cause__ or cause.__context__
    raise


def prompt_names(name: str) -> list[str]:
  """The tasks of a mixture (or the one task), in the order a multi-task run's prompt table
  holds their prompts: SeqIO's order of `Mixture.tasks` (by name)."""
  provider = tasks.get_task_or_mixture(name)
  if isinstance(provider, seqio.Mixture):
    return [t.name for t in provider.tasks]
  return [provider.name]


def _dataset(provider, split, feature_lengths, shuffle, repeat, shard_index, num_shards, seed):
  return seqio.get_dataset(
      provider, task_feature_lengths=dict(feature_lengths),
      feature_converter=seqio.EncDecFeatureConverter(pack=False), dataset_split=split,
      shuffle=shuffle, num_epochs=None if repeat else 1,
      shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
      seed=seed, verbose=False)


def _tagged_mixture(name, split, feature_lengths, shuffle, repeat, shard_index, num_shards,
                    seed):
  """The mixture's examples, each with `prompt_ids` = its task's index in `prompt_names`: each
  task's dataset, sampled at the mixture's rates (as SeqIO samples a mixture)."""
  import tensorflow as tf
  provider = tasks.get_task_or_mixture(name)
  if not isinstance(provider, seqio.Mixture):
    ds = _dataset(provider, split, feature_lengths, shuffle, repeat, shard_index, num_shards,
                  seed)
    return ds.map(lambda ex: {**ex, 'prompt_ids': tf.constant(0, tf.int32)})
  members = provider.tasks
  missing = [t.name for t in members if split not in t.splits]
  if missing:
    raise ValueError(f'Mixture {name!r}: task(s) {missing} have no {split!r} split; a prompt '
                     f'per task trains every task of the mixture.')
  datasets = []
  for k, task in enumerate(members):
    ds = _dataset(task, split, feature_lengths, shuffle, repeat, shard_index, num_shards, seed)
    datasets.append(ds.map(lambda ex, k=k: {**ex, 'prompt_ids': tf.constant(k, tf.int32)}))
  rates = np.array([provider.get_rate(t) for t in members], np.float64)
  if not (rates > 0).all():
    raise ValueError(f'Mixture {name!r}: every task needs a positive rate to train its prompt; '
                     f'rates {dict(zip([t.name for t in members], rates.tolist()))}.')
  return tf.data.Dataset.sample_from_datasets(datasets, weights=(rates / rates.sum()).tolist(),
                                              seed=seed, stop_on_empty_dataset=False)


def get_batches(name: str, split: str, feature_lengths: Mapping[str, int], batch_size: int, *,
                shuffle: bool = True, seed: Optional[int] = 0, repeat: bool = True,
                shard_index: int = 0, num_shards: int = 1, start_position: int = 0,
                group_window: int = 0,
                prompt_per_task: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Yields int32 batches [batch_size, length] of this host's shard, padded to `feature_lengths`
  (batching.trim cuts them to their bucket); the last partial batch is dropped. For a fixed seed
  the stream is fixed, and `start_position=k` starts at its k-th batch (the same batch a run
  from 0 yields k-th), so a resumed run sees exactly what it would have.

  `group_window=W` > 1 sorts each run of W batches' examples by length before batching them
  (batching.group_in_windows): similar lengths share a batch, still deterministic and resumable.

  `prompt_per_task`: each row also gets `prompt_ids` [B], its task's index in
  `prompt_names(name)` (0 for a single task), for a model with a prompt per task.
  """
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'shard_index {shard_index} not in [0, {num_shards}).')
  provider = tasks.get_task_or_mixture(name)
  args = (split, feature_lengths, shuffle, repeat, shard_index, num_shards, seed)
  with _input_errors_unwrapped():
    ds = (_tagged_mixture(name, *args) if prompt_per_task else _dataset(provider, *args))
  features = BATCH_FEATURES + (('prompt_ids',) if prompt_per_task else ())
  window = max(int(group_window), 1)
  ds = ds.batch(batch_size * window, drop_remainder=True)
  if start_position // window:
    ds = ds.skip(start_position // window)

  def numpy_batches():
    for batch in ds.as_numpy_iterator():
      yield {k: np.asarray(batch[k], np.int32) for k in features}

  if window == 1:
    return numpy_batches()  # built eagerly above, so bad names and missing files raise here
  return batching.group_in_windows(numpy_batches(), batch_size, window, int(seed or 0),
                                   start_position=start_position)


def _python(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray):
    if value.dtype == object:
      return [_python(v) for v in value.tolist()]
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _truncate(ids: list[int], length: int, add_eos: bool, eos_id: int) -> list[int]:
  # SeqIO's append_eos_after_trim: keep length-1 tokens, then EOS.
  if len(ids) <= length:
    return ids
  return ids[:length - 1] + [eos_id] if add_eos else ids[:length]


def _eval_tasks(provider, split: str) -> list[seqio.Task]:
  if isinstance(provider, seqio.Mixture):
    found = [t for t in provider.tasks if split in t.splits and t.metric_fns]
  else:
    found = [provider] if split in provider.splits else []
  if not found:
    raise ValueError(f'{provider.name!r} has no {split!r} split to evaluate '
                     f'(splits: {sorted(provider.splits)}).')
  return found


def get_eval_examples(name: str, split: str, feature_lengths: Mapping[str, int],
                      max_examples: Optional[int] = None) -> tuple[list[dict], int]:
  """Returns (examples, num_truncated), in the split's order (unshuffled).

  Each example has the raw text (`inputs_pretokenized`, `targets_pretokenized`), the token ids
  `inputs`/`targets` (with EOS, truncated to `feature_lengths` as training truncates them), the
  metadata the postprocessors need (e.g. `idx`, `idx/question`, `answers`, `label`) and `task`.
  For a mixture, the examples of each of its tasks with metrics follow one another and
  `max_examples` applies per task. A warning reports how many examples were truncated.
  """
  provider = tasks.get_task_or_mixture(name)
  examples, truncated = [], 0
  for task in _eval_tasks(provider, split):
    with _input_errors_unwrapped():
      ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                            trim_output_features=False)
    if max_examples is not None:
      ds = ds.take(max_examples)
    # Batched (ragged) because iterating tf.data one example at a time is slow in Python.
    rows = ({key: value[i] for key, value in batch.items()}
            for batch in ds.ragged_batch(1024).as_numpy_iterator()
            for i in range(len(next(iter(batch.values())))))
    for raw in rows:
      example = {key: _python(value) for key, value in raw.items()}
      was_truncated = False
      for key, length in feature_lengths.items():
        feature = task.output_features[key]
        ids = example[key]
        example[key] = _truncate(ids, length, feature.add_eos, feature.vocabulary.eos_id)
        was_truncated |= len(example[key]) < len(ids)
      truncated += was_truncated
      example['task'] = task.name
      examples.append(example)
  if truncated:
    log.warning('%d of %d examples of %s:%s had inputs or targets truncated to '
                'TASK_FEATURE_LENGTHS %s; their scores may suffer.', truncated, len(examples),
                name, split, dict(feature_lengths))
  return examples, truncated


def _is_invalid(value: Any) -> bool:
  if isinstance(value, dict):
    value = value.get('value')
  if isinstance(value, str):
    return not value.strip()  # free text (ReCoRD): only an empty answer is unusable
  return isinstance(value, (int, float, np.integer, np.floating)) and value == -1


def _evaluate_task(task: seqio.Task, examples: Sequence[dict],
                   predictions: Sequence[str]) -> tuple[dict[str, float], int]:
  targets = [task.postprocess_fn(ex['targets_pretokenized'], example=ex, is_target=True)
             for ex in examples]
  predicted = [task.postprocess_fn(p, example=ex, is_target=False)
               for p, ex in zip(predictions, examples)]
  results: dict[str, float] = {}
  for metric_fn in task.metric_fns:
    results.update({k: float(v) for k, v in metric_fn(targets, predicted).items()})
  return results, sum(_is_invalid(p) for p in predicted)


def evaluate_predictions(name: str, examples: Sequence[dict],
                         predictions: Sequence[str]) -> dict[str, float]:
  """T5's postprocess + metrics of the examples' task(s), plus `invalid`: the number of
  predictions that map to no label (or, for free-text tasks, are empty).

  For a mixture each task is scored alone ('<task>/<metric>'), a metric every task reports is
  also given as the mean over tasks under its plain name, and `average` is the mean of each
  task's main metric.
  """
  if len(examples) != len(predictions):
    raise ValueError(f'{len(examples)} examples but {len(predictions)} predictions.')
  provider = tasks.get_task_or_mixture(name)
  if isinstance(provider, seqio.Task):
    results, invalid = _evaluate_task(provider, examples, predictions)
    return {**results, 'invalid': invalid}
  by_task: dict[str, list[int]] = {}
  for i, ex in enumerate(examples):
    by_task.setdefault(ex['task'], []).append(i)
  results, per_task, invalid = {}, [], 0
  for task_name, indices in by_task.items():
    task_results, task_invalid = _evaluate_task(
        seqio.get_mixture_or_task(task_name), [examples[i] for i in indices],
        [predictions[i] for i in indices])
    results.update({f'{task_name}/{k}': v for k, v in task_results.items()})
    per_task.append(task_results)
    invalid += task_invalid
  for key in set.intersection(*(set(r) for r in per_task)) if per_task else ():
    results[key] = float(np.mean([r[key] for r in per_task]))
  # The benchmarks' average: the mean over tasks of each task's main metric.
  mains = [r.get(tasks.TASK_INFO[t].main_metric) if t in tasks.TASK_INFO else None
           for t, r in zip(by_task, per_task)]
  main_values = [m for m in mains if m is not None]
  if mains and len(main_values) == len(mains):
    results[AVERAGE] = float(np.mean(main_values))
  results['invalid'] = invalid
  return results
