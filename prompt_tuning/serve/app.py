"""The HTTP API of `prompt-tuning serve` (FastAPI, run by command.serve on uvicorn).

  POST /v1/predict            {"task", "inputs", "method", "labels", "decoding"}: the native API
  POST /v1/completions        OpenAI's completions; "model" names a prompt
  GET  /v1/models[/{name}]    OpenAI's model list: the prompt library
  GET/POST /v1/prompts, DELETE /v1/prompts/{name}   the library, changed at run time
  GET  /healthz (no token), GET /metrics

Every error, of any status and path, is one shape (OpenAI's, so its clients raise their typed
exceptions): {"error": {"message": ..., "type": ..., "param": <the field or null>, "code":
<status>}}. Requests are checked whole before anything is queued (requests.py); a 500 is
a server fault, and its traceback is logged. Nothing slow runs on the event loop: raw examples
are formatted in a worker thread, batches run in the batcher's.
"""

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any, Mapping, Optional

from prompt_tuning.serve import requests
from prompt_tuning.serve.errors import RequestError
from prompt_tuning.serve.server import Server

log = logging.getLogger('prompt_tuning')

ERROR_TYPES = {400: 'invalid_request_error', 401: 'authentication_error',
               403: 'permission_error', 404: 'not_found_error', 405: 'invalid_request_error',
               409: 'conflict_error', 413: 'invalid_request_error', 429: 'rate_limit_error',
               503: 'service_unavailable_error'}


def error_body(status: int, message: str, param: Optional[str] = None) -> dict:
  """The one error shape, for every status."""
  kind = ERROR_TYPES.get(status, 'server_error' if status >= 500 else 'invalid_request_error')
  return {'error': {'message': message, 'type': kind, 'param': param, 'code': status}}


class _Counted:
  """Counts HTTP requests received and answered (a response sent whole), so that a shutdown
  can say truthfully whether it answered everything."""

  def __init__(self, app: Any, server: Server):
    self.app, self.server = app, server

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    self.server.received += 1

    async def counted(message):
      if message['type'] == 'http.response.body' and not message.get('more_body'):
        self.server.answered += 1
      await send(message)

    return await self.app(scope, receive, counted)


