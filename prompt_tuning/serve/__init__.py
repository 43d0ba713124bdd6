"""`prompt-tuning serve`: one frozen model answering many tasks over HTTP, batching requests
across tasks. TF-free (raw task examples use the data layer when it is installed).

  PromptStore   the named prompts (a prompt library, changed at run time) as one table whose
                capacity grows in powers of two, so adding a prompt rarely changes a shape
  Engine        runs a batch of rows of any prompts: generate (DecodingConfig) or rank
  Batcher       a bounded queue of rows and one worker thread forming mixed-task batches up to
                `max_batch_size` rows or `max_wait_ms`, padded length-aware
  Server        what the HTTP handlers share
  serve         the command: loads everything before listening, serves on uvicorn until
                SIGTERM/SIGINT, answers every request it received, exits 0

The HTTP API is serve_api.py (native /v1/predict and OpenAI's /v1/completions and /v1/models);
what a request may hold, serve_requests.py. Bad requests get a 4xx whose error names the field;
the server keeps serving.
"""

import collections
import concurrent.futures
import dataclasses
import gc
import hmac
import logging
import os
import posixpath
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.data import batching
from prompt_tuning.inference import decoding
from prompt_tuning import storage
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.serve.config import ServeConfig  # noqa: F401  (serve's config, re-exported)
from prompt_tuning.data.vocab import EOS_ID

log = logging.getLogger('prompt_tuning')


class RequestError(Exception):
  """A request the server refuses: HTTP `status`, a message naming the problem and `param`,
  the request field at fault ('decoding.num_beams', 'inputs[2]') where there is one."""

  def __init__(self, status: int, message: str, headers: Optional[dict] = None,
               param: Optional[str] = None):
    super().__init__(message)
    self.status = status
    self.headers = headers or {}
    self.param = param


# ----------------------------------------------------------------------------------------------
# Prompts.


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """The prompts one batch runs with: a table [capacity, P, D] and name -> row."""
  version: int
  index: Mapping[str, int]
  table: np.ndarray


def _library_dir(directory: str) -> str:
  """The prompt library folder as paths are resolved against it: a local folder with its links
  resolved, a URL as it is (without a trailing '/')."""
  return directory.rstrip('/') if storage.is_remote(directory) else os.path.realpath(directory)


