"""Evaluating a prompt of a decoder-only model on a task: generation and rank classification
over the task's label words, scored by the task's own metrics.

The decoder-only counterpart of evaluation.py's Evaluator, sharing its EvaluatorBase (metrics,
one-pass ensembles, prediction files under `output_dir`): data/causal_lm.py makes the examples
(the prefix rows, cut as training cuts them) and the label candidates; a CausalPromptedModel
(causal_runner.py) decodes and scores them on the model's KV cache; the predictions' text
(`target_text`) goes through the task's postprocessor and metrics. A prompt table [K, P, D]
answers each example of a mixture with its task's prompt (`prompt_ids`, by task name).
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
    self.labels = ()
    if 'rank' in self.methods:
      from prompt_tuning.data import tasks
      candidates = data.label_candidates(task, tokenizer)  # (a task without labels: one line)
      self.labels = tuple(tasks.TASK_INFO[task].labels or ())
      self.candidates_KxT = batching.pad_rows(candidates)
      self.candidate_lengths_K = np.array([len(c) for c in candidates], np.int32)

  def _run(self, model: CausalPromptedModel, method: str, members: int = 0) -> np.ndarray:
    if method == 'generate':
      return model.generate_rows(self.rows, self.decoding, self.target_length,
                                 batch_size=self.batch_size, buckets=self.buckets,
                                 prompt_ids_N=self.prompt_ids, members=members)
    return model.score_rows(self.rows, self.candidates_KxT, self.candidate_lengths_K,
                            batch_size=self.batch_size, buckets=self.buckets,
                            prompt_ids_N=self.prompt_ids, members=members)

  def _answers(self, method: str, outputs: np.ndarray) -> list[str]:
    if method == 'generate':
      return [self.tokenizer.target_text(ids) for ids in outputs]
    return [self.labels[k] for k in np.argmax(outputs, axis=-1)]

  def predictions(self, model: CausalPromptedModel, method: str) -> list[str]:
    """Each example's predicted text (generated, or the label word ranked first)."""
    return self._answers(method, self._run(model, method))
