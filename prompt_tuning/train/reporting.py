"""What a run leaves for people: TensorBoard scalars, JSONL metrics, progress, a plot, the best
prompt so far, a summary.

  MODEL_DIR/train/ and MODEL_DIR/eval/    TensorBoard event files
  MODEL_DIR/metrics.jsonl                 one line per logged train/eval record
  MODEL_DIR/plots/training.png            training loss and the eval metric against step
  MODEL_DIR/best/                         the prompt with the best main eval metric (BestPrompt)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

import jax
import numpy as np

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import records
from prompt_tuning.prompts import files as prompt_files
from prompt_tuning import storage
from prompt_tuning.storage import save_atomic, write_atomic

log = logging.getLogger('prompt_tuning')


class HeldLogs(logging.Filter):
  """Holds back log lines while a run checks its inputs: a run stopped by bad input prints its
  one error line alone; one that starts prints the held lines (`release`) before it writes."""

  def __init__(self) -> None:
    super().__init__()
    self.records: list[logging.LogRecord] = []
    self.handlers: list[logging.Handler] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if not any(r is record for r in self.records):
      self.records.append(record)
    return False

  def __enter__(self) -> 'HeldLogs':
    self.handlers = list(logging.getLogger().handlers)
    for handler in self.handlers:
      handler.addFilter(self)
    return self

  def release(self) -> None:
    self._detach()
    for record in self.records:
      for handler in self.handlers:
        if record.levelno >= handler.level:
          handler.handle(record)
    self.records = []

  def _detach(self) -> None:
    for handler in self.handlers:
      handler.removeFilter(self)

  def __exit__(self, *exc) -> None:  # the error goes on
    self._detach()  # not released: the run stopped before writing, its error says why


class Reporter:
  """Writes metrics on process 0 only; shows a progress bar on a terminal, log lines otherwise.

  It starts on its first record, after the training loop repaired MODEL_DIR: a resumed run
  continues the history in metrics.jsonl, and TensorBoard drops the events of steps that are
  redone (purge_step).
  """

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
    self._opened = 0  # writers opened so far
    self._bar = None
    self._start_step = start_step
    self._started = False
    self._start = time.time()
    # TensorBoard writers append to files, which object storage cannot do: for a URL MODEL_DIR
    # they write here, and each events file is uploaded whole when its writer is closed.
    self._staging: Optional[str] = None

  def _ensure_started(self) -> None:
    if self._started or not self.enabled:
      return
    self._started = True
    for record in records.read_jsonl(storage.join(self.model_dir, model_dir_lib.METRICS)):
      if record.get('kind') == 'train' and 'loss_per_token' in record:
        self.train_history.append((record['step'], record['loss_per_token']))
      elif record.get('kind') == 'eval':
        self.eval_history.append((record['step'], {k: v for k, v in record.items()
                                                   if k not in ('kind', 'step')}))
    latest = model_dir_lib.latest_step(self.model_dir)
    self._start_step = latest if latest is not None else self._start_step
    self._purge = {'train': self._start_step + 1,
                   'eval': self._start_step + int(
                       model_dir_lib.eval_done(self.model_dir, self._start_step))}
    if sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=self.total_steps, initial=self._start_step, desc='prompt tuning',
                       dynamic_ncols=True)

  def _writer(self, name: str):
    if name not in self._writers:
      from tensorboardX import SummaryWriter
      # Only a run's first writer purges the events of redone steps; writers reopened after a
      # flush continue in a new events file, named apart (tensorboardX's names only differ by
      # the second, and a same-named file would be overwritten).
      self._opened += 1
      log_dir = storage.join(self.model_dir, name)
      if storage.is_remote(self.model_dir):
        if self._staging is None:
          self._staging = tempfile.mkdtemp(prefix='prompt-tuning-events-')
        log_dir = os.path.join(self._staging, name)
      self._writers[name] = SummaryWriter(log_dir,
                                          purge_step=self._purge.pop(name, None),
                                          filename_suffix=f'.{os.getpid()}.{self._opened}')
    return self._writers[name]

  def _close_writers(self, names: Optional[list[str]] = None) -> None:
    for name in list(self._writers) if names is None else names:
      if name in self._writers:
        self._writers.pop(name).close()
        self._upload(name)

  def _upload(self, name: str) -> None:
    """A URL MODEL_DIR: the closed writer's events files, each one object, then gone here."""
    if self._staging is None or not os.path.isdir(os.path.join(self._staging, name)):
      return
    local = os.path.join(self._staging, name)
    for file in sorted(os.listdir(local)):
      path = os.path.join(local, file)
      with open(path, 'rb') as f:
        storage.write_atomic(storage.join(self.model_dir, name, file), f.read())
      os.remove(path)

  def _append_jsonl(self, record: dict) -> None:
    records.append_jsonl(storage.join(self.model_dir, model_dir_lib.METRICS), record)

  def train_metrics(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._ensure_started()
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
        rate = (step - self._start_step) / max(time.time() - self._start, 1e-9)
        norm = 'prompt_norm' if 'prompt_norm' in metrics else 'param_norm'  # model tuning's
        log.info('step %d/%d  loss/token %.4f  token acc %.3f  %s %.2f  (%.1f steps/s)',
                 step, self.total_steps, metrics['loss_per_token'], metrics['accuracy'],
                 norm.replace('_', ' '), metrics[norm], rate)

  def eval_metrics(self, step: int, metrics: dict[str, float], tag: str = 'eval') -> None:
    """Records an evaluation; its metrics.jsonl line is written last and marks it complete."""
    if not self.enabled:
      return
    self._ensure_started()
    self.eval_history.append((step, metrics))
    writer = self._writer(tag)
    for key, value in metrics.items():
      if isinstance(value, (int, float)):
        writer.add_scalar(key, value, step)
    self._close_writers([tag])  # durable before the record that marks this evaluation done
    self._append_jsonl({'kind': tag, 'step': step, **metrics})
    shown = ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                      for k, v in metrics.items())
    message = f'eval at step {step}: {shown}'
    if self._bar is not None:
      self._bar.write(message)
    else:
      log.info(message)

  def flush(self) -> None:
    """Makes what was logged durable (at every checkpoint, evaluation and signal).

    tensorboardX writes from a background thread, and its `flush` covers only the events that
    thread has already dequeued; closing drains the queue. The next record reopens the writer.
    """
    self._close_writers()

  def close(self) -> Optional[str]:
    """Flushes writers; returns the plot's path (or None when nothing was logged)."""
    if self._bar is not None:
      self._bar.close()
    self._close_writers()
    if self._staging is not None:
      shutil.rmtree(self._staging, ignore_errors=True)
      self._staging = None
    if not self.enabled or not self.train_history:
      return None
    return plot(storage.join(self.model_dir, 'plots', 'training.png'), self.train_history,
                self.eval_history, self.main_metric)


