"""Evaluation the paper's way: generate the label text (and/or rank the verbalizers), then T5's
metrics. Owns the Evaluator (one task's examples, scored for any model and prompt).

Examples are tokenized once; batches have a fixed shape so each decode/score function compiles
once. Predictions go to MODEL_DIR/inference_eval/<task>-<method>-<step>.jsonl.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, Mapping, Optional, Sequence, get_args

import jax
import numpy as np

from prompt_tuning.data import batching
from prompt_tuning.inference import decoding
from prompt_tuning import storage
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import preemption
from prompt_tuning.data.vocab import PAD_ID

log = logging.getLogger('prompt_tuning')
EvalMethod = Literal['generate', 'rank']
# In-training ensemble evaluations: tagged (their files name members) but step-bound, so a
# restart's repair treats them as a run's own evaluations, not as `prompt-tuning eval`'s.
TRAIN_ENSEMBLE_TAG = 'train-ensemble'

METHODS: tuple[str, ...] = get_args(EvalMethod)


def check_methods(methods: Sequence[str]) -> None:
  """EVAL_METHODS must be a non-empty list of known methods."""
  if isinstance(methods, str) or not methods or any(m not in METHODS for m in methods):
    raise ValueError(f'EVAL_METHODS = {methods!r}: choose a list from {list(METHODS)}.')


# The name gin files and saved configs used before DecodingConfig moved to decoding.py.
Decoding = decoding.DecodingConfig


class Evaluator:
  """Holds one task's tokenized eval examples; evaluates any (model, params) on them."""

  def __init__(self, task_name: str, split: str, feature_lengths: dict[str, int], *,
               methods: Sequence[str] = ('generate',), batch_size: int = 32,
               max_examples: Optional[int] = None,
               decoding_config: decoding.DecodingConfig = decoding.DecodingConfig(),
               output_dir: Optional[str] = None, buckets: Optional[batching.Buckets] = None,
               prompt_ids: Optional[Mapping[str, int]] = None):
    """`prompt_ids` maps each task of a mixture to its prompt in the model's table (a
    multi-task run): every row is answered by its own task's prompt, in mixed batches."""
    from prompt_tuning.data import pipeline, tasks

    check_methods(methods)
    self.task_name = task_name
    self.methods = tuple(methods)
    self.batch_size = batch_size
    self.decoding_config = decoding_config
    self.output_dir = output_dir
    self.buckets = buckets
    self.info = tasks.TASK_INFO.get(task_name)
    self.vocab = tasks.get_vocabulary(task_name)
    self.examples, self.num_truncated = pipeline.get_eval_examples(
        task_name, split, feature_lengths, max_examples=max_examples)
    if not self.examples:
      raise ValueError(f'Task {task_name!r} has no {split!r} examples to evaluate.')
    self.prompt_ids = None
    if prompt_ids is not None:
      unknown = sorted({e['task'] for e in self.examples} - set(prompt_ids))
      if unknown:
        raise ValueError(f'No prompt for task(s) {unknown} of {task_name!r}; the prompts are '
                         f'{sorted(prompt_ids)}.')
      self.prompt_ids = np.array([prompt_ids[e['task']] for e in self.examples], np.int32)
    self.input_length = feature_lengths['inputs']
    self.target_length = feature_lengths['targets']
    self.inputs = batching.pad_rows([e['inputs'] for e in self.examples], width=self.input_length)
    if 'rank' in self.methods:
      if self.info is None or not self.info.labels:
        raise ValueError(f'Rank classification needs the label verbalizers of {task_name!r}; '
                         f'it has none (use the generate method).')
      eos = self.vocab.eos_id
      self.label_targets = batching.pad_rows([list(self.vocab.encode(label)) + [eos]
                                              for label in self.info.labels],
                                             width=self.target_length)
      if buckets is not None:  # the verbalizers' own bucket, not the task's target length
        longest = int(batching.row_lengths(self.label_targets).max())
        self.label_targets = self.label_targets[:, :batching.bucket_for(longest,
                                                                        buckets['targets'])]

  @property
  def main_metric(self) -> Optional[str]:
    if self.info:
      return self.info.main_metric
    tasks = {e['task'] for e in self.examples}
    return 'average' if tasks != {self.task_name} else None  # a mixture's mean over tasks

  def _batches(self):
    """(example indices, rows [batch_size, bucket]). With buckets, examples go by input length
    (sorted), each batch padded to its bucket; the last batch is filled with empty rows, so the
    batch size never changes."""
    lengths = batching.row_lengths(self.inputs)
    order = (np.arange(len(self.examples)) if self.buckets is None
             else np.argsort(lengths, kind='stable'))
    for start in range(0, len(order), self.batch_size):
      indices = order[start:start + self.batch_size]
      width = (self.input_length if self.buckets is None else
               batching.bucket_for(int(lengths[indices].max()), self.buckets['inputs']))
      rows = np.zeros((self.batch_size, width), np.int32)
      rows[:len(indices)] = self.inputs[indices, :width]
      yield indices, rows

  def _ids(self, indices: np.ndarray) -> Optional[np.ndarray]:
    """The batch's prompt ids (a multi-task model's), or None."""
    if self.prompt_ids is None:
      return None
    ids = np.zeros((self.batch_size,), np.int32)  # filler rows ask prompt 0
    ids[:len(indices)] = self.prompt_ids[indices]
    return ids

  def _in_order(self, outputs: list[tuple[np.ndarray, list]]) -> list:
    """Per-batch outputs back in the examples' order."""
    result: list = [None] * len(self.examples)
    for indices, values in outputs:
      for i, value in zip(indices, values):
        result[i] = value
    return result

  def generate(self, model, params) -> list[str]:
    outputs = []
    for indices, rows in self._batches():
      preemption.check_interrupt()
      tokens = self.decoding_config.generate(model, params, rows, self.target_length,
                                             prompt_ids=self._ids(indices))
      outputs.append((indices, [self.vocab.decode([int(t) for t in row if t > PAD_ID])
                                for row in tokens[:len(indices)]]))
    return self._in_order(outputs)

  def rank(self, model, params) -> list[str]:
    outputs = []
    for indices, rows in self._batches():
      preemption.check_interrupt()
      scores = decoding.score_candidates(model, params, rows, self.label_targets,
                                         prompt_ids=self._ids(indices))
      outputs.append((indices, [self.info.labels[k]
                                for k in np.asarray(scores).argmax(-1)[:len(indices)]]))
    return self._in_order(outputs)

  def evaluate(self, model, params, step: int, tag: str = '') -> dict[str, Any]:
    """Runs every configured method; returns '<method>/<metric>' -> value."""
    from prompt_tuning.data import pipeline

    results: dict[str, Any] = {}
    for method in self.methods:
      predictions = self.generate(model, params) if method == 'generate' else self.rank(
          model, params)
      metrics = pipeline.evaluate_predictions(self.task_name, self.examples, predictions)
      for key, value in metrics.items():
        results[f'{method}/{key}'] = value
      self._write(method, step, tag, predictions, metrics)
    return results

  def _write(self, method, step, tag, predictions, metrics):
    if self.output_dir is None or jax.process_index() != 0:
      return
    name = f'{self.task_name}-{method}{"-" + tag if tag else ""}-step{step}.jsonl'
    storage.write_atomic(storage.join(self.output_dir, name), ''.join(
        json.dumps({'input': example.get('inputs_pretokenized'),
                    'target': example.get('targets_pretokenized'),
                    'prediction': prediction}) + '\n'
        for example, prediction in zip(self.examples, predictions)))
    model_dir_lib.append_jsonl(storage.join(self.output_dir, f'{self.task_name}-metrics.jsonl'),
                               {'step': step, 'method': method, 'tag': tag, **metrics})


