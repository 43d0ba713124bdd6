"""`Batcher`: a bounded queue of rows and one worker thread forming batches of one key (mixed
prompts) up to `max_batch_size` rows or `max_wait_ms`; `Metrics`: the counters and samples of
GET /metrics."""

import collections
import gc
import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from prompt_tuning.serve.config import ServeConfig
from prompt_tuning.serve.engine import Engine, Row
from prompt_tuning.serve.errors import RequestError

log = logging.getLogger('prompt_tuning')


class Batcher:
  """A bounded queue of rows and one worker thread that runs them in batches: the oldest row's
  key picks the batch, which takes that key's rows (oldest first) up to `max_batch_size`,
  waiting at most `max_wait_ms` after the oldest row arrived for more."""

  def __init__(self, run: Callable[[tuple, Sequence[Row]], list[Any]], config: ServeConfig,
               on_batch: Optional[Callable[[int, float], None]] = None):
    self.run, self.config, self.on_batch = run, config, on_batch
    self._rows: collections.deque[Row] = collections.deque()
    self._cond = threading.Condition()
    self._stopping = False
    self._thread = threading.Thread(target=self._work, name='prompt-tuning-batcher', daemon=True)
    self._thread.start()

  def submit(self, rows: Sequence[Row]) -> None:
    with self._cond:
      if self._stopping:
        raise RequestError(503, 'the server is shutting down.', {'Retry-After': '1'})
      if len(self._rows) + len(rows) > self.config.max_queue:
        raise RequestError(503, f'the queue is full ({len(self._rows)} rows waiting, at most '
                                f'{self.config.max_queue}); retry shortly.', {'Retry-After': '1'})
      self._rows.extend(rows)
      self._cond.notify()

  def queued(self) -> int:
    return len(self._rows)

  def _take(self) -> Optional[tuple[tuple, list[Row]]]:
    with self._cond:
      while not self._rows:
        if self._stopping:
          return None
        self._cond.wait(0.1)
      key = self._rows[0].key
      deadline = self._rows[0].enqueued + self.config.max_wait_ms / 1000
      while True:
        same = sum(1 for r in self._rows if r.key == key)
        left = deadline - time.monotonic()
        if same >= self.config.max_batch_size or left <= 0 or self._stopping:
          break
        self._cond.wait(left)
      batch: list[Row] = []
      rest: collections.deque[Row] = collections.deque()
      for row in self._rows:
        (batch if row.key == key and len(batch) < self.config.max_batch_size else rest).append(row)
      self._rows = rest
      return key, batch

  def _work(self) -> None:
    while True:
      taken = self._take()
      if taken is None:
        return
      key, batch = taken
      start = time.perf_counter()
      try:
        answers = self.run(key, batch)
      except Exception as e:  # pylint: disable=broad-except  # each request hears of it
        log.exception('batch failed')
        answers = [e] * len(batch)
      if self.on_batch is not None:
        self.on_batch(len(batch), time.perf_counter() - start)
      for row, answer in zip(batch, answers):
        if isinstance(answer, Exception):
          row.future.set_exception(answer)
        else:
          row.future.set_result(answer)

  def stop(self, timeout: float = 60.0) -> None:
    """Runs what is queued, then ends the worker."""
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    self._thread.join(timeout)


# ----------------------------------------------------------------------------------------------
# Metrics.


class Metrics:
  """Counters and bounded latency/batch-size samples for GET /metrics."""

  def __init__(self, keep: int = 10000):
    self._lock = threading.Lock()
    self.requests: collections.Counter[str] = collections.Counter()
    self.latencies_ms: collections.deque[float] = collections.deque(maxlen=keep)
    self.batch_sizes: collections.deque[int] = collections.deque(maxlen=keep)
    self.batch_ms: collections.deque[float] = collections.deque(maxlen=keep)
    self.batches, self.batch_seconds = 0, 0.0  # all batches (the samples keep the latest)
    self.rows = 0
    self.started = time.time()

  def request(self, status: int, seconds: Optional[float] = None, rows: int = 0) -> None:
    with self._lock:
      self.requests[str(status)] += 1
      if seconds is not None:
        self.latencies_ms.append(seconds * 1000)
      self.rows += rows

  def batch(self, size: int, seconds: float) -> None:
    with self._lock:
      self.batch_sizes.append(size)
      self.batch_ms.append(seconds * 1000)
      self.batches += 1
      self.batch_seconds += seconds

  def report(self, engine: Engine, batcher: Batcher) -> dict:
    def percentiles(samples) -> dict:  # None before the first sample (JSON has no NaN)
      return {f'p{q}': float(np.percentile(samples, q)) if samples else None
              for q in (50, 90, 99)}

    with self._lock:
      sizes = np.array(self.batch_sizes or [0])
      return {
          'uptime_s': round(time.time() - self.started, 1),
          'requests': dict(self.requests), 'rows': self.rows,
          'latency_ms': percentiles(self.latencies_ms),
          'batches': self.batches, 'batch_size_mean': float(sizes.mean()),
          'batch_size_max': int(sizes.max()),
          'batch_ms': percentiles(self.batch_ms),
          'batch_seconds': round(self.batch_seconds, 3), 'queued_rows': batcher.queued(),
          'compiled_shapes': len(engine.shapes), 'prompts': len(engine.store.snapshot().index),
          'gc': {'frozen_objects': gc.get_freeze_count(),
                 'full_collections': gc.get_stats()[2]['collections']}}
