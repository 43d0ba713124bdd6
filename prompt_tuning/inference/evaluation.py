"""Evaluation the paper's way: generate the label text (and/or rank the verbalizers), then T5's
metrics. Owns the Evaluator (one task's examples, scored for any model and prompt), what it
shares with the decoder-only one (EvaluatorBase: metrics, one-pass ensembles, prediction files)
and infer's prediction file (`write_inference`).

Examples are tokenized once; batches have a fixed shape so each decode/score function compiles
once. Predictions go to MODEL_DIR/inference_eval/<task>-<method>-<step>.jsonl.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, Mapping, Optional, Sequence, get_args

import jax
import numpy as np

from prompt_tuning import storage
from prompt_tuning.data import batching
from prompt_tuning.inference import decoding, runner
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import records

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


class EvaluatorBase:
  """What T5's Evaluator and the decoder-only one (causal_lm_eval.py) share: the methods run over
  the examples, the task's metrics, one-pass ensembles and the files they write. A subclass sets
  `task_name`, `examples`, `methods`, `labels`, `output_dir` and runs a model (`_run`,
  `_answers`)."""

  task_name: str
  examples: list[dict]
  methods: tuple[str, ...]
  labels: tuple[str, ...]
  output_dir: Optional[str]

  def _run(self, model: Any, method: str, members: int = 0) -> np.ndarray:
    """Generated ids [N, T] or rank scores [N, C] per example ([M, N, ...] with `members`)."""
    raise NotImplementedError

  def _answers(self, method: str, outputs: np.ndarray) -> list[str]:
    """Each example's answer: its generated text, or the label of its best-scoring verbalizer."""
    raise NotImplementedError

  def _row_prompts(self, split: str, prompt_ids: Optional[Mapping[str, int]]
                   ) -> Optional[np.ndarray]:
    """Each example's prompt in the model's table (by its task), None without `prompt_ids`;
    checks there are examples and a prompt for each task."""
    if not self.examples:
      raise ValueError(f'Task {self.task_name!r} has no {split!r} examples to evaluate.')
    if prompt_ids is None:
      return None
    unknown = sorted({e['task'] for e in self.examples} - set(prompt_ids))
    if unknown:
      raise ValueError(f'No prompt for task(s) {unknown} of {self.task_name!r}; the prompts are '
                       f'{sorted(prompt_ids)}.')
    return np.array([prompt_ids[e['task']] for e in self.examples], np.int32)

  def generate(self, model: Any) -> list[str]:
    return self._answers('generate', self._run(model, 'generate'))

  def rank(self, model: Any) -> list[str]:
    return self._answers('rank', self._run(model, 'rank'))

  def evaluate(self, model: Any, step: int, tag: str = '') -> dict[str, Any]:
    """Runs every configured method; returns '<method>/<metric>' -> value."""
    from prompt_tuning.data import pipeline

    results: dict[str, Any] = {}
    for method in self.methods:
      predictions = self._answers(method, self._run(model, method))
      metrics = pipeline.evaluate_predictions(self.task_name, self.examples, predictions)
      for key, value in metrics.items():
        results[f'{method}/{key}'] = value
      self._write(method, step, tag, predictions, metrics)
    return results

  def evaluate_ensemble(self, model: Any, names: Sequence[str], step: int = 0,
                        tag: str = 'ensemble') -> dict[str, Any]:
    """N prompts of one task (the first N of `model`'s table, `names` in table order) evaluated in
    one pass: each batch of B examples runs as N * B rows, row (n, b) with prompt n. Generate:
    majority vote (the paper's rule); rank: mean log-likelihood (prompts/ensembles.py, ties stated
    there). Returns '<method>/members' (each member's metrics), '<method>/member_mean' and
    '<method>/ensemble' (metrics dicts), and writes each member's and the ensemble's predictions.
    """
    from prompt_tuning.data import pipeline
    from prompt_tuning.prompts import ensembles

    results: dict[str, Any] = {'members': list(names)}

    def metric(_, predictions):
      return pipeline.evaluate_predictions(self.task_name, self.examples, predictions)

    for method in self.methods:
      outputs = self._run(model, method, members=len(names))
      member_preds = [self._answers(method, member) for member in outputs]
      if method == 'rank':
        combined = [self.labels[c] for c in ensembles.mean_log_likelihood(outputs)]
      else:
        combined = ensembles.majority_vote(member_preds)
      report = ensembles.ensemble_scores(member_preds, self.examples, metric, combined)
      results[f'{method}/members'] = report['members']
      results[f'{method}/member_mean'] = report['member_mean']
      results[f'{method}/ensemble'] = report['ensemble']
      for name, preds, metrics in zip(names, member_preds, report['members']):
        self._write(method, step, f'{tag}-member-{_safe(name)}', preds, metrics)
      self._write(method, step, tag, combined, report['ensemble'])
    return results

  def _write(self, method, step, tag, predictions, metrics):
    if self.output_dir is None or jax.process_index() != 0:
      return
    name = model_dir_lib.predictions_file(self.task_name, method, step, tag)
    storage.write_atomic(storage.join(self.output_dir, name), ''.join(
        json.dumps({'input': example.get('inputs_pretokenized'),
                    'target': example.get('targets_pretokenized'),
                    'prediction': prediction}) + '\n'
        for example, prediction in zip(self.examples, predictions)))
    records.append_jsonl(
        storage.join(self.output_dir, model_dir_lib.eval_metrics_file(self.task_name)),
        {'step': step, 'method': method, 'tag': tag, **metrics})


