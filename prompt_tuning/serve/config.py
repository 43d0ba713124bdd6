"""`ServeConfig`: the batching and request limits of `prompt-tuning serve`, the one home of
their defaults and help (the CLI's serve flags are derived from its fields). Light to import:
building the command line must not start JAX."""

import dataclasses
from typing import Optional


def _field(default, text: str):
  return dataclasses.field(default=default, metadata={'help': text})


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  """Batching and request limits (flags of `prompt-tuning serve`)."""
  max_batch_size: int = _field(32, 'rows a batch holds at most')
  # 0 measured on CPU: the same throughput under 32 clients as 5 ms, and a third of the
  # latency one at a time (rows queue while a batch runs, so batches still grow with load).
  max_wait_ms: float = _field(
      0.0, 'how long the first row of a batch waits for company (0: run what is queued as '
      'soon as the worker is free)')
  max_queue: int = _field(4096, 'rows waiting; beyond it requests get 503 + Retry-After')
  max_inputs_per_request: int = _field(64, 'inputs one request may hold')
  max_chars_per_input: int = _field(8192, 'characters one input may hold')
  max_input_length: int = _field(
      512, 'tokens of an input (longer inputs are cut: T5 from the right keeping EOS, '
      'decoder-only from the left keeping BOS)')
  max_decode_length: int = _field(64, 'tokens a generation may have at most')
  # On CPU a batch costs what its padded rows and width do (attention the square of the
  # width); accelerators pad nearly free but compile each shape.
  fine_shapes: Optional[bool] = _field(
      None, 'true: rows padded to powers of two, one call per width bucket; false: rows '
      '1/4/16/max, one call per batch; auto: true on CPU')
  # A compile takes about a second, and every in-flight request waits with it.
  warmup_decode_lengths: tuple[int, ...] = _field(
      (), 'compile greedy decoding of every batch shape at start for these lengths, so no '
      'request waits for a compile')

  def __post_init__(self):
    for name in ('max_batch_size', 'max_queue', 'max_inputs_per_request', 'max_chars_per_input',
                 'max_input_length', 'max_decode_length'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'--{name} must be at least 1, got {getattr(self, name)}.')
    if self.max_wait_ms < 0:
      raise ValueError(f'--max_wait_ms must be >= 0, got {self.max_wait_ms}.')
    for n in self.warmup_decode_lengths:
      if not 1 <= n <= self.max_decode_length:
        raise ValueError(f'--warmup_decode_lengths: {n} is outside [1, --max_decode_length='
                         f'{self.max_decode_length}].')
