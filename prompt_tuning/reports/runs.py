"""A finished MODEL_DIR read for the report: what the run is (method, model size, variant) and
what it scored, from its files alone (no weights, no data, no TensorFlow).

  run_info.json         method (`tuning`: 'prompt', the default, or 'model'), prompt length,
                        placement, deep, table size, the model's T5Config (size, parameters)
  summary.json          the task (a `_sentinel` name: the sentinel variant), the main metric
  operative_config.gin  the prompt's initialiser (config.gin when the run did not finish it)
  metrics.jsonl         the run's evaluations: best and final score of the main metric
  inference_eval/       `<task>-metrics.jsonl` of each evaluation, `prompt-tuning eval`'s too
                        (MRQA's out-of-domain sets, a transfer task scored after training)

A folder that is not a finished run raises RunSkipped, whose message says why in a few words.
Runs without summary.json are unfinished (training, or stopped early) and are skipped: their
main metric and task are only known once the run wrote its summary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from typing import Any, Optional

from prompt_tuning import storage
from prompt_tuning.storage import one_line
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import records

PROMPT = 'prompt'  # run_info.json's `tuning` when absent: every run before model tuning existed
_METHODS = {'prompt': 'prompt tuning', 'model': 'model tuning'}
_SENTINEL = '_sentinel'
_INIT = re.compile(r"initializer_by_name\.name\s*=\s*['\"]([\w-]+)['\"]")
# Records of inference_eval/ that score the run's own prompt (in training, or `prompt-tuning
# eval`); an ensemble's member files are left out: the run's score is the ensemble's.
_OWN_TAGS = ('', model_dir_lib.COMMAND_TAG, 'ensemble', 'train-ensemble')


class RunSkipped(ValueError):
  """A folder the report leaves out; the message says why."""


@dataclasses.dataclass(frozen=True)
class Score:
  """One evaluation of one task: its step and metrics (e.g. {'f1': ..., 'em': ...})."""
  step: int
  metrics: dict[str, float]


@dataclasses.dataclass
class Run:
  path: str
  task: str  # the task as the tables group it (base_task: no _local, taskless_, _sentinel)
  recorded_task: str  # as summary.json names it
  method: str  # 'prompt tuning' | 'model tuning'
  size: str  # 'small' ... 'xxl' when the shape is a T5 1.1 size, else 'd<d_model>'
  d_model: int
  params: int  # the frozen model's parameters (prompts aside)
  variant: str  # 'P=100, init=class_labels, sentinel, ...' ('' for nothing to say)
  metric: str  # the main metric's key in metrics.jsonl, e.g. 'rank/accuracy'
  evals: list[tuple[int, float]]  # (step, main metric) of every evaluation, in order
  scores: dict[str, Score]  # base_task -> its score (at the best step when evaluated there)

  @property
  def name(self) -> str:
    return storage.basename(str(self.path).rstrip('/')) or str(self.path)

  @property
  def best(self) -> tuple[int, float]:
    """(step, value) of the best main-metric score; the first step that reached it."""
    value = max(v for _, v in self.evals)
    return next((s, v) for s, v in self.evals if v == value)

  @property
  def final(self) -> tuple[int, float]:
    return self.evals[-1]

  @property
  def label(self) -> str:
    """method, size and variant in a few words: a column or legend name."""
    return ', '.join([f'{self.method} {self.size}'] + ([self.variant] if self.variant else []))


def base_task(name: str) -> str:
  """A task's name without the suffixes of its variants (`_local` release files, `taskless_`
  inputs, `_sentinel` targets): the runs of one task share a table."""
  name = name[len('taskless_'):] if name.startswith('taskless_') else name
  changed = True
  while changed:
    changed = False
    for suffix in (_SENTINEL, '_local'):
      if name.endswith(suffix):
        name, changed = name[:-len(suffix)], True
  return name


def read_run(path: str) -> Run:
  """The report's view of the MODEL_DIR `path`; RunSkipped says why a folder is not one."""
  if not storage.isdir(path):
    raise RunSkipped('not a directory' if storage.exists(path) else 'no such folder')
  try:
    info = model_dir_lib.read_run_info(path)
  except ValueError as e:
    raise RunSkipped(f'unreadable {model_dir_lib.RUN_INFO} ({_short(e)})') from None
  if info is None:
    raise RunSkipped(f'no {model_dir_lib.RUN_INFO} (not a prompt-tuning MODEL_DIR)')
  summary = _json(path, model_dir_lib.SUMMARY)
  if summary is None:
    raise RunSkipped(f'unfinished: no {model_dir_lib.SUMMARY} (still training, or stopped before '
                     f'its last step)')
  task = summary.get('task')
  if not isinstance(task, str) or not task:
    raise RunSkipped(f'{model_dir_lib.SUMMARY} names no task')
  evals = [r for r in records.read_jsonl(storage.join(path, model_dir_lib.METRICS))
           if r.get('kind') == 'eval' and isinstance(r.get('step'), int)]
  if not evals:
    raise RunSkipped(f'no evaluation records in {model_dir_lib.METRICS}')
  metric = _main_metric(summary, evals)
  history = [(r['step'], float(r[metric])) for r in evals if _number(r.get(metric))]
  if not history:
    raise RunSkipped(f'no {metric!r} in the evaluations of {model_dir_lib.METRICS}')
  config = info.get('model_config')
  if not isinstance(config, dict):
    raise RunSkipped(f'{model_dir_lib.RUN_INFO} has no model_config')
  try:
    size, params = _model_size(json.dumps(config, sort_keys=True))
  except (TypeError, ValueError) as e:
    raise RunSkipped(f"{model_dir_lib.RUN_INFO}'s model_config is not a T5 model "
                     f'({_short(e)})') from None
  tuning = str(info.get('tuning') or PROMPT)
  method = _METHODS.get(tuning, f'{tuning} tuning')
  run = Run(path=path, task=base_task(task), recorded_task=task, method=method, size=size,
            d_model=int(config.get('d_model', 0)), params=params,
            variant=', '.join(_variant(path, info, task, tuning)), metric=metric,
            evals=history, scores={})
  run.scores = _scores(path, run, evals)
  return run


