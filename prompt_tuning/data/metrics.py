"""GLUE / SuperGLUE / MRQA metrics in NumPy, with T5's names and scale (t5/evaluation/metrics.py).

Every metric has SeqIO's signature `fn(targets, predictions) -> {name: value}` and reports
percentages (x100) like T5. Inputs are the postprocessed values (class ids, floats, dicts).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Sequence

import numpy as np

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def accuracy(targets, predictions) -> dict[str, float]:
  targets, predictions = np.asarray(targets), np.asarray(predictions)
  return {'accuracy': 100 * float(np.mean(targets == predictions))}


def _f1(tp: float, fp: float, fn: float) -> float:
  # sklearn's convention: an undefined F1 (no positives anywhere) is 0.
  denominator = 2 * tp + fp + fn
  return 2 * tp / denominator if denominator else 0.


def f1_score_with_invalid(targets, predictions) -> dict[str, float]:
  """Binary F1 of class 1; a prediction that is neither 0 nor 1 counts as the wrong class."""
  targets = np.asarray(targets)
  predictions = np.array(predictions)
  invalid = (predictions != 0) & (predictions != 1)
  predictions[invalid] = 1 - targets[invalid]
  tp = np.sum((predictions == 1) & (targets == 1))
  fp = np.sum((predictions == 1) & (targets != 1))
  fn = np.sum((predictions != 1) & (targets == 1))
  return {'f1': 100 * _f1(tp, fp, fn)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Macro F1 over classes 0..num_classes-1 (invalid predictions are misses of the true class)."""

  def fn(targets, predictions):
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    scores = []
    for c in range(num_classes):
      tp = np.sum((predictions == c) & (targets == c))
      fp = np.sum((predictions == c) & (targets != c))
      fn_ = np.sum((predictions != c) & (targets == c))
      scores.append(_f1(tp, fp, fn_))
    return {f'mean_{num_classes}class_f1': 100 * float(np.mean(scores))}

  return fn


def matthews_corrcoef(targets, predictions) -> dict[str, float]:
  """Matthews correlation over every label that occurs (sklearn's multiclass form) x100.

  An invalid prediction (-1) is an extra predicted class, as in T5's sklearn call.
  """
  targets, predictions = np.asarray(targets), np.asarray(predictions)
  labels = np.unique(np.concatenate([targets, predictions]))
  t = np.searchsorted(labels, targets)
  p = np.searchsorted(labels, predictions)
  confusion = np.zeros((len(labels), len(labels)), np.float64)
  np.add.at(confusion, (t, p), 1)
  true_sum, pred_sum = confusion.sum(1), confusion.sum(0)
  n, correct = confusion.sum(), np.trace(confusion)
  cov_tp = correct * n - true_sum @ pred_sum
  cov_pp = n * n - pred_sum @ pred_sum
  cov_tt = n * n - true_sum @ true_sum
  if cov_pp * cov_tt == 0:
    return {'matthews_corrcoef': 0.}
  return {'matthews_corrcoef': 100 * float(cov_tp / np.sqrt(cov_tt * cov_pp))}


def _pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denominator) if denominator else float('nan')


def rankdata(values) -> np.ndarray:
  """1-based ranks; tied values share the average of their ranks (scipy's 'average')."""
  values = np.asarray(values, np.float64)
  order = np.argsort(values, kind='mergesort')
  ordered = values[order]
  starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
  ends = np.r_[starts[1:], len(values)]
  ranks = np.empty(len(values), np.float64)
  ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
  return ranks


def pearson_corrcoef(targets, predictions) -> dict[str, float]:
  return {'pearson_corrcoef': 100 * _pearson(targets, predictions)}


def spearman_corrcoef(targets, predictions) -> dict[str, float]:
  return {'spearman_corrcoef': 100 * _pearson(rankdata(targets), rankdata(predictions))}


def all_match(targets, predictions) -> dict[str, float]:
  return {'exact_match': 100 * float(np.array_equal(targets, predictions))}


def mean_group_metric(metric_fn: MetricFn, group_key: str = 'group',
                      value_key: str = 'value') -> MetricFn:
  """Averages `metric_fn` over groups of targets (e.g. MultiRC answers of one question)."""

  def fn(targets, predictions):
    groups = collections.defaultdict(lambda: ([], []))
    for target, prediction in zip(targets, predictions):
      group = groups[target[group_key]]
      group[0].append(target[value_key])
      group[1].append(prediction[value_key])
    scores = collections.defaultdict(list)
    for group_targets, group_predictions in groups.values():
      for name, value in metric_fn(group_targets, group_predictions).items():
        scores[name].append(value)
    return {name: float(np.mean(values)) for name, values in scores.items()}

  return fn


def multirc_f1_over_all_answers(targets, predictions) -> dict[str, float]:
  """MultiRC's F1a: binary F1 over every answer option."""
  return f1_score_with_invalid([t['value'] for t in targets], [p['value'] for p in predictions])


multirc_exact_match = mean_group_metric(all_match)


def normalize_squad(text: str) -> str:
  """SQuAD v1.1's answer normalisation: lowercase, drop punctuation and articles, squash spaces."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  prediction_tokens, target_tokens = prediction.split(), target.split()
  common = collections.Counter(prediction_tokens) & collections.Counter(target_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.
  precision, recall = same / len(prediction_tokens), same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """Exact match and token F1, each the max over the gold answers, averaged x100."""
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')
  targets = [[normalize_squad(t) for t in answers] for answers in targets]
  predictions = [normalize_squad(p) for p in predictions]
  em = [max(float(t == p) for t in answers) for answers, p in zip(targets, predictions)]
  f1 = [max(_token_f1(t, p) for t in answers) for answers, p in zip(targets, predictions)]
  return {'em': 100 * float(np.mean(em)), 'f1': 100 * float(np.mean(f1))}


def deduplicate_metric(metric_fn: MetricFn, group_key: str = 'group',
                       value_key: str = 'value') -> MetricFn:
  """Scores only the first example of each group (ReCoRD repeats a query once per answer)."""

  def fn(targets, predictions):
    seen, kept_targets, kept_predictions = set(), [], []
    for target, prediction in zip(targets, predictions):
      if target[group_key] in seen:
        continue
      seen.add(target[group_key])
      kept_targets.append(target[value_key])
      kept_predictions.append(prediction[value_key])
    return metric_fn(kept_targets, kept_predictions)

  return fn


record = deduplicate_metric(squad)


# ============ MRQA: the official evaluation (mrqa_official_eval.py, as SQuAD v1.1's) ============

def exact_match_score(prediction: str, ground_truth: str) -> float:
  """1.0 if the two answers are equal after `normalize_squad`, else 0.0."""
  return float(normalize_squad(prediction) == normalize_squad(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
  """Token F1 of the normalised answers (bags of words); 0.0 when they share no token, so an
  empty prediction scores 0 (and so does one whose reference normalises to nothing)."""
  return _token_f1(normalize_squad(ground_truth), normalize_squad(prediction))


def mrqa(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """The MRQA shared task's EM and F1 (x100): per question the best score over its reference
  answers, averaged over the questions (a missing prediction would count 0 there; here every
  question has one)."""
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')
  if not targets:
    raise ValueError('no questions to score.')
  em, f1 = [], []
  for answers, prediction in zip(targets, predictions):
    if not answers:
      raise ValueError(f'a question without reference answers (prediction {prediction!r}).')
    em.append(max(exact_match_score(prediction, a) for a in answers))
    f1.append(max(f1_score(prediction, a) for a in answers))
  return {'em': 100 * float(np.mean(em)), 'f1': 100 * float(np.mean(f1))}
