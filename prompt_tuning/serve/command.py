"""`serve`, the command: loads everything before listening (the data layer, the frozen model,
the prompt library, optionally compiling every batch shape), serves on uvicorn until
SIGTERM/SIGINT, answers every request it received, and exits 0 (1 if any went unanswered). The
model is T5 (a T5X or HF T5 checkpoint, a SentencePiece vocabulary) or decoder-only (an HF
folder with its tokenizer.json; backends.py)."""

import logging
import os
import time
from typing import Any, Optional

from prompt_tuning.prompts import library as library_lib
from prompt_tuning.serve import backends
from prompt_tuning.serve.config import ServeConfig
from prompt_tuning.serve.engine import Engine, freeze_heap
from prompt_tuning.serve.server import Server
from prompt_tuning.serve.store import PromptStore

log = logging.getLogger('prompt_tuning')


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


def load_data_layer(wanted: Optional[bool]) -> Any:
  """An examples.DataLayer, or None: wanted None loads it when it is installed."""
  if wanted is False:
    log.info('no data layer (data_layer=False): inputs are the model\'s text; rank needs '
             '"labels".')
    return None
  from prompt_tuning.serve import examples
  start = time.monotonic()
  try:
    data = examples.DataLayer()
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
          prompt_library: Optional[str] = None, vocab: Optional[str] = None,
          host: str = '127.0.0.1', port: int = 8000, api_key_file: Optional[str] = None,
          config: ServeConfig = ServeConfig(), frozen_dtype: Optional[str] = 'auto',
          prompt_length: Optional[int] = None, data_layer: Optional[bool] = None,
          placement: Optional[str] = None) -> int:
  """Loads the frozen model (T5X or HF checkpoint; an HF decoder-only folder) and the prompt
  library; serves until SIGTERM/SIGINT, then answers every request received and returns 0 (1 if
  any went unanswered).

  placement: where the prompts go (default: T5's `prompt.placement`; a decoder-only model's
  library MODEL_DIRs' own; else 'prefix').

  data_layer: import the data layer (raw examples, the tasks' label words for rank) at start;
  None: when it is installed. Its import (TensorFlow, SeqIO) takes seconds and memory, so a
  server of text inputs may leave it out (gin: serve.serve.data_layer = False).
  """
  import jax
  import uvicorn

  from prompt_tuning.inference import runner
  from prompt_tuning.serve import app as serve_api
  from prompt_tuning.serve import graceful
  from prompt_tuning.data.vocab import SentencePieceVocab
  decoder_only = backends.is_decoder_only(initial_checkpoint_path)
  vocab_path = vocab or os.environ.get('PROMPT_TUNING_VOCAB')
  if not vocab_path and not decoder_only:
    raise ValueError('serve needs the SentencePiece vocabulary: --vocab=PATH or '
                     '$PROMPT_TUNING_VOCAB.')
  api_key = load_api_key(api_key_file)
  data = load_data_layer(data_layer)  # before the model: a missing one fails fast
  # 'auto' halves the frozen weights on accelerators; CPUs keep float32.
  tokenizer: Any
  model_config: Any
  if decoder_only:
    model_config, frozen, tokenizer = backends.load_causal(initial_checkpoint_path, frozen_dtype,
                                                           model, vocab)
  else:
    model_config, frozen = runner.load_frozen(initial_checkpoint_path, model, frozen_dtype)
    tokenizer = SentencePieceVocab(str(vocab_path))
    tokenizer.text([])  # builds the model that renders ids as text, before the first batch
  library = (library_lib.load_library(prompt_library, model_config.d_model) if prompt_library
             else {})
  store = PromptStore(library, model_config.d_model, prompt_library, prompt_length)
  frozen = jax.device_put(frozen)
  placement = backends.placement(
      placement, library if decoder_only else {},
      prompt.placement if hasattr(prompt, 'placement') else 'prefix')
  engine = Engine(model_config, frozen, store, tokenizer, config,
                  placement, freeze_heap=True)  # type: ignore[arg-type]
  if config.warmup_decode_lengths:
    start = time.monotonic()
    log.info('compiled %d batch shapes in %.1f s', engine.warm_up(), time.monotonic() - start)
  server = Server(engine, config, api_key, data)
  app = serve_api.create_app(server)
  log.info('serving %d prompt(s) of length %d (%s, placement %s) on http://%s:%d', len(library),
           store.length, type(engine.backend).__name__, placement, host, port)
  uvicorn_config = uvicorn.Config(app, host=host, port=port, log_level='warning',
                                  timeout_graceful_shutdown=120)
  http = graceful.GracefulServer(uvicorn_config, lambda: (server.received, server.answered))
  freeze_heap()
  try:
    http.run()  # returns after SIGTERM/SIGINT, once every request received is answered
  finally:
    server.batcher.stop()
    if server.data is not None:
      server.data.close()
  lost = server.received - server.answered + http.unread
  how = f'on {graceful.signal_name(http.signal)}' if http.signal else 'without a signal'
  if lost:
    log.error('stopped %s: %d of %d request(s) received went unanswered (%d connection(s) '
              'closed with a request unread)', how, lost, server.received + http.unread,
              http.unread)
    return 1
  log.info('stopped %s: answered every request received (%d); by status %s', how,
           server.answered, server.metrics.report(engine, server.batcher)['requests'])
  return 0