def _json(path: str, name: str) -> Optional[dict]:
  """A JSON object file of MODEL_DIR, None when absent; RunSkipped when damaged."""
  file = storage.join(path, name)
  if not storage.exists(file):
    return None
  try:
    value = json.loads(storage.read_text(file))
  except (OSError, ValueError) as e:
    raise RunSkipped(f'unreadable {name} ({_short(e)})') from None
  if not isinstance(value, dict):
    raise RunSkipped(f'unreadable {name} (not a JSON object)')
  return value


def _short(e: BaseException) -> str:
  text = one_line(e)
  return text if len(text) <= 120 else text[:117] + '...'


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _main_metric(summary: dict, evals: list[dict]) -> str:
  """The metric the run picked its best prompt by; for a task without one (no 'best' in the
  summary), the first metric its evaluations report other than the count of invalid answers."""
  best = summary.get('best')
  if isinstance(best, dict) and isinstance(best.get('metric'), str):
    return best['metric']
  for key, value in evals[0].items():
    if key not in ('kind', 'step') and not key.endswith('invalid') and _number(value):
      return key
  raise RunSkipped(f'no metric in the evaluations of {model_dir_lib.METRICS}')


@functools.lru_cache(maxsize=None)
def _model_size(config_json: str) -> tuple[str, int]:
  """(size name, parameter count) of a T5Config given as run_info.json's JSON: shapes only
  (jax.eval_shape), so any size is counted in moments without its weights."""
  from prompt_tuning.models import t5
  fields = {f.name for f in dataclasses.fields(t5.T5Config)}
  values = json.loads(config_json)
  config = t5.T5Config(**{k: v for k, v in values.items() if k in fields})
  return config.size_name or f'd{config.d_model}', t5.count_params(config)


