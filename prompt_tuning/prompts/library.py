"""A prompt library: named prompts for one frozen model, stacked into one table [K, P, D] so a
batch can mix them (each row picks its prompt by `prompt_ids`).

Where the prompts come from (`load_library`):
  a directory     each `<name>.npy` (or extension-less numpy file), each PEFT adapter folder
                  `<name>/`, each finished run's MODEL_DIR `<name>/` (its latest committed
                  step); a multi-task MODEL_DIR contributes one prompt per task, named by the
                  task. A directory that is itself a MODEL_DIR is the library of its prompts.
  a mapping       {name: path} of the same kinds (gin: PROMPT_LIBRARY = {'rte': '/p/rte.npy'});
                  a multi-task MODEL_DIR's prompts keep their task names.
  a list          [path, ...], each named by its path (an ensemble's members).

Every prompt must have the model's width and the same length (one table); names must be unique
and plain (letters, digits, '_', '-', '.'; no path separators). Each violation is one error
naming the entry; nothing is loaded half.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.prompts import files as prompt_files
from prompt_tuning import storage

Spec = Union[str, os.PathLike, Mapping[str, Any], Sequence[Any]]
_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.\-]*')


class LibraryError(ValueError):
  """A library entry cannot be used; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class LibraryPrompt:
  name: str
  value: np.ndarray  # [P, D] float32
  source: str        # the file, adapter folder or MODEL_DIR it came from
  kind: str          # 'npy' | 'peft' | 't5x' | 'model_dir'


def check_name(name: Any, where: str = '') -> str:
  """A usable prompt name: a plain file-name-like word (no '/', no leading '.')."""
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise LibraryError(f'{where}prompt name {name!r} is not allowed: use letters, digits, '
                       f"'_', '-' and '.', starting with a letter, digit or '_'.")
  return name


def _is_model_dir(path: str) -> bool:
  return storage.isdir(path) and storage.isfile(model_dir_lib.run_info_path(path))


def _kind(path: str) -> str:
  if _is_model_dir(path):
    return 'model_dir'
  if storage.isdir(path):
    return 'peft' if storage.isfile(storage.join(path, 'adapter_config.json')) else 't5x'
  return 'npy'


def _missing(path: str, what: str) -> LibraryError:
  """The error for a path that is not there; for a URL, a missing bucket is named."""
  try:
    storage.check_writable(path, what)  # a URL's bucket (nothing is written)
  except storage.StorageError as e:
    return LibraryError(str(e))
  return LibraryError(f'{what}: {path} does not exist.')


def _load_entry(name: Optional[str], path: str) -> list[LibraryPrompt]:
  """The prompt(s) at `path`: one named `name`, or a multi-task MODEL_DIR's, named by task."""
  path = os.fspath(path)
  # A URL named by itself (a list entry) is named once in messages.
  what = ('prompt library entry' if storage.is_remote(path) and name in (None, path)
          else f'prompt library entry {name or path!r}')
  try:
    if not storage.exists(path):
      raise _missing(path, what)
    kind = _kind(path)
  except storage.StorageError as e:
    raise LibraryError(f'{what}: {e}') from None
  try:
    if kind == 'model_dir':
      value, _ = model_dir_lib.load_prompt(path)
      names = model_dir_lib.prompt_names(path)
      if names is not None and value.ndim == 3:
        return [LibraryPrompt(check_name(n, f'{path}: '), v, path, kind)
                for n, v in zip(names, value)]
    else:
      value = prompt_files.load_prompt_file(path)
  except LibraryError:
    raise
  except (ValueError, OSError) as e:
    raise LibraryError(f'{what}: {e}') from e
  return [LibraryPrompt(name if name is not None else path, value, path, kind)]


def _directory_entries(directory: str) -> list[tuple[Optional[str], str]]:
  if _is_model_dir(directory):
    names = model_dir_lib.prompt_names(directory)
    base = (storage.basename(directory) if storage.is_remote(directory)
            else os.path.basename(os.path.normpath(directory)))
    return [(None if names else base, directory)]
  entries: list[tuple[Optional[str], str]] = []
  for entry in sorted(storage.listdir(directory)):
    path = storage.join(directory, entry)
    if entry.startswith('.'):
      continue
    if storage.isdir(path):
      if _is_model_dir(path) and model_dir_lib.prompt_names(path):
        entries.append((None, path))  # named by its tasks
      elif _is_model_dir(path) or storage.isfile(storage.join(path, 'adapter_config.json')):
        entries.append((entry, path))
    elif entry.endswith('.npy') or '.' not in entry:
      entries.append((entry[:-4] if entry.endswith('.npy') else entry, path))
  if not entries:
    raise LibraryError(f'prompt library {directory}: no prompts in it (.npy files, PEFT adapter '
                       f'folders or MODEL_DIRs of finished runs).')
  return entries


