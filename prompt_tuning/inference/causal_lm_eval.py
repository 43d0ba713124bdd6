"""Evaluating a prompt of a decoder-only model on a task: generation and rank classification
over the task's label words, scored by the task's own metrics.

The decoder-only counterpart of evaluation.py's Evaluator, sharing its EvaluatorBase (metrics,
one-pass ensembles, prediction files under `output_dir`): data/causal_lm.py makes the examples
(the prefix rows, cut as training cuts them) and the label candidates; a CausalPromptedModel
(causal_runner.py) decodes and scores them on the model's KV cache; the predictions' text
(`target_text`) goes through the task's postprocessor and metrics. A prompt table [K, P, D]
answers each example of a mixture with its task's prompt (`prompt_ids`, by task name); a deep
run's per-layer prompts go with the model. Rank classification ranks each task's examples over
that task's own label words, so a mixture's tasks may have different labels.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.data import batching
from prompt_tuning.inference import decoding as decoding_lib
from prompt_tuning.inference.causal_runner import CausalPromptedModel
from prompt_tuning.inference.evaluation import EvaluatorBase, check_methods


class CausalLMEvaluator(EvaluatorBase):
  """One task's (or mixture's) examples of a split, evaluated for any prompt of one model."""

  def __init__(self, task: str, split: str, tokenizer: Any, feature_lengths: Mapping[str, int],
               *, methods: Sequence[str] = ('generate',), batch_size: int = 32,
               max_examples: Optional[int] = None,
               prompt_ids: Optional[Mapping[str, int]] = None,
               decoding: decoding_lib.DecodingConfig = decoding_lib.DecodingConfig(),
               output_dir: Optional[str] = None, buckets: Optional[Sequence[int]] = None):
    """`buckets`: the prefix widths batches are padded to (None: auto buckets up to the longest
    prefix); `output_dir`: where predictions and metrics go (None: nowhere)."""
    from prompt_tuning.data import causal_lm as data
    check_methods(methods)
    self.task_name, self.tokenizer, self.methods = task, tokenizer, tuple(methods)
    self.batch_size, self.target_length = batch_size, int(feature_lengths['targets'])
    self.decoding, self.output_dir, self.buckets = decoding, output_dir, buckets
    self.examples, _ = data.get_eval_examples(task, split, tokenizer, feature_lengths,
                                              max_examples)
    self.prompt_ids = self._row_prompts(split, prompt_ids)
    self.rows = [ex['inputs'] for ex in self.examples]
    # Rank classification: per task, (its label words, their ids [K, T], their lengths [K]).
    self.candidates: dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]] = {}
    if 'rank' in self.methods:
      from prompt_tuning.data import tasks
      for name in dict.fromkeys(ex['task'] for ex in self.examples):
        words = data.label_candidates(name, tokenizer)  # (a task without labels: one line)
        self.candidates[name] = (tuple(tasks.TASK_INFO[name].labels or ()),
                                 batching.pad_rows(words),
                                 np.array([len(c) for c in words], np.int32))
    # (an ensemble's mean log-likelihood names a class of the first task's labels)
    self.labels = next(iter(self.candidates.values()))[0] if self.candidates else ()

  def _run(self, model: CausalPromptedModel, method: str, members: int = 0) -> np.ndarray:
    if method == 'generate':
      return model.generate_rows(self.rows, self.decoding, self.target_length,
                                 batch_size=self.batch_size, buckets=self.buckets,
                                 prompt_ids_N=self.prompt_ids, members=members)
    # Rank: each task's rows over its own candidates; [.., N, K_max], -inf past a task's labels.
    widest = max(len(labels) for labels, _, _ in self.candidates.values())
    out: Optional[np.ndarray] = None
    for name, (_, candidates_KxT, lengths_K) in self.candidates.items():
      index = np.array([i for i, ex in enumerate(self.examples) if ex['task'] == name])
      scores = model.score_rows(
          [self.rows[i] for i in index], candidates_KxT, lengths_K, batch_size=self.batch_size,
          buckets=self.buckets, members=members,
          prompt_ids_N=None if self.prompt_ids is None else self.prompt_ids[index])
      if out is None:
        out = np.full(scores.shape[:-2] + (len(self.rows), widest), -np.inf, scores.dtype)
      out[..., index, :scores.shape[-1]] = scores
    assert out is not None
    return out

  def _answers(self, method: str, outputs: np.ndarray) -> list[str]:
    if method == 'generate':
      return [self.tokenizer.target_text(ids) for ids in outputs]
    return [self.candidates[ex['task']][0][k]
            for ex, k in zip(self.examples, np.argmax(outputs, axis=-1))]

  def predictions(self, model: CausalPromptedModel, method: str) -> list[str]:
    """Each example's predicted text (generated, or the label word ranked first)."""
    return self._answers(method, self._run(model, method))