def _variant(path: str, info: dict, task: str, tuning: str) -> list[str]:
  """What sets the run apart within its method and size, in the paper's ablation terms."""
  parts = []
  if tuning == PROMPT:
    parts.append(f"P={info.get('prompt_length')}")
    init = _initializer(path)
    if init:
      parts.append(f'init={init}')
  elif info.get('trainable') not in (None, 'all'):
    parts.append(f"trainable={info['trainable']}")
  if task.endswith(_SENTINEL):
    parts.append('sentinel')
  if info.get('deep'):
    parts.append('deep')
  if info.get('placement') not in (None, 'prefix'):
    parts.append(str(info['placement']))
  if int(info.get('num_prompts') or 1) > 1:
    parts.append(f"{info['num_prompts']} prompts" + (
        ' (shared: ' + str(info['prompt_shared']) + ')' if info.get('prompt_shared') else ''))
  return parts


def _initializer(path: str) -> Optional[str]:
  """The prompt initialiser's name bound in the run's gin config (None without one: a run
  started from Python rather than gin)."""
  for name in (model_dir_lib.OPERATIVE_CONFIG_GIN, model_dir_lib.CONFIG_GIN):
    file = storage.join(path, name)
    try:
      match = _INIT.search(storage.read_text(file)) if storage.exists(file) else None
    except (OSError, ValueError):
      match = None  # an unreadable config hides the initialiser, not the run
    if match:
      return match.group(1)
  return None


def _scores(path: str, run: Run, evals: list[dict]) -> dict[str, Score]:
  """Each task's metrics: from metrics.jsonl (a mixture: each of its tasks) and from every
  inference_eval/<task>-metrics.jsonl; per task the evaluation at the run's best step, else
  its latest."""
  method = run.metric.split('/', 1)[0]
  prefix = f'{method}/ensemble/' if run.metric.startswith(f'{method}/ensemble/') else f'{method}/'
  found: dict[str, list[Score]] = {}
  for record in evals:
    metrics = {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)}
    _add(found, run.recorded_task, record['step'], metrics)
  eval_dir = storage.join(path, model_dir_lib.INFERENCE_EVAL)
  suffix = model_dir_lib.eval_metrics_file('')
  for name in sorted(storage.listdir(eval_dir)) if storage.isdir(eval_dir) else ():
    if not name.endswith(suffix):
      continue
    for record in records.read_jsonl(storage.join(eval_dir, name)):
      if (record.get('method', method) == method and record.get('tag', '') in _OWN_TAGS and
          isinstance(record.get('step'), int)):
        metrics = {k: v for k, v in record.items() if k not in ('step', 'method', 'tag')}
        _add(found, name[:-len(suffix)], record['step'], metrics)
  best_step = run.best[0]
  chosen = {}
  for task, scores in found.items():
    at_best = [s for s in scores if s.step == best_step]
    chosen[task] = at_best[-1] if at_best else max(scores, key=lambda s: s.step)
  return chosen


def _add(found: dict[str, list[Score]], task: str, step: int, metrics: dict) -> None:
  """Splits one evaluation's metrics by task: '<task>/<metric>' are a mixture's tasks, the
  plain ones `task`'s own (a mixture's: the mean over its tasks)."""
  by_task: dict[str, dict[str, float]] = {}
  for key, value in metrics.items():
    if not _number(value):
      continue
    parts = key.split('/')
    if len(parts) == 1:
      by_task.setdefault(base_task(task), {})[key] = float(value)
    elif len(parts) == 2 and not parts[0].startswith(('member', 'ensemble')):
      by_task.setdefault(base_task(parts[0]), {})[parts[1]] = float(value)
  for name, values in by_task.items():
    found.setdefault(name, []).append(Score(step, values))