class PromptStore:
  """Named prompts of one length and width, changed at run time without disturbing batches in
  flight (each batch runs with the snapshot it started with)."""

  def __init__(self, library: Mapping[str, library_lib.LibraryPrompt], d_model: int,
               directory: Optional[str] = None, length: Optional[int] = None):
    self.d_model = d_model
    self.directory = _library_dir(directory) if directory else None
    first = next(iter(library.values()), None)
    self.length = length or (first.value.shape[0] if first is not None else None)
    if self.length is None:
      raise ValueError('serve needs at least one prompt (--prompts) or a --prompt_length.')
    self._lock = threading.Lock()
    self._prompts: dict[str, library_lib.LibraryPrompt] = {}
    self._version = 0
    for prompt in library.values():
      self._check(prompt.name, prompt.value)
      self._prompts[prompt.name] = prompt
    self._snapshot = self._build()

  def _check(self, name: str, value: np.ndarray, param: Optional[str] = None) -> None:
    if value.ndim != 2 or value.shape[1] != self.d_model:
      raise RequestError(400, f'prompt {name!r} has shape {list(value.shape)} but the model '
                              f'takes [length, {self.d_model}] prompts (d_model {self.d_model}).',
                         param=param)
    if value.shape[0] != self.length:
      raise RequestError(400, f'prompt {name!r} has length {value.shape[0]} but the served '
                              f'prompts have length {self.length}.', param=param)

  def _build(self) -> Snapshot:
    names = list(self._prompts)
    capacity = 2
    while capacity < len(names):
      capacity *= 2
    table = np.zeros((capacity, self.length, self.d_model), np.float32)
    for k, name in enumerate(names):
      table[k] = self._prompts[name].value
    self._version += 1
    return Snapshot(self._version, {n: k for k, n in enumerate(names)}, table)

  def snapshot(self) -> Snapshot:
    return self._snapshot

  def has(self, name: str) -> bool:
    return name in self._snapshot.index

  def describe(self) -> list[dict]:
    with self._lock:
      return [{'name': p.name, 'length': int(p.value.shape[0]), 'source': p.source,
               'kind': p.kind} for p in self._prompts.values()]

  def add(self, name: str, *, path: Optional[str] = None, values: Any = None) -> dict:
    _safe_name(name)
    if (path is None) == (values is None):
      raise RequestError(400, 'give the prompt as "path" (inside the prompt library) or '
                              '"values" ([length][d_model] numbers), not both or neither.',
                         param='path')
    if path is not None:
      value, source, kind = self._load_path(name, path)
    else:
      try:
        value = np.asarray(values, np.float32)
      except (TypeError, ValueError):
        raise RequestError(400, f'prompt {name!r}: "values" must be a [length][d_model] array of '
                                f'numbers.', param='values') from None
      if not np.all(np.isfinite(value)):
        raise RequestError(400, f'prompt {name!r}: "values" holds non-finite numbers.',
                           param='values')
      source, kind = 'request', 'values'
    self._check(name, value, 'path' if path is not None else 'values')
    with self._lock:
      if name in self._prompts:
        raise RequestError(409, f'a prompt named {name!r} exists; DELETE it first.',
                           param='name')
      self._prompts[name] = library_lib.LibraryPrompt(name, value, source, kind)
      self._snapshot = self._build()
    return {'name': name, 'length': int(value.shape[0]), 'source': source, 'kind': kind}

  def _load_path(self, name: str, path: str) -> tuple[np.ndarray, str, str]:
    if self.directory is None:
      raise RequestError(400, 'the server has no prompt library folder (--prompts); send '
                              '"values" instead of "path".', param='path')
    if not isinstance(path, str) or os.path.isabs(path) or storage.is_remote(path):
      raise RequestError(400, f'"path" {path!r} must be relative to the prompt library folder.',
                         param='path')
    if storage.is_remote(self.directory):  # object storage: no links, the name decides
      relative = posixpath.normpath(path)
      if relative == '..' or relative.startswith('../'):
        raise RequestError(400, f'"path" {path!r} leads out of the prompt library folder.',
                           param='path')
      full = storage.join(self.directory, relative) if relative != '.' else self.directory
    else:
      full = os.path.realpath(os.path.join(self.directory, path))
      if os.path.commonpath([full, self.directory]) != self.directory:
        raise RequestError(400, f'"path" {path!r} leads out of the prompt library folder.',
                           param='path')
    try:
      entries = library_lib.load_library({name: full}, self.d_model)
    except library_lib.LibraryError as e:
      raise RequestError(400, str(e).replace(full, path), param='path') from None
    entry = next(iter(entries.values()))
    if entry.value.ndim != 2:
      raise RequestError(400, f'{path}: holds a table of prompts; name one file.',
                         param='path')
    return entry.value, path, entry.kind

  def remove(self, name: str) -> None:
    _safe_name(name)
    with self._lock:
      if name not in self._prompts:
        raise RequestError(404, f'no prompt named {name!r}.', param='name')
      del self._prompts[name]
      self._snapshot = self._build()


def _safe_name(name: Any) -> bool:
  try:
    library_lib.check_name(name)
  except library_lib.LibraryError as e:
    raise RequestError(400, str(e), param='name') from None
  return True


# ----------------------------------------------------------------------------------------------
# Running batches.


@dataclasses.dataclass
class Row:
  """One input of a request: its tokens, prompt, and where its answer goes."""
  key: tuple            # rows of one key share a batch: ('generate', decoding) / ('rank', labels)
  tokens: list[int]
  prompt: str
  future: concurrent.futures.Future
  enqueued: float = dataclasses.field(default_factory=time.monotonic)