def evaluate_ensemble(evaluator: Evaluator, model, params, names: Sequence[str], step: int = 0,
                      tag: str = 'ensemble') -> dict[str, Any]:
  """N prompts of one task (a table [N, P, D] in `model`, `names` in table order) evaluated in
  one pass: each batch of B examples runs as N * B rows, row (n, b) with prompt n. Generate:
  majority vote (the paper's rule); rank: mean log-likelihood (ensemble.py, ties stated there).
  Returns '<method>/members' (each member's metrics), '<method>/member_mean' and
  '<method>/ensemble' (metrics dicts), and writes each member's and the ensemble's predictions.
  """
  from prompt_tuning.prompts import ensembles as ensemble
  from prompt_tuning.data import pipeline

  n = len(names)
  ev = evaluator
  results: dict[str, Any] = {'members': list(names)}

  def tiled(rows):
    return np.tile(rows, (n, 1)), np.repeat(np.arange(n, dtype=np.int32), len(rows))

  def metric(_, predictions):
    return pipeline.evaluate_predictions(ev.task_name, ev.examples, predictions)

  for method in ev.methods:
    member_preds: list[list] = [[None] * len(ev.examples) for _ in range(n)]
    scores = np.zeros((n, len(ev.examples), len(ev.info.labels) if method == 'rank' else 0))
    for indices, rows in ev._batches():
      preemption.check_interrupt()
      tokens, ids = tiled(rows)
      if method == 'generate':
        out = np.asarray(ev.decoding_config.generate(model, params, tokens, ev.target_length,
                                                     prompt_ids=ids))
        for m in range(n):
          for i, row in zip(indices, out[m * len(rows):][:len(indices)]):
            member_preds[m][i] = ev.vocab.decode([int(t) for t in row if t > PAD_ID])
      else:
        s = np.asarray(decoding.score_candidates(model, params, tokens, ev.label_targets,
                                                 prompt_ids=ids)).reshape(n, len(rows), -1)
        scores[:, indices] = s[:, :len(indices)]
    if method == 'rank':
      member_preds = [[ev.info.labels[c] for c in s.argmax(-1)] for s in scores]
      combined = [ev.info.labels[c] for c in ensemble.mean_log_likelihood(scores)]
    else:
      combined = ensemble.majority_vote(member_preds)
    report = ensemble.ensemble_scores(member_preds, ev.examples, metric, combined)
    results[f'{method}/members'] = report['members']
    results[f'{method}/member_mean'] = report['member_mean']
    results[f'{method}/ensemble'] = report['ensemble']
    for name, preds, metrics in zip(names, member_preds, report['members']):
      ev._write(method, step, f'{tag}-member-{_safe(name)}', preds, metrics)
    ev._write(method, step, tag, combined, report['ensemble'])
  return results


def _safe(name: str) -> str:
  """A member's name (often a path) as a file-name part."""
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name).strip('._')[-60:]