def write_inference(output_dir: str, task: str, split: str, step: int,
                    examples: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> str:
  """`prompt-tuning infer`'s predictions of a split: {"input", "prediction"} per example, in
  order, at output_dir/<task>-<split>-step<step>.jsonl; returns the path."""
  path = storage.join(output_dir, model_dir_lib.inference_file(task, split, step))
  storage.write_atomic(path, ''.join(
      json.dumps({'input': example.get('inputs_pretokenized'), 'prediction': text}) + '\n'
      for example, text in zip(examples, texts)))
  print(f'wrote {len(texts)} predictions to {path}')
  return path


class Evaluator(EvaluatorBase):
  """Holds one task's tokenized eval examples; evaluates any PromptedModel on them."""

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
    self.prompt_ids = self._row_prompts(split, prompt_ids)
    self.input_length = feature_lengths['inputs']
    self.target_length = feature_lengths['targets']
    self.inputs = batching.pad_rows([e['inputs'] for e in self.examples], width=self.input_length)
    self.labels: tuple[str, ...] = tuple(self.info.labels or ()) if self.info else ()
    if 'rank' in self.methods:
      if not self.labels:
        raise ValueError(f'Rank classification needs the label verbalizers of {task_name!r}; '
                         f'it has none (use the generate method).')
      self.label_targets = runner.label_targets(self.vocab, self.labels, self.target_length,
                                                prefix=tasks.target_prefix(task_name))
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

  def _run(self, model: runner.PromptedModel, method: str, members: int = 0) -> np.ndarray:
    """Generated ids [N, T] or rank scores [N, C] per example ([M, N, ...] with `members`)."""
    buckets = None if self.buckets is None else self.buckets['inputs']
    if method == 'generate':
      return model.generate_rows(self.inputs, self.decoding_config, self.target_length,
                                 batch_size=self.batch_size, buckets=buckets,
                                 prompt_ids_N=self.prompt_ids, members=members)
    return model.score_rows(self.inputs, self.label_targets, batch_size=self.batch_size,
                            buckets=buckets, prompt_ids_N=self.prompt_ids, members=members)

  def _answers(self, method: str, outputs: np.ndarray) -> list[str]:
    """Each example's answer: its generated text, or the label of its best-scoring verbalizer."""
    if method == 'generate':
      return [runner.text(self.vocab, row) for row in outputs]
    return [self.labels[k] for k in outputs.argmax(-1)]


def _safe(name: str) -> str:
  """A member's name (often a path) as a file-name part."""
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name).strip('._')[-60:]


def flat_ensemble_report(results: dict) -> dict:
  """evaluate_ensemble's report as flat scalars: '<method>/ensemble/<metric>',
  '<method>/member_mean/<metric>', '<method>/member<n>/<metric>'."""
  flat = {}
  for key, value in results.items():
    if key == 'members':
      continue
    method, part = key.split('/', 1)
    parts = ([(f'member{n}', v) for n, v in enumerate(value)] if part == 'members'
             else [(part, value)])
    for label, metrics in parts:
      flat.update({f'{method}/{label}/{k}': v for k, v in metrics.items()})
  return flat