def create_app(server: Server):
  """The ASGI application over `server`."""
  from fastapi import FastAPI, Request
  from fastapi.exceptions import RequestValidationError
  from fastapi.responses import JSONResponse
  from starlette.exceptions import HTTPException

  app = FastAPI(title='prompt-tuning serve', docs_url=None, redoc_url=None, openapi_url=None)
  config, engine, store = server.config, server.engine, server.store
  context = {'max_decode_length': config.max_decode_length,
             'vocab_size': engine.backend.vocab_size}
  limit = requests.body_limit(config)

  def error(status: int, message: str, param: Optional[str] = None,
            headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
    server.metrics.request(status)
    if param and not message.startswith(f'"{param}"'):  # every message names its field first
      message = f'"{param}": {message}'
    return JSONResponse(error_body(status, message, param), status_code=status,
                        headers=dict(headers or {}))

  @app.exception_handler(RequestError)
  async def refused(_, e: RequestError):
    return error(e.status, str(e), e.param, e.headers)

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, e: HTTPException):  # no such path, or method
    if e.status_code == 405:
      message = f'{request.method} is not allowed on {request.url.path} (allowed: ' \
                f'{(e.headers or {}).get("Allow", "none")}).'
    elif e.status_code == 404:
      message = f'no endpoint {request.url.path}; see the README (POST /v1/predict, ' \
                f'/v1/completions, GET /v1/models, /v1/prompts).'
    else:
      message = str(e.detail)
    return error(e.status_code, message, None, e.headers)

  @app.exception_handler(RequestValidationError)
  async def invalid(_, e: RequestValidationError):  # path parameters (bodies are ours)
    first = e.errors()[0]
    where = '.'.join(str(p) for p in first['loc'])
    return error(400, f'"{where}": {first["msg"]}.', where)

  @app.exception_handler(Exception)
  async def unexpected(_, e: Exception):  # a fault of the server's: uvicorn logs the traceback
    return error(500, f'internal error ({type(e).__name__}); the server logged it.')

  @app.middleware('http')
  async def authenticate(request: Request, call_next):
    if request.url.path != '/healthz':  # health checks need no token
      try:
        server.check_auth(request.headers.get('authorization'))
      except RequestError as e:
        return error(e.status, str(e), None, e.headers)
    return await call_next(request)

  async def answers(rows) -> list[dict]:
    try:
      return await server.run(rows)
    except RequestError:
      raise
    except Exception as e:  # the batch failed: the batcher logged its traceback once
      raise RequestError(500, f'internal error ({type(e).__name__}) running the batch; the '
                              f'server logged it.') from e

  async def inputs_of(req: requests.PredictRequest) -> list[str]:
    """The model's input texts: strings as given, raw examples formatted (off the loop)."""
    if len(req.inputs) > config.max_inputs_per_request:
      raise RequestError(413, f'"inputs": {len(req.inputs)} in one request; at most '
                              f'{config.max_inputs_per_request}.', param='inputs')
    raw = []
    for i, x in enumerate(req.inputs):
      if isinstance(x, dict):
        raw.append(i)
      elif not isinstance(x, str):
        raise RequestError(400, f'"inputs[{i}]": must be a string (the model\'s input text) or '
                                f'an object (a raw example), got {requests.shown(x)}.',
                           param=f'inputs[{i}]')
    texts = list(req.inputs)
    if raw:
      if server.data is None:
        raise RequestError(400, f'"inputs[{raw[0]}]": a raw example needs the data layer, which '
                                f'this server runs without (not installed: pip install '
                                f'\'.[data]\'; or serve.serve.data_layer=False); send the '
                                f'model\'s input text.', param=f'inputs[{raw[0]}]')
      formatted = await asyncio.to_thread(
          lambda: [server.data.format(req.task, req.inputs[i], i) for i in raw])
      for i, text in zip(raw, formatted):
        texts[i] = text
    for i, text in enumerate(texts):
      if len(text) > config.max_chars_per_input:
        raise RequestError(413, f'"inputs[{i}]": {len(text)} characters; at most '
                                f'{config.max_chars_per_input}.', param=f'inputs[{i}]')
    return texts

  async def parsed(request: Request, kind: Any, prompt_field: str) -> tuple[float, Any]:
    """(when it arrived, the request checked whole, naming a prompt the store has)."""
    start = time.monotonic()
    req = requests.parse(kind, await requests.read_json(request, limit), context)
    server.check_prompt(getattr(req, prompt_field), prompt_field)
    return start, req

  @app.post('/v1/predict')
  async def predict(request: Request):
    start, req = await parsed(request, requests.PredictRequest, 'task')
    texts = await inputs_of(req)
    labels = None
    if req.method == 'rank':
      labels = req.labels or (server.data.labels(req.task) if server.data else None)
      if not labels:
        raise RequestError(400, f'"labels": rank needs the candidate answers for {req.task!r} '
                                f'(a list of strings; a prompt named as its task uses the '
                                f'task\'s label words when the data layer is loaded).',
                           param='labels')
      key: tuple = ('rank', tuple(labels))
    else:
      dc = (req.decoding or requests.GREEDY).config()
      length = dc.max_decode_length or config.max_decode_length
      key = ('generate', dataclasses.replace(dc, max_decode_length=None), length)
    rows = server.rows(req.task, texts, key)
    out = await answers(rows)
    result: dict[str, Any] = {'task': req.task, 'method': req.method,
                              'predictions': [a['prediction'] for a in out]}
    if labels is not None:
      result['labels'] = labels
      result['scores'] = [a['scores'] for a in out]
    server.metrics.request(200, time.monotonic() - start, len(rows))
    return result

  @app.post('/v1/completions')
  async def completions(request: Request):
    start, req = await parsed(request, requests.CompletionRequest, 'model')
    plan = requests.completion_plan(req, config, engine.backend.vocab_size)
    for i, p in enumerate(plan.prompts):
      if isinstance(p, str) and len(p) > config.max_chars_per_input:
        raise RequestError(413, f'"prompt[{i}]": {len(p)} characters; at most '
                                f'{config.max_chars_per_input}.', param=f'prompt[{i}]')
    rows = server.rows(req.model, plan.prompts, plan.key, 'prompt', plan.n)
    out = await answers(rows)
    choices = []
    for k, answer in enumerate(out):
      text, stopped = requests.cut_at_stop(answer['prediction'], plan.stop)
      if plan.echo:
        prompt = plan.prompts[k // plan.n]
        text = (prompt if isinstance(prompt, str) else engine.backend.prompt_text(prompt)) + text
      choices.append({'index': k, 'text': text, 'logprobs': None,
                      'finish_reason': 'stop' if answer['finished'] or stopped else 'length'})
    prompt_tokens = sum(len(row.tokens) for row in rows[::plan.n])
    completion_tokens = sum(a['tokens'] for a in out)
    server.metrics.request(200, time.monotonic() - start, len(rows))
    return {'id': f'cmpl-{uuid.uuid4().hex}', 'object': 'text_completion',
            'created': int(time.time()), 'model': req.model, 'choices': choices,
            'usage': {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
                      'total_tokens': prompt_tokens + completion_tokens}}

  def card(name: str) -> dict:
    return {'id': name, 'object': 'model', 'created': server.created,
            'owned_by': 'prompt-tuning'}

  @app.get('/v1/models')
  async def list_models():
    return {'object': 'list', 'data': [card(p['name']) for p in store.describe()]}

  @app.get('/v1/models/{name}')
  async def get_model(name: str):
    server.check_prompt(name, 'model')
    return card(name)

  @app.get('/v1/prompts')
  async def list_prompts():
    return {'prompts': store.describe(), 'length': store.length, 'd_model': store.d_model}

  prompt_limit = max(limit, (store.length or 1) * store.d_model * 32 + 4096)

  @app.post('/v1/prompts')
  async def add_prompt(request: Request):
    req = requests.parse(requests.AddPromptRequest, await requests.read_json(request,
                                                                            prompt_limit))
    added = store.add(req.name, path=req.path, values=req.values)
    log.info('added prompt %s (%s)', added['name'], added['source'])
    return JSONResponse(added, status_code=201)

  @app.delete('/v1/prompts/{name}')
  async def remove_prompt(name: str):
    store.remove(name)
    log.info('removed prompt %s', name)
    return {'removed': name}

  @app.get('/healthz')
  async def healthz():
    return {'status': 'ok', 'prompts': len(store.snapshot().index)}

  @app.get('/metrics')
  async def metrics():
    return server.metrics.report(engine, server.batcher)

  return _Counted(app, server)