def plot(path: str, train: list[tuple[int, float]], evals: list[tuple[int, dict]],
         metric: Optional[str]) -> str:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

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
  save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format='png'))
  plt.close(fig)
  return path


class BestPrompt:
  """Keeps the prompt with the best main eval metric at MODEL_DIR/best/."""

  def __init__(self, model_dir: str, metric: Optional[str]):
    self.dir = storage.join(model_dir, model_dir_lib.BEST)
    self.metric = metric
    self.record: Optional[dict] = None
    self.load()

  def load(self) -> None:
    path = storage.join(self.dir, model_dir_lib.BEST_METRICS)
    if self.metric and storage.exists(path):
      self.record = json.loads(storage.read_text(path))

  def update(self, step: int, metrics: dict, prompt_value) -> None:
    if not self.metric or self.metric not in metrics or jax.process_index() != 0:
      return
    self.load()  # what a previous process of this run saved counts too
    value = float(metrics[self.metric])
    if self.record is not None and value <= self.record['value']:
      return
    record = {'step': step, 'metric': self.metric, 'value': value, 'metrics': metrics}
    # The prompt first: a kill between the two writes leaves a metric that a rerun beats again.
    if prompt_value is not None:  # (model tuning: the metric and step only)
      prompt_files.write_npy(storage.join(self.dir, model_dir_lib.NUMPY_NAME),
                             np.asarray(jax.device_get(prompt_value)))
    write_atomic(storage.join(self.dir, model_dir_lib.BEST_METRICS),
                 json.dumps(record, indent=2, default=float))
    self.record = record


def print_summary(summary: dict) -> None:
  model = summary.get('tuning') == 'model'
  lines = [f"{'Model' if model else 'Prompt'} tuning of {summary['task']} finished "
           f"({summary['steps']} steps)."]
  if summary.get('final_eval'):
    lines.append('  final eval: ' + ', '.join(
        f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
        for k, v in summary['final_eval'].items()))
  if summary.get('best'):
    b = summary['best']
    lines.append(f"  best {b['metric']} {b['value']:.4f} at step {b['step']}: "
                 f"{storage.join(summary['model_dir'], model_dir_lib.BEST)}")
  lines.append(f"  {'model' if model else 'prompt'} checkpoints (orbax): {summary['checkpoints']}")
  if not model:
    lines.append(f"  numpy prompts:              {summary['numpy_checkpoints']}")
  for fmt, path in summary.get('exports', {}).items():
    lines.append(f'  export ({fmt}):{" " * (18 - len(fmt))}{path}')
  if summary.get('plot'):
    lines.append(f"  plot:                       {summary['plot']}")
  lines.append(f"  TensorBoard:                tensorboard --logdir {summary['tensorboard']}")
  print('\n'.join(lines))
