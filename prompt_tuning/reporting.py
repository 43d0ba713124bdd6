"""What a run leaves for people: TensorBoard scalars, JSONL metrics, progress, a plot, a summary.

  MODEL_DIR/train/ and MODEL_DIR/eval/    TensorBoard event files
  MODEL_DIR/metrics.jsonl                 one line per logged train/eval record
  MODEL_DIR/plots/training.png            training loss and the eval metric against step
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Optional

import jax

log = logging.getLogger('prompt_tuning')


class Reporter:
  """Writes metrics on process 0 only; shows a progress bar on a terminal, log lines otherwise."""

  def __init__(self, model_dir: str, total_steps: int, start_step: int = 0,
               log_every: int = 50, main_metric: Optional[str] = None):
    self.model_dir = model_dir
    self.total_steps = total_steps
    self.log_every = log_every
    self.main_metric = main_metric
    self.enabled = jax.process_index() == 0
    self.train_history: list[tuple[int, float]] = []
    self.eval_history: list[tuple[int, dict]] = []
    self._writers: dict[str, Any] = {}
    self._bar = None
    self._start = time.time()
    if self.enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, desc='prompt tuning',
                       dynamic_ncols=True)

  def _writer(self, name: str):
    if name not in self._writers:
      from tensorboardX import SummaryWriter
      self._writers[name] = SummaryWriter(os.path.join(self.model_dir, name))
    return self._writers[name]

  def _append_jsonl(self, record: dict) -> None:
    with open(os.path.join(self.model_dir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')

  def train_metrics(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self.train_history.append((step, metrics['loss_per_token']))
    writer = self._writer('train')
    for key, value in metrics.items():
      writer.add_scalar(key, value, step)
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(loss=f"{metrics['loss_per_token']:.4f}",
                            acc=f"{metrics['accuracy']:.3f}")
    if step % self.log_every == 0 or step == self.total_steps:
      self._append_jsonl({'kind': 'train', 'step': step, **metrics})
      if self._bar is None:
        rate = step / max(time.time() - self._start, 1e-9)
        log.info('step %d/%d  loss/token %.4f  token acc %.3f  prompt norm %.2f  (%.1f steps/s)',
                 step, self.total_steps, metrics['loss_per_token'], metrics['accuracy'],
                 metrics['prompt_norm'], rate)

  def eval_metrics(self, step: int, metrics: dict[str, float], tag: str = 'eval') -> None:
    if not self.enabled:
      return
    self.eval_history.append((step, metrics))
    writer = self._writer(tag)
    for key, value in metrics.items():
      if isinstance(value, (int, float)):
        writer.add_scalar(key, value, step)
    self._append_jsonl({'kind': tag, 'step': step, **metrics})
    shown = ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                      for k, v in metrics.items())
    message = f'eval at step {step}: {shown}'
    if self._bar is not None:
      self._bar.write(message)
    else:
      log.info(message)

  def close(self) -> Optional[str]:
    """Flushes writers; returns the plot's path (or None when nothing was logged)."""
    if self._bar is not None:
      self._bar.close()
    for writer in self._writers.values():
      writer.close()
    if not self.enabled or not self.train_history:
      return None
    return plot(os.path.join(self.model_dir, 'plots', 'training.png'), self.train_history,
                self.eval_history, self.main_metric)


def plot(path: str, train: list[tuple[int, float]], evals: list[tuple[int, dict]],
         metric: Optional[str]) -> str:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig, ax = plt.subplots(figsize=(8, 4.5))
  ax.plot([s for s, _ in train], [v for _, v in train], color='tab:blue', lw=1)
  ax.set_xlabel('step')
  ax.set_ylabel('training loss per token', color='tab:blue')
  points = [(s, m[metric]) for s, m in evals if metric and metric in m]
  if points:
    ax2 = ax.twinx()
    ax2.plot([s for s, _ in points], [v for _, v in points], 'o-', color='tab:red')
    ax2.set_ylabel(f'eval {metric}', color='tab:red')
  ax.set_title('prompt tuning')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
