"""Raw task examples for `prompt-tuning serve`: `DataLayer`, the data layer's task knowledge,
loaded at server start: label words for rank, and raw examples (rows of the official release
files) formatted as the task formats them."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any, Optional

from prompt_tuning.serve.errors import RequestError
from prompt_tuning.serve.requests import shown


class DataLayer:
  """The data layer's task knowledge for serve, loaded once at start (its import brings
  TensorFlow and SeqIO: seconds, never on the event loop).

  A raw example is a row of the task's official release file as the file holds it (SuperGLUE
  JSONL fields and labels, e.g. "label": "entailment"; GLUE TSV columns), `idx` optional. It is
  handed to the data layer as a one-row release file, so the task's own reader checks and
  converts it and the task's formatter makes the model input: exactly what eval and train read.
  """

  def __init__(self):
    from prompt_tuning.data import tasks
    self._tasks = tasks
    self._dir = tempfile.mkdtemp(prefix='prompt-tuning-serve-')

  def close(self) -> None:
    shutil.rmtree(self._dir, ignore_errors=True)

  def labels(self, task: str) -> Optional[list[str]]:
    """The task's label words in class order (rank's candidates), or None."""
    info = self._tasks.TASK_INFO.get(task)
    return list(info.labels) if info is not None and info.labels else None

  def _reader(self, task: str) -> tuple[Any, bool]:
    """(the release-file reader of `task`, whether its files are TSV)."""
    found = self._tasks.release_file_reader(task)
    if found is None:
      if task in self._tasks.TASK_INFO:
        raise RequestError(400, f'{task!r} has no release-file format for raw examples (GLUE '
                                f'and SuperGLUE tasks do); send the model\'s input text.',
                           param='inputs')
      raise RequestError(400, f'raw examples need a prompt named as its task (e.g. '
                              f'super_glue_rte_local); {task!r} is no registered task. Send the '
                              f'model\'s input text.', param='inputs')
    reader, path = found
    if '/cola/' in path.lower():
      raise RequestError(400, f'{task!r}: the CoLA release file has no column names, so no raw '
                              f'example fields; send the model\'s input text.', param='inputs')
    return reader, path.endswith('.tsv')

  def format(self, task: str, example: dict, i: int) -> str:
    """The model input of raw example `i` of a request, as the task formats it."""
    where = f'inputs[{i}]'
    reader, tsv = self._reader(task)
    text = self._row(example, where, tsv)
    fd, path = tempfile.mkstemp(suffix='.tsv' if tsv else '.jsonl', dir=self._dir)
    try:
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.write(text)
      try:
        examples = reader(path, False)  # unlabeled: a label is optional, checked when given
      except ValueError as e:
        raise self._error(e, path, where) from None
    finally:
      os.unlink(path)
    try:
      formatted = [x for ex in examples for x in self._tasks.format_example(task, ex)]
    except (ValueError, KeyError, TypeError, IndexError) as e:
      raise RequestError(400, f'"{where}": cannot format it as {task!r} ({e}).',
                         param=where) from None
    inputs = sorted({x['inputs'] for x in formatted})
    if len(inputs) != 1:
      raise RequestError(400, f'"{where}": {task!r} formats it into {len(inputs)} model inputs; '
                              f'send one per input (e.g. one question and answer of a passage).',
                         param=where)
    return inputs[0]

  def _row(self, example: dict, where: str, tsv: bool) -> str:
    if not tsv:  # SuperGLUE: one JSON line
      return json.dumps(example if 'idx' in example else {**example, 'idx': 0}) + '\n'
    cells = {}
    for key, value in example.items():
      if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RequestError(400, f'"{where}.{key}": a GLUE row\'s cells are text or numbers, got '
                                f'{shown(value)}.', param=f'{where}.{key}')
      if any(c in str(key) + str(value) for c in '\t\r\n'):
        raise RequestError(400, f'"{where}.{key}": holds a tab or line break, which a GLUE row '
                                f'cannot.', param=f'{where}.{key}')
      cells[str(key)] = str(value)
    return '\t'.join(cells) + '\n' + '\t'.join(cells.values()) + '\n'

  @staticmethod
  def _error(e: ValueError, path: str, where: str) -> RequestError:
    text = re.sub(re.escape(path) + r'(:\d+)?: ', '', str(e)).replace(path, where)
    text = re.sub(r';? ?(fix or remove this line|use the official GLUE release file)', '', text)
    text = text.replace('the header has no column', 'missing field').replace(' ()', '')
    field = re.search(r"(?:field|column) '([^']+)'|^(label) ", text)
    param = f'{where}.{field.group(1) or field.group(2)}' if field else where
    return RequestError(400, f'"{param}": {text.rstrip(".")}.', param=param)
