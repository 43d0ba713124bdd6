"""`Engine`: the frozen model with a PromptStore's table, running a batch of rows of any prompts
mixed: generate (a DecodingConfig, to a length) or rank (score each label). `Row` is one input of
a request as the batcher queues it. Few shapes, each compiled once: rows padded to the next of
`row_sizes`, inputs to the next width bucket (ServeConfig.fine_shapes chooses how finely). The
model is T5 or decoder-only: its row convention (EOS or BOS, lengths) is its backend's
(backends.py)."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gc
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from prompt_tuning.data import batching
from prompt_tuning.inference import decoding, runner
from prompt_tuning.serve import backends
from prompt_tuning.serve.config import ServeConfig
from prompt_tuning.serve.errors import RequestError
from prompt_tuning.serve.store import PromptStore, Snapshot

if TYPE_CHECKING:
  from prompt_tuning.models.prompt import Placement


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
               config: ServeConfig, placement: Placement = 'prefix', freeze_heap: bool = False):
    """model_config: a T5Config, or a DecoderConfig (vocab then a CausalLMTokenizer).
    freeze_heap: after a batch that compiled, move the heap out of the garbage collector's
    reach (see the function freeze_heap; for a server process, not for a library caller's)."""
    self.store, self.vocab, self.config = store, vocab, config
    self.freeze_heap = freeze_heap
    self.backend = backends.backend_for(model_config, frozen, vocab, placement)
    self.backend.check_limits(store.length, config)
    self._model: tuple[int, Any] = (-1, None)  # (snapshot version, the model with its table)
    # Few shapes, each compiled once: widths in powers of two; rows see ServeConfig.fine_shapes.
    import jax
    self.fine = (jax.default_backend() == 'cpu' if config.fine_shapes is None
                 else config.fine_shapes)
    step = 2 if self.fine else 4
    self.row_sizes = sorted({min(step ** i, config.max_batch_size) for i in range(16)})
    self.buckets = tuple(sorted({min(2 ** i, config.max_input_length) for i in range(3, 16)}))
    self.shapes: set[tuple] = set()  # (kind, program, rows, width, capacity): each compiles once

  def model(self, snap: Snapshot) -> Any:
    """The frozen model (a runner) with the snapshot's table, made again when the table changed
    (a model of the same capacity is equal to the last one: its compiled programs are reused)."""
    if self._model[0] != snap.version:  # only the worker thread runs batches: no lock needed
      import jax
      self._model = (snap.version, self.backend.model(jax.device_put(snap.table)))
    return self._model[1]

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
          rows = [Row(key, [self.backend.eos_id], name, concurrent.futures.Future())
                  for _ in range(size)]
          self.run_batch(key, rows, width, snap)
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
      for i, answer in zip(live, self.run_batch(key, [rows[i] for i in live], width, snap)):
        answers[i] = answer
    if self.freeze_heap and len(self.shapes) > compiled:  # what a compile made stays
      freeze_heap()
    return answers

  def run_batch(self, key: tuple, rows: Sequence[Row], width: int, snap: Snapshot) -> list[dict]:
    """One batch: rows padded to `width` and to the next of `row_sizes` (filler rows: one
    padding token, prompt 0)."""
    size = next(n for n in self.row_sizes if n >= len(rows))
    tokens = batching.pad_rows([row.tokens for row in rows], size, width)
    lengths = np.ones((size,), np.int32)  # a decoder-only row needs a token to end on
    lengths[:len(rows)] = [len(row.tokens) for row in rows]
    ids = np.zeros((size,), np.int32)
    ids[:len(rows)] = [snap.index[row.prompt] for row in rows]
    capacity = snap.table.shape[0]
    model, backend = self.model(snap), self.backend
    if key[0] == 'generate':
      config, length = key[1], key[2]
      out = backend.generate(model, tokens, lengths, config, length, ids)
      answers = [generated_answer(backend, out[j]) for j in range(len(rows))]
      program: tuple = (config, length)
    else:
      labels = key[1]
      candidates, candidate_lengths = backend.candidates(labels)
      scores = backend.score(model, tokens, lengths, candidates, candidate_lengths, ids)
      answers = [{'prediction': labels[int(scores[j].argmax())],
                  'scores': [float(s) for s in scores[j]]} for j in range(len(rows))]
      program = candidates.shape
    self.shapes.add((key[0], program, size, width, capacity))
    return answers


def generated_answer(vocab: Any, ids: np.ndarray) -> dict:
  """A generated row: its text (runner.text: the rule eval and infer use; a backend's `text`),
  how many tokens it took (its EOS counted) and whether it ended by itself (`vocab.eos_id`)
  rather than at the length."""
  ends = np.flatnonzero(ids == vocab.eos_id)
  return {'prediction': runner.text(vocab, ids),
          'tokens': int(ends[0]) + 1 if len(ends) else len(ids), 'finished': bool(len(ends))}


def freeze_heap() -> None:
  """Moves every object alive now out of the garbage collector's reach (they still die by
  reference count). What is alive after loading and compiling lives as long as the server; left
  in the collector's oldest generation, each full pass walked it all (measured: 130-145 ms,
  about once a second under load, stalling every request in flight)."""
  gc.collect()
  gc.freeze()