class Engine:
  """The frozen model with a PromptStore's table: runs a batch of rows, any prompts mixed."""

  def __init__(self, model_config: Any, frozen: dict, store: PromptStore, vocab: Any,
               config: ServeConfig, placement: str = 'prefix', freeze_heap: bool = False):
    """freeze_heap: after a batch that compiled, move the heap out of the garbage collector's
    reach (see _freeze_heap; for a server process, not for a library caller's)."""
    from prompt_tuning.models import t5
    from prompt_tuning.models.prompt import PromptConfig
    self.model_config, self.frozen, self.store = model_config, frozen, store
    self.vocab, self.config = vocab, config
    self.placement, self.freeze_heap = placement, freeze_heap
    self._modules: dict[int, Any] = {}
    self._params: tuple[int, Any] = (-1, None)  # (snapshot version, frozen + its table)
    self._t5, self._prompt_config = t5, PromptConfig
    # Few shapes, each compiled once: widths in powers of two; rows see ServeConfig.fine_shapes.
    import jax
    self.fine = (jax.default_backend() == 'cpu' if config.fine_shapes is None
                 else config.fine_shapes)
    step = 2 if self.fine else 4
    self.row_sizes = sorted({min(step ** i, config.max_batch_size) for i in range(16)})
    self.buckets = tuple(sorted({min(2 ** i, config.max_input_length) for i in range(3, 16)}))
    self.shapes: set[tuple] = set()  # (kind, program, rows, width, capacity): each compiles once

  def module(self, capacity: int):
    if capacity not in self._modules:
      self._modules[capacity] = self._t5.EncoderDecoder(
          self.model_config, self._prompt_config(self.store.length, self.placement, capacity))
    return self._modules[capacity]

  def warm_up(self) -> int:
    """Compiles greedy decoding for every batch shape (row sizes x widths) at each of
    ServeConfig.warmup_decode_lengths, with the current prompt table; the shapes it compiled."""
    snap = self.store.snapshot()
    if not snap.index:
      return 0
    before, name = len(self.shapes), next(iter(snap.index))
    for length in self.config.warmup_decode_lengths:
      key = ('generate', decoding.DecodingConfig(), length)
      for width in self.buckets:
        for size in self.row_sizes:
          rows = [Row(key, [EOS_ID], name, concurrent.futures.Future()) for _ in range(size)]
          self._run(key, rows, width, snap)
    return len(self.shapes) - before

  def run(self, key: tuple, rows: Sequence[Row]) -> list[Any]:
    """Each row's answer (a RequestError for a row whose prompt was removed meanwhile)."""
    snap = self.store.snapshot()
    answers: list[Any] = [None] * len(rows)
    by_width: dict[int, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(rows):
      if r.prompt not in snap.index:
        answers[i] = RequestError(404, f'no prompt named {r.prompt!r} (it was removed).')
      else:
        by_width[batching.bucket_for(len(r.tokens), self.buckets)].append(i)
    if not self.fine and by_width:  # one call, at the widest row's width
      by_width = {max(by_width): sorted(i for live in by_width.values() for i in live)}
    compiled = len(self.shapes)
    for width, live in sorted(by_width.items()):
      for i, answer in zip(live, self._run(key, [rows[i] for i in live], width, snap)):
        answers[i] = answer
    if self.freeze_heap and len(self.shapes) > compiled:  # what a compile made stays
      _freeze_heap()
    return answers

  def _run(self, key: tuple, rows: Sequence[Row], width: int, snap: Snapshot) -> list[dict]:
    """One batch: rows padded to `width` and to the next of `row_sizes`."""
    import jax

    from prompt_tuning.models.prompt import merge_params, prompt_tree
    size = next(n for n in self.row_sizes if n >= len(rows))
    tokens = batching.pad_rows([row.tokens for row in rows], size, width)
    ids = np.zeros((size,), np.int32)
    ids[:len(rows)] = [snap.index[row.prompt] for row in rows]
    capacity = snap.table.shape[0]
    model = self.module(capacity)
    if self._params[0] != snap.version:  # only the worker thread runs batches: no lock needed
      self._params = (snap.version, merge_params(self.frozen,
                                                 prompt_tree(jax.device_put(snap.table))))
    params = self._params[1]
    if key[0] == 'generate':
      config, length = key[1], key[2]
      out = np.asarray(config.generate(model, params, tokens, length, prompt_ids=ids))
      answers = [_generated(self.vocab, out[j]) for j in range(len(rows))]
      program: tuple = (config, length)
    else:
      labels = key[1]
      candidates = batching.pad_rows([list(self.vocab.encode(label)) + [EOS_ID]
                                      for label in labels])
      scores = np.asarray(jax.block_until_ready(decoding.score_candidates(
          model, params, tokens, candidates, prompt_ids=ids)))
      answers = [{'prediction': labels[int(scores[j].argmax())],
                  'scores': [float(s) for s in scores[j]]} for j in range(len(rows))]
      program = candidates.shape
    self.shapes.add((key[0], program, size, width, capacity))
    return answers


def _generated(vocab: Any, ids: np.ndarray) -> dict:
  """A generated row: its text (vocab.text: the rule eval and infer use), how many tokens it
  took (its EOS counted) and whether it ended by itself (EOS) rather than at the length."""
  ends = np.flatnonzero(ids == EOS_ID)
  return {'prediction': vocab.text(ids), 'tokens': int(ends[0]) + 1 if len(ends) else len(ids),
          'finished': bool(len(ends))}


def _freeze_heap() -> None:
  """Moves every object alive now out of the garbage collector's reach (they still die by
  reference count). What is alive after loading and compiling lives as long as the server; left
  in the collector's oldest generation, each full pass walked it all (measured: 130-145 ms,
  about once a second under load, stalling every request in flight)."""
  gc.collect()
  gc.freeze()


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
      batch, rest = [], collections.deque()
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
    self.requests = collections.Counter()
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


# ----------------------------------------------------------------------------------------------
# What the HTTP handlers share (the handlers: serve_api.py; request checks: serve_requests.py).


class Server:
  """Prompts, engine, batcher, metrics, limits and the data layer, for the HTTP handlers."""

  def __init__(self, engine: Engine, config: ServeConfig, api_key: Optional[str] = None,
               data: Any = None):
    """data: a serve_requests.DataLayer (raw examples, task label words), or None."""
    self.engine, self.config, self.api_key, self.data = engine, config, api_key, data
    self.store = engine.store
    self.metrics = Metrics()
    self.batcher = Batcher(engine.run, config, on_batch=self.metrics.batch)
    self.created = int(time.time())
    self.received = self.answered = 0  # HTTP requests; counted on the event loop's thread

  def check_auth(self, header: Optional[str]) -> None:
    if self.api_key is None:
      return
    given = (header or '')[len('Bearer '):] if (header or '').startswith('Bearer ') else ''
    if not hmac.compare_digest(given.encode(), self.api_key.encode()):
      raise RequestError(401, 'missing or wrong bearer token (Authorization: Bearer <key>).',
                         {'WWW-Authenticate': 'Bearer'})

  def check_prompt(self, name: str, param: str) -> None:
    if not self.store.has(name):
      raise RequestError(404, f'no prompt named {name!r}; GET /v1/prompts lists them.',
                         param=param)

  def tokens(self, text_or_ids: str | list[int]) -> list[int]:
    """Encoder input ids: the text's tokens (or the ids as given), cut to leave room for EOS."""
    ids = (list(self.engine.vocab.encode(text_or_ids)) if isinstance(text_or_ids, str)
           else list(text_or_ids))
    return ids[:self.config.max_input_length - 1] + [EOS_ID]

  def rows(self, prompt: str, inputs: Sequence[str | list[int]], key: tuple) -> list[Row]:
    return [Row(key, self.tokens(x), prompt, concurrent.futures.Future()) for x in inputs]

  async def run(self, rows: list[Row]) -> list[dict]:
    """Queues the rows (503 when the queue is full) and waits, off the event loop, for each
    row's answer."""
    import asyncio
    self.batcher.submit(rows)
    return list(await asyncio.gather(*(asyncio.wrap_future(r.future) for r in rows)))


# ----------------------------------------------------------------------------------------------
# The command.


def _graceful_server_class():
  import asyncio
  import contextlib

  import uvicorn

  class GracefulServer(uvicorn.Server):
    """uvicorn's server with a shutdown that loses nothing it accepted.

    On SIGTERM/SIGINT uvicorn closes its listening socket and every idle connection at once:
    connections still in the kernel's accept queue were reset, and so were connections whose
    request had arrived but not been read yet (both common while a batch compiles). Here the
    event loop first accepts what is queued and reads what has arrived (at most `drain_s`);
    then listening stops (new connections are refused), every request received is answered
    (those waiting behind a compile too) and the server returns. A second signal exits at
    once. A graceful stop is not re-raised afterwards (uvicorn would, so the process would die
    of the signal): it is a clean exit.
    """
    drain_s = 2.0

    def __init__(self, config, counts: Callable[[], tuple[int, int]]):
      super().__init__(config)
      self.counts = counts  # () -> (requests received, requests answered)
      self.signal: Optional[int] = None
      self.unread = 0  # connections closed with a request not yet read (after drain_s)

    def handle_exit(self, sig: int, frame: Any) -> None:
      received, answered = self.counts()
      if self.should_exit:
        log.warning('second signal (%s): exiting now, %d request(s) unanswered',
                    _signal_name(sig), received - answered)
        logging.shutdown()
        os._exit(1)
      self.signal = sig
      log.info('%s: no new connections; answering the %d request(s) in flight and any '
               'already sent', _signal_name(sig), received - answered)
      super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None):
      self.unread = await self._drain()
      await super().shutdown(sockets)

    async def _drain(self) -> int:
      deadline = time.monotonic() + self.drain_s
      while True:
        listening = [s.fileno() for server in self.servers for s in (server.sockets or ())]
        idle = [fd for fd in map(_idle_socket, list(self.server_state.connections)) if fd >= 0]
        waiting = _readable(listening) + _readable(idle)
        if not waiting or time.monotonic() > deadline:
          return len(_readable(idle))
        await asyncio.sleep(0.005)  # the loop accepts and reads meanwhile

    @contextlib.contextmanager
    def capture_signals(self):
      with super().capture_signals():
        try:
          yield
        finally:
          self._captured_signals.clear()
  return GracefulServer