def load_library(spec: Spec, d_model: Optional[int] = None) -> dict[str, LibraryPrompt]:
  """Name -> prompt, in a fixed order (a directory's sorted entries, a mapping's or list's
  order). Checks names, duplicates, widths (against `d_model` when given) and lengths."""
  if isinstance(spec, (str, os.PathLike)):
    directory = os.fspath(spec)
    try:
      if storage.is_remote(directory):
        directory = directory.rstrip('/')
        storage.check_writable(directory, 'prompt library')  # its bucket (nothing is written)
      if not storage.isdir(directory):
        raise LibraryError(f'prompt library {directory}: not a directory (give a folder of '
                           f'prompts, a {{name: path}} mapping or a list of paths).')
      entries = _directory_entries(directory)
    except storage.StorageError as e:
      raise LibraryError(str(e)) from None
  elif isinstance(spec, Mapping):
    entries = [(check_name(n, 'prompt library: '), p) for n, p in spec.items()]
  elif isinstance(spec, Sequence) and spec:
    entries = [(os.fspath(p), os.fspath(p)) for p in spec]
  else:
    raise LibraryError(f'prompt library {spec!r}: give a directory, a {{name: path}} mapping or '
                       f'a non-empty list of prompt paths.')
  library: dict[str, LibraryPrompt] = {}
  for name, path in entries:
    for prompt in _load_entry(name, path):
      if not isinstance(spec, Sequence) or isinstance(spec, str):
        check_name(prompt.name, f'{prompt.source}: ')
      if prompt.name in library:
        raise LibraryError(f'prompt name {prompt.name!r} appears twice in the library: '
                           f'{library[prompt.name].source} and {prompt.source}; rename one.')
      library[prompt.name] = prompt
  check_shapes(library, d_model)
  return library


def check_shapes(library: Mapping[str, LibraryPrompt], d_model: Optional[int] = None,
                 length: Optional[int] = None) -> None:
  """Every prompt [P, D] fits one table: width `d_model` (when given; else the first prompt's)
  and length `length` (when given; else the first prompt's)."""
  first = next(iter(library.values()))
  for p in library.values():
    p_length, width = p.value.shape
    if d_model is not None and width != d_model:
      raise LibraryError(f'prompt {p.name!r} ({p.source}) has width {width} but the model\'s '
                         f'd_model is {d_model}: it was tuned for another model.')
    if width != first.value.shape[1]:
      raise LibraryError(f'prompt {p.name!r} ({p.source}) has width {width} but {first.name!r} '
                         f'has {first.value.shape[1]}: one library serves one model.')
    if length is not None and p_length != length:
      raise LibraryError(f'prompt {p.name!r} ({p.source}) has length {p_length} but the served '
                         f'prompts have length {length}.')
    if p_length != first.value.shape[0]:
      raise LibraryError(f'prompt {p.name!r} ({p.source}) has length {p_length} but '
                         f'{first.name!r} has {first.value.shape[0]}: a mixed batch needs '
                         f'prompts of one length; keep prompts of one length per library.')


def table(library: Mapping[str, LibraryPrompt],
          names: Optional[Sequence[str]] = None) -> tuple[list[str], np.ndarray]:
  """(names, table [K, P, D]) of `names` (default: all, in library order)."""
  names = list(library) if names is None else list(names)
  missing = [n for n in names if n not in library]
  if missing:
    raise LibraryError(f'no prompt named {missing[0]!r} in the library; it has '
                       f'{sorted(library)}.')
  return names, np.stack([library[n].value for n in names]).astype(np.float32)


def run_names(library: Mapping[str, LibraryPrompt], task: str, task_names: Sequence[str],
              ensemble: bool) -> Optional[list[str]]:
  """The prompts eval runs: an ensemble's members (None: all, at least 2; ENSEMBLE_PROMPTS), or
  the prompt of each task `task_names` of `task` (named like the task; PROMPT_LIBRARY)."""
  if ensemble:
    if len(library) < 2:
      raise LibraryError(f'ENSEMBLE_PROMPTS holds {len(library)} prompt; an ensemble needs at '
                         f'least 2.')
    return None
  missing = [t for t in task_names if t not in library]
  if missing:
    raise LibraryError(f'PROMPT_LIBRARY has no prompt for task(s) {missing} of {task!r}; its '
                       f'prompts are {sorted(library)}.')
  return list(task_names)
