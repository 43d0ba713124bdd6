"""`Server`: what the HTTP handlers (app.py) share: the prompts, engine, batcher, metrics, limits
and the data layer; the bearer-token check; inputs made into rows, queued and awaited."""

import concurrent.futures
import hmac
import time
from typing import Any, Optional, Sequence

from prompt_tuning.serve.batcher import Batcher, Metrics
from prompt_tuning.serve.config import ServeConfig
from prompt_tuning.serve.engine import Engine, Row
from prompt_tuning.serve.errors import RequestError


class Server:
  """Prompts, engine, batcher, metrics, limits and the data layer, for the HTTP handlers."""

  def __init__(self, engine: Engine, config: ServeConfig, api_key: Optional[str] = None,
               data: Any = None):
    """data: an examples.DataLayer (raw examples, task label words), or None."""
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

  def tokens(self, text_or_ids: str | list[int], param: str = 'inputs') -> list[int]:
    """The model's input row of the text (or the ids as given), by its backend's rule (T5: cut
    to leave room for EOS; decoder-only: [BOS]? + ids cut from the left); `param` names the
    field in a refusal."""
    try:
      return self.engine.backend.input_row(text_or_ids, self.config.max_input_length)
    except ValueError as e:
      raise RequestError(400, f'"{param}": {e}.', param=param) from None

  def rows(self, prompt: str, inputs: Sequence[str | list[int]], key: tuple,
           param: str = 'inputs', copies: int = 1) -> list[Row]:
    """`copies` rows of each input (OpenAI's n), each answered on its own."""
    out = []
    for i, x in enumerate(inputs):
      tokens = self.tokens(x, f'{param}[{i}]')
      out += [Row(key, tokens, prompt, concurrent.futures.Future()) for _ in range(copies)]
    return out

  async def run(self, rows: list[Row]) -> list[dict]:
    """Queues the rows (503 when the queue is full) and waits, off the event loop, for each
    row's answer."""
    import asyncio
    self.batcher.submit(rows)
    return list(await asyncio.gather(*(asyncio.wrap_future(r.future) for r in rows)))
