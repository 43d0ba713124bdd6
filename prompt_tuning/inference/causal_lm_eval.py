"""Evaluating a prompt of a decoder-only model on a task: greedy generation and rank
classification over the task's label words, scored by the task's own metrics.

The decoder-only counterpart of evaluation.py's Evaluator: data/causal_lm.py makes the examples
(the prefix rows, cut as training cuts them) and the label candidates; inference/causal_lm.py
decodes and scores them on the model's KV cache; the predictions' text (`target_text`) goes
through the task's postprocessor and metrics. A prompt table [K, P, D] answers each example of a
mixture with its task's prompt (`prompt_ids`, by task name); a deep run's per-layer prompts
(`deep`) go with its one prompt. Rank classification ranks each task's examples over that
task's own label words, so a mixture's tasks may have different labels.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.data import batching
from prompt_tuning.inference import causal_lm
from prompt_tuning.models.decoder_only import DecoderOnly

METHODS = ('generate', 'rank')


class CausalLMEvaluator:
  """One task's (or mixture's) examples of a split, evaluated for any prompt of one model."""

  def __init__(self, task: str, split: str, tokenizer: Any, feature_lengths: Mapping[str, int],
               *, methods: Sequence[str] = ('generate',), batch_size: int = 32,
               max_examples: Optional[int] = None,
               prompt_ids: Optional[Mapping[str, int]] = None):
    from prompt_tuning.data import causal_lm as data
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
      raise ValueError(f'Unknown evaluation method(s) {unknown}; choose from {list(METHODS)}.')
    self.task, self.tokenizer, self.methods = task, tokenizer, tuple(methods)
    self.batch_size, self.target_length = batch_size, int(feature_lengths['targets'])
    self.examples, _ = data.get_eval_examples(task, split, tokenizer, feature_lengths,
                                              max_examples)
    self.prompt_ids = None if prompt_ids is None else np.array(
        [prompt_ids[ex['task']] for ex in self.examples], np.int32)
    # Rank classification: per task, (its label words, their ids [K, T], their lengths [K]).
    self.candidates: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    if 'rank' in self.methods:
      from prompt_tuning.data import tasks
      for name in dict.fromkeys(ex['task'] for ex in self.examples):
        words = data.label_candidates(name, tokenizer)  # (a task without labels: one line)
        self.candidates[name] = (list(tasks.TASK_INFO[name].labels or ()),
                                 batching.pad_rows(words),
                                 np.array([len(c) for c in words], np.int32))

  def _prompts(self, prompt: Any, index_B: np.ndarray) -> Any:
    """The batch's prompt: the one prompt [P, D], or each row's of a table [K, P, D]."""
    if prompt is None or np.ndim(prompt) == 2:
      return prompt
    if self.prompt_ids is None:
      raise ValueError('A table of prompts needs prompt_ids (the prompt of each task).')
    return np.asarray(prompt)[self.prompt_ids[np.maximum(index_B, 0)]]

  def predictions(self, model: DecoderOnly, params: Any, prompt: Any, method: str,
                  deep: Any = None) -> list[str]:
    """Each example's predicted text (generated, or the label word ranked first)."""
    from prompt_tuning.data import causal_lm as data
    out: list[str] = [''] * len(self.examples)
    everything = np.arange(len(self.examples))
    groups = [everything] if method == 'generate' else [  # rank: one task at a time
        everything[[ex['task'] == name for ex in self.examples]] for name in self.candidates]
    for indices in groups:
      for batch in data.eval_batches([self.examples[i] for i in indices], self.batch_size):
        local_B = batch['example_index']
        index_B = np.where(local_B >= 0, indices[np.maximum(local_B, 0)], -1)
        rows = self._prompts(prompt, index_B)
        if method == 'generate':
          ids_BxS = np.asarray(causal_lm.greedy(model, params, batch['inputs'], batch['lengths'],
                                                self.target_length, rows, deep))
          texts = [self.tokenizer.target_text(ids) for ids in ids_BxS]
        else:
          labels, candidates_KxT, lengths_K = self.candidates[self.examples[indices[0]]['task']]
          logp_BxK = np.asarray(causal_lm.score_candidates(
              model, params, batch['inputs'], batch['lengths'], candidates_KxT, lengths_K, rows,
              deep))
          texts = [labels[k] for k in np.argmax(logp_BxK, axis=1)]
        for i, text in zip(index_B, texts):
          if i >= 0:
            out[i] = text
    return out

  def evaluate(self, model: DecoderOnly, params: Any, prompt: Any = None,
               deep: Any = None) -> dict[str, float]:
    """'<method>/<metric>' for each method, e.g. {'generate/accuracy': ..., 'rank/accuracy':
    ...}, by the task's own postprocessor and metrics."""
    from prompt_tuning.data import causal_lm as data
    metrics = {}
    for method in self.methods:
      scores = data.evaluate_predictions(self.task, self.examples,
                                         self.predictions(model, params, prompt, method, deep))
      metrics.update({f'{method}/{k}': float(v) for k, v in scores.items()})
    return metrics
