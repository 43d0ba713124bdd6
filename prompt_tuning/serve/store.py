"""The served prompts: `PromptStore` (a prompt library changed at run time) and `Snapshot` (the
table one batch runs with). Names, widths, lengths and the table are the prompt library's checks
(prompts/library.py); the store adds the rules of a library changed over HTTP: a prompt by path
stays inside the library folder, a name is added once, and the table's capacity grows in powers
of two, so adding a prompt rarely changes a shape."""

import dataclasses
import os
import posixpath
import threading
from typing import Any, Mapping, Optional

import numpy as np

from prompt_tuning import storage
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.serve.errors import RequestError


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
    length = length or (first.value.shape[0] if first is not None else None)
    if length is None:
      raise ValueError('serve needs at least one prompt (--prompts) or a --prompt_length.')
    self.length: int = length
    self._lock = threading.Lock()
    self._prompts: dict[str, library_lib.LibraryPrompt] = {}
    self._version = 0
    for prompt in library.values():
      self._check(prompt)
      self._prompts[prompt.name] = prompt
    self._snapshot = self._build()

  def _check(self, prompt: library_lib.LibraryPrompt, param: Optional[str] = None) -> None:
    """The prompt fits the table: the model's width, the served length (400 otherwise)."""
    if prompt.value.ndim != 2:
      raise RequestError(400, f'prompt {prompt.name!r} has shape {list(prompt.value.shape)} but '
                              f'the model takes [length, {self.d_model}] prompts (d_model '
                              f'{self.d_model}).', param=param)
    try:
      library_lib.check_shapes({prompt.name: prompt}, self.d_model, self.length)
    except library_lib.LibraryError as e:
      raise RequestError(400, str(e), param=param) from None

  def _build(self) -> Snapshot:
    capacity = 2
    while capacity < len(self._prompts):
      capacity *= 2
    table = np.zeros((capacity, self.length, self.d_model), np.float32)
    names: list[str] = []
    if self._prompts:
      names, stacked = library_lib.table(self._prompts)
      table[:len(names)] = stacked
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
    prompt = library_lib.LibraryPrompt(name, value, source, kind)
    self._check(prompt, 'path' if path is not None else 'values')
    with self._lock:
      if name in self._prompts:
        raise RequestError(409, f'a prompt named {name!r} exists; DELETE it first.',
                           param='name')
      self._prompts[name] = prompt
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