def _signal_name(sig: int) -> str:
  import signal
  return signal.Signals(sig).name


def _idle_socket(connection: Any) -> int:
  """The socket of a uvicorn connection with no request in progress, or -1."""
  cycle = getattr(connection, 'cycle', None)
  transport = getattr(connection, 'transport', None)
  if (cycle is not None and not cycle.response_complete) or transport is None or (
      transport.is_closing()):
    return -1
  sock = transport.get_extra_info('socket')
  return sock.fileno() if sock is not None else -1


def _readable(fds: Sequence[int]) -> list[int]:
  """The file descriptors with something to read (a connection to accept, a request)."""
  import select
  poller = select.poll()
  for fd in fds:
    poller.register(fd, select.POLLIN)
  return [fd for fd, _ in poller.poll(0)]


def load_api_key(path: Optional[str]) -> Optional[str]:
  if not path:
    return None
  try:
    with open(path) as f:
      key = f.read().strip()
  except OSError as e:
    raise ValueError(f'--api_key_file {path}: cannot read it ({e.strerror}).') from None
  if not key:
    raise ValueError(f'--api_key_file {path}: the file is empty; put the bearer token in it.')
  return key


def _load_data_layer(wanted: Optional[bool]) -> Any:
  """A serve_requests.DataLayer, or None: wanted None loads it when it is installed."""
  if wanted is False:
    log.info('no data layer (data_layer=False): inputs are the model\'s text; rank needs '
             '"labels".')
    return None
  from prompt_tuning.serve import requests as serve_requests
  start = time.monotonic()
  try:
    data = serve_requests.DataLayer()
    log.info('data layer loaded in %.1f s: raw task examples and label words',
             time.monotonic() - start)
    return data
  except ImportError as e:
    if wanted:
      raise ValueError(f"serve: data_layer=True but the data layer is not installed ({e}); "
                       f"pip install '.[data]'.") from None
    log.info('no data layer (%s): inputs are the model\'s text; rank needs "labels".', e)
    return None
  except Exception as e:  # an install that fails to import (TF builds, protobuf versions)
    if wanted:
      raise
    log.warning('the data layer failed to load, serving without it (%s: %s)',
                type(e).__name__, e)
    return None


