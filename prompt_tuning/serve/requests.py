"""What `prompt-tuning serve` accepts: every request is checked whole, before anything is queued,
and a bad one is refused with a 4xx whose message and `param` name the field.

  read_json        the body: capped in bytes (413) and in nesting depth, strict JSON (no NaN)
  parse            a body as one of the request models below, or RequestError(400) naming the
                   first bad field ('decoding.num_beams', 'inputs[3]')
  PredictRequest   POST /v1/predict; Decoding is its "decoding" (decoding.DecodingConfig's fields)
  CompletionRequest, completion_plan   POST /v1/completions (OpenAI's fields; unsupported ones
                   refused by name) and how it maps onto the engine's rows
  AddPromptRequest POST /v1/prompts

Raw examples in "inputs" are the data layer's to check and format (examples.py).

pydantic (which FastAPI brings) does the type and range checks: strict types (no "3" for 3, no
true for 1), unknown fields refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Any, Literal, Optional

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from prompt_tuning.inference import decoding
from prompt_tuning.serve.config import ServeConfig
from prompt_tuning.serve.errors import RequestError

MAX_DEPTH = 10        # JSON nesting a request may have (a request of raw MultiRC rows: 8)
MAX_BEAMS = 16
MAX_LABELS = 64       # rank candidates
MAX_CHOICES = 16      # OpenAI's n / best_of
MAX_SEED = 2 ** 31 - 1
MAX_STOPS = 4         # OpenAI's limit on stop strings


# ----------------------------------------------------------------------------------------------
# The body.


def body_limit(config: ServeConfig) -> int:
  """Bytes a predict or completions body may have: every input at its longest (4 bytes a
  character as UTF-8, 6 as a JSON escape; 256 for the rest of a row)."""
  return config.max_inputs_per_request * (config.max_chars_per_input * 6 + 256) + 4096


def _refuse_constant(name: str) -> Any:
  raise RequestError(400, f'malformed JSON: {name} is not a JSON number.')


def loads(raw: bytes) -> Any:
  """Strict JSON with at most MAX_DEPTH levels of nesting; RequestError(400) otherwise."""
  try:
    value = json.loads(raw, parse_constant=_refuse_constant)
  except RecursionError:  # deeper than the parser goes: refused by the check below anyway
    raise RequestError(400, f'the JSON nests deeper than {MAX_DEPTH} levels.') from None
  except UnicodeDecodeError as e:
    raise RequestError(400, f'the body is not UTF-8 (byte {e.start + 1}).') from None
  except ValueError as e:
    raise RequestError(400, f'malformed JSON: {e}.') from None
  stack = [(value, 1)]  # containers and their depth (the body's own object is level 1)
  while stack:
    node, depth = stack.pop()
    if depth > MAX_DEPTH:
      raise RequestError(400, f'the JSON nests deeper than {MAX_DEPTH} levels.')
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
  return value


async def read_json(request: Any, limit: int) -> Any:
  """The body of a Starlette request as JSON, kept only up to `limit` bytes (413 beyond). A body
  a little too large is read to its end and dropped before the 413, so that a client still
  sending it reads the answer rather than a broken pipe; one beyond 8x the limit is cut off."""
  declared = request.headers.get('content-length')
  if declared is not None and not declared.isdigit():
    raise RequestError(400, f'Content-Length {declared!r} is not a number of bytes.')
  if declared is not None and int(declared) > 8 * limit:
    raise RequestError(413, f'the request body has {int(declared)} bytes; at most {limit}.')
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > 8 * limit:
      break
    if size <= limit:
      chunks.append(chunk)
  if size > limit:
    got = f'{size} bytes' if size <= 8 * limit else f'over {8 * limit} bytes'
    raise RequestError(413, f'the request body has {got}; at most {limit}.')
  if not size:
    raise RequestError(400, 'the request has no body; send a JSON object.')
  return loads(b''.join(chunks))


# ----------------------------------------------------------------------------------------------
# Models.


class _Strict(BaseModel):
  model_config = ConfigDict(extra='forbid', strict=True, frozen=True, allow_inf_nan=False)


def _limit(info: pydantic.ValidationInfo, name: str) -> Optional[int]:
  return (info.context or {}).get(name)


class Decoding(_Strict):
  """"decoding" of /v1/predict: the fields of decoding.DecodingConfig, each checked."""
  method: Literal['greedy', 'beam_search', 'sample'] = 'greedy'
  num_beams: int = Field(4, ge=1, le=MAX_BEAMS)
  alpha: float = Field(0.6, ge=0, le=10)
  temperature: float = Field(1.0, ge=0, le=100)
  top_k: int = Field(0, ge=0)
  top_p: float = Field(1.0, gt=0, le=1)
  max_decode_length: Optional[int] = Field(None, ge=1)
  seed: int = Field(0, ge=0, le=MAX_SEED)

  @pydantic.field_validator('max_decode_length')
  @classmethod
  def _length(cls, value: Optional[int], info: pydantic.ValidationInfo) -> Optional[int]:
    top = _limit(info, 'max_decode_length')
    if value is not None and top is not None and value > top:
      raise ValueError(f'must be at most {top} (--max_decode_length)')
    return value

  @pydantic.field_validator('top_k')
  @classmethod
  def _top_k(cls, value: int, info: pydantic.ValidationInfo) -> int:
    top = _limit(info, 'vocab_size')
    if top is not None and value > top:
      raise ValueError(f'must be at most the vocabulary size, {top}')
    return value

  def config(self) -> decoding.DecodingConfig:
    return decoding.DecodingConfig(**self.model_dump())


GREEDY = Decoding.model_validate({})


class PredictRequest(_Strict):
  task: str = Field(min_length=1)
  inputs: list[Any] = Field(min_length=1)  # strings or raw examples: checked by the server
  method: Literal['generate', 'rank'] = 'generate'
  labels: Optional[list[Annotated[str, Field(min_length=1)]]] = Field(
      None, min_length=1, max_length=MAX_LABELS)
  decoding: Optional[Decoding] = None

  @pydantic.model_validator(mode='after')
  def _fits_method(self) -> PredictRequest:
    if self.method == 'rank' and self.decoding is not None:
      raise _field_error('decoding', 'applies to method "generate" (rank scores "labels")')
    if self.method == 'generate' and self.labels is not None:
      raise _field_error('labels', 'apply to method "rank" (add "method": "rank")')
    return self


class AddPromptRequest(_Strict):
  name: str
  path: Optional[str] = None
  values: Optional[list[list[float]]] = None

  @pydantic.model_validator(mode='after')
  def _one_source(self) -> AddPromptRequest:
    if (self.path is None) == (self.values is None):
      raise _field_error('path', 'give the prompt as "path" (inside the prompt library) or '
                                 '"values" ([length][d_model] numbers), not both or neither')
    return self


class CompletionRequest(_Strict):
  """OpenAI's completions request; `model` names a prompt. Fields without a meaning here are
  accepted at their neutral value only."""
  model: str = Field(min_length=1)
  prompt: Any  # a string, strings, token ids or lists of token ids: checked in completion_plan
  max_tokens: Optional[int] = Field(None, ge=1)
  temperature: Optional[float] = Field(None, ge=0, le=2)
  top_p: Optional[float] = Field(None, gt=0, le=1)
  n: Optional[int] = Field(None, ge=1, le=MAX_CHOICES)
  best_of: Optional[int] = Field(None, ge=1, le=MAX_CHOICES)
  seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
  stop: Any = None  # a string or up to MAX_STOPS strings: checked in completion_plan
  echo: Optional[bool] = None
  stream: Optional[bool] = None
  stream_options: Optional[dict[str, Any]] = None
  logprobs: Optional[int] = Field(None, ge=0, le=5)
  suffix: Optional[str] = None
  presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
  frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
  logit_bias: Optional[dict[str, float]] = None
  user: Optional[str] = None


class _FieldError(ValueError):
  def __init__(self, param: str, message: str):
    super().__init__(message)
    self.param = param


def _field_error(param: str, message: str) -> _FieldError:
  return _FieldError(param, message)


def _where(loc: tuple) -> str:
  """('decoding', 'num_beams') -> 'decoding.num_beams'; ('inputs', 3) -> 'inputs[3]'."""
  out = ''
  for part in loc:
    out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else str(part))
  return out


def shown(value: Any) -> str:
  text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else (
      'an object' if isinstance(value, dict) else 'a list' if isinstance(value, list)
      else type(value).__name__)
  return text if len(text) <= 60 else text[:57] + '...'


def parse(model: type[BaseModel], body: Any, context: Optional[dict] = None) -> Any:
  """`body` as `model`, or RequestError(400) naming the first bad field (its `param`)."""
  if not isinstance(body, dict):
    raise RequestError(400, f'the request body must be a JSON object, got {shown(body)}.')
  try:
    return model.model_validate(body, context=context)
  except pydantic.ValidationError as e:
    first = e.errors(include_url=False)[0]
    cause = (first.get('ctx') or {}).get('error')
    if isinstance(cause, _FieldError):
      raise RequestError(400, f'"{cause.param}": {cause}.', param=cause.param) from None
    where = _where(tuple(first['loc'])) or 'body'
    kind, message = first['type'], first['msg']
    if kind == 'extra_forbidden':
      known = ', '.join(_known(model, tuple(first['loc'][:-1])))
      message = f'unknown field (known here: {known})'
    elif kind == 'missing':
      message = 'required field missing'
    else:
      message = re.sub(r'^Value error, ', '', message)
      message = message[0].lower() + message[1:]
      if not isinstance(first.get('input'), (dict, list)):
        message += f', got {shown(first.get("input"))}'
    raise RequestError(400, f'"{where}": {message}.', param=where) from None


def _known(model: type[BaseModel], loc: tuple) -> list[str]:
  for part in loc:  # down to the nested model the unknown field is in
    field = model.model_fields.get(part) if isinstance(part, str) else None
    inner = getattr(field, 'annotation', None) if field else None
    for candidate in getattr(inner, '__args__', (inner,)):
      if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        model = candidate
        break
  return sorted(model.model_fields)


# ----------------------------------------------------------------------------------------------
# Completions.


@dataclasses.dataclass(frozen=True)
class CompletionPlan:
  """How a completions request runs: each prompt (text or token ids) n times with one key."""
  prompts: list[str | list[int]]
  n: int
  key: tuple          # ('generate', DecodingConfig, max tokens)
  stop: tuple[str, ...]
  echo: bool


_NEUTRAL: dict[str, tuple] = {
    'stream': (None, False), 'stream_options': (None,), 'suffix': (None, ''),
    'presence_penalty': (None, 0.0), 'frequency_penalty': (None, 0.0), 'logit_bias': (None, {})}
_WHY = {'stream': 'streaming is not supported; send "stream": false',
        'stream_options': 'streaming is not supported',
        'suffix': 'this server completes no suffix',
        'presence_penalty': 'penalties are not supported; send 0',
        'frequency_penalty': 'penalties are not supported; send 0',
        'logit_bias': 'logit biases are not supported',
        'logprobs': 'token log-probabilities are not supported; /v1/predict with "method": '
                    '"rank" scores each label'}


def completion_plan(req: CompletionRequest, config: ServeConfig, vocab_size: int) -> CompletionPlan:
  """Checks what a completions request asks against what maps onto the engine: temperature 0
  (the default) is greedy decoding and best_of > 1 with it beam search (the best beam);
  temperature > 0 samples (top_p, seed)."""
  for name, neutral in _NEUTRAL.items():
    if getattr(req, name) not in neutral:
      raise RequestError(400, f'"{name}": {_WHY[name]}.', param=name)
  if req.logprobs is not None:
    raise RequestError(400, f'"logprobs": {_WHY["logprobs"]}.', param='logprobs')
  prompts = _prompts(req.prompt, vocab_size)
  stop = _stops(req.stop)
  temperature = req.temperature or 0.0
  n = req.n or 1
  best_of = req.best_of or n
  if best_of < n:
    raise RequestError(400, f'"best_of": must be at least n ({n}), got {best_of}.',
                       param='best_of')
  if temperature > 0 and best_of > n:
    raise RequestError(400, '"best_of": above n with temperature > 0 is not supported (best_of '
                            '> 1 is beam search at temperature 0).', param='best_of')
  if temperature == 0 and n > 1:
    raise RequestError(400, f'"n": {n} choices need temperature > 0 (greedy decoding and beam '
                            f'search give one answer).', param='n')
  if len(prompts) * n > config.max_inputs_per_request:
    raise RequestError(413, f'{len(prompts)} prompt(s) x n={n} is {len(prompts) * n} rows; at '
                            f'most {config.max_inputs_per_request} (--max_inputs_per_request).',
                       param='prompt')
  length = req.max_tokens or config.max_decode_length
  if length > config.max_decode_length:
    raise RequestError(400, f'"max_tokens": must be at most {config.max_decode_length} '
                            f'(--max_decode_length), got {length}.', param='max_tokens')
  if temperature > 0:
    dc = decoding.DecodingConfig('sample', temperature=temperature, top_p=req.top_p or 1.0,
                                 seed=req.seed or 0)
  elif best_of > 1:
    dc = decoding.DecodingConfig('beam_search', num_beams=best_of)
  else:
    dc = decoding.DecodingConfig()
  return CompletionPlan(prompts, n, ('generate', dc, length), stop, bool(req.echo))


def _prompts(prompt: Any, vocab_size: int) -> list[str | list[int]]:
  shape = ('"prompt": must be a string, a list of strings, a list of token ids or a list of '
           'lists of token ids')
  if isinstance(prompt, str):
    return [prompt]
  if not isinstance(prompt, list) or not prompt:
    raise RequestError(400, f'{shape}, got {shown(prompt)}.', param='prompt')
  if all(_is_id(t) for t in prompt):
    prompt = [prompt]
  elif not all(isinstance(p, str) for p in prompt) and not all(
      isinstance(p, list) and p and all(_is_id(t) for t in p) for p in prompt):
    raise RequestError(400, f'{shape}.', param='prompt')
  for i, p in enumerate(prompt):
    if isinstance(p, list):
      bad = next((t for t in p if not 0 <= t < vocab_size), None)
      if bad is not None:
        raise RequestError(400, f'"prompt[{i}]": token id {bad} is outside the vocabulary '
                                f'[0, {vocab_size}).', param=f'prompt[{i}]')
  return prompt


def _stops(stop: Any) -> tuple[str, ...]:
  stops = (stop,) if isinstance(stop, str) else stop if stop is not None else ()
  if not isinstance(stops, (tuple, list)) or not all(isinstance(s, str) and s for s in stops) \
      or len(stops) > MAX_STOPS:
    raise RequestError(400, f'"stop": must be a non-empty string or a list of at most '
                            f'{MAX_STOPS} of them, got {shown(stop)}.', param='stop')
  return tuple(stops)


def _is_id(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
  """The text before the first stop string, and whether one was found."""
  at = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
  return (text, False) if at < 0 else (text[:at], True)
