"""`prompt-tuning serve`: one frozen model (T5 or decoder-only) answering many tasks over HTTP,
batching requests across tasks. TF-free (raw task examples use the data layer when it is installed).

  config.py     ServeConfig: the batching and request limits (the serve flags' one home)
  errors.py     RequestError: a refused request, its status and the field at fault
  store.py      PromptStore, Snapshot: the named prompts (a prompt library, changed at run time)
                as one table whose capacity grows in powers of two, so adding a prompt rarely
                changes a shape
  engine.py     Row, Engine: the frozen model with the store's table, running a batch of rows of
                any prompts: generate (DecodingConfig) or rank
  backends.py   Seq2SeqBackend (T5), CausalBackend (decoder-only HF folders): each model kind's
                row convention (EOS or BOS, row lengths, text, rank candidates) and loading
  batcher.py    Batcher, Metrics: a bounded queue of rows and one worker thread forming mixed-task
                batches up to `max_batch_size` rows or `max_wait_ms`, padded length-aware; the
                counters of GET /metrics
  server.py     Server: what the HTTP handlers share
  app.py        the HTTP API (native /v1/predict and OpenAI's /v1/completions and /v1/models)
  requests.py   what a request may hold, checked whole before anything is queued
  examples.py   DataLayer: raw task examples formatted as the task does, label words for rank
  graceful.py   GracefulServer: uvicorn's server with a shutdown that loses nothing it accepted
  command.py    serve, the command: loads everything before listening, serves on uvicorn until
                SIGTERM/SIGINT, answers every request it received, exits 0

Bad requests get a 4xx whose error names the field; the server keeps serving. The names below
are imported on first use, so that `serve.config` (the CLI's flags) stays light: no JAX.
"""

import importlib
from typing import TYPE_CHECKING, Any

from prompt_tuning.serve.config import ServeConfig

if TYPE_CHECKING:
  from prompt_tuning.serve.batcher import Batcher, Metrics
  from prompt_tuning.serve.command import load_api_key, serve
  from prompt_tuning.serve.engine import Engine, Row
  from prompt_tuning.serve.errors import RequestError
  from prompt_tuning.serve.server import Server
  from prompt_tuning.serve.store import PromptStore, Snapshot

_EXPORTS = {
    'RequestError': 'errors',
    'PromptStore': 'store', 'Snapshot': 'store',
    'Engine': 'engine', 'Row': 'engine',
    'Batcher': 'batcher', 'Metrics': 'batcher',
    'Server': 'server',
    'serve': 'command', 'load_api_key': 'command',
}

__all__ = ['ServeConfig', 'RequestError', 'PromptStore', 'Snapshot', 'Engine', 'Row', 'Batcher',
           'Metrics', 'Server', 'serve', 'load_api_key']


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
  globals()[name] = value
  return value