def serve(*, initial_checkpoint_path: str, model: Any = None, prompt: Any = None,
          prompts: Optional[str] = None, vocab: Optional[str] = None, host: str = '127.0.0.1',
          port: int = 8000, api_key_file: Optional[str] = None,
          config: ServeConfig = ServeConfig(), frozen_dtype: Optional[str] = 'auto',
          prompt_length: Optional[int] = None, data_layer: Optional[bool] = None) -> int:
  """Loads the frozen model (T5X or HF checkpoint) and the prompt library; serves until
  SIGTERM/SIGINT, then answers every request received and returns 0 (1 if any went
  unanswered).

  data_layer: import the data layer (raw examples, the tasks' label words for rank) at start;
  None: when it is installed. Its import (TensorFlow, SeqIO) takes seconds and memory, so a
  server of text inputs may leave it out (gin: serve.serve.data_layer = False).
  """
  import jax
  import uvicorn

  from prompt_tuning import checkpoints
  from prompt_tuning.serve import app as serve_api
  from prompt_tuning.data.vocab import SentencePieceVocab
  vocab_path = vocab or os.environ.get('PROMPT_TUNING_VOCAB')
  if not vocab_path:
    raise ValueError('serve needs the SentencePiece vocabulary: --vocab=PATH or '
                     '$PROMPT_TUNING_VOCAB.')
  api_key = load_api_key(api_key_file)
  data = _load_data_layer(data_layer)  # before the model: a missing one fails fast
  model_config, frozen = checkpoints.load_base(initial_checkpoint_path, model)
  library = library_lib.load_library(prompts, model_config.d_model) if prompts else {}
  store = PromptStore(library, model_config.d_model, prompts, prompt_length)
  if frozen_dtype == 'auto':  # halve the frozen weights on accelerators; CPUs keep float32
    frozen_dtype = 'bfloat16' if jax.default_backend() in ('gpu', 'tpu') else None
  if frozen_dtype:
    frozen = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, dtype=frozen_dtype), frozen)
  frozen = jax.device_put(frozen)
  placement = getattr(prompt, 'placement', 'prefix')
  tokenizer = SentencePieceVocab(vocab_path)
  tokenizer.text([])  # builds the model that renders ids as text, before the first batch
  engine = Engine(model_config, frozen, store, tokenizer, config, placement, freeze_heap=True)
  if config.warmup_decode_lengths:
    start = time.monotonic()
    log.info('compiled %d batch shapes in %.1f s', engine.warm_up(), time.monotonic() - start)
  server = Server(engine, config, api_key, data)
  app = serve_api.create_app(server)
  log.info('serving %d prompt(s) of length %d on http://%s:%d', len(library), store.length,
           host, port)
  uvicorn_config = uvicorn.Config(app, host=host, port=port, log_level='warning',
                                  timeout_graceful_shutdown=120)
  http = _graceful_server_class()(uvicorn_config, lambda: (server.received, server.answered))
  _freeze_heap()
  try:
    http.run()  # returns after SIGTERM/SIGINT, once every request received is answered
  finally:
    server.batcher.stop()
    if server.data is not None:
      server.data.close()
  lost = server.received - server.answered + http.unread
  how = f'on {_signal_name(http.signal)}' if http.signal else 'without a signal'
  if lost:
    log.error('stopped %s: %d of %d request(s) received went unanswered (%d connection(s) '
              'closed with a request unread)', how, lost, server.received + http.unread,
              http.unread)
    return 1
  log.info('stopped %s: answered every request received (%d); by status %s', how,
           server.answered, server.metrics.report(engine, server.batcher)['requests'])
  return 0

