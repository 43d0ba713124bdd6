"""Gin, in one place (as T5X's gin_utils): T5X's flags (`--gin_file`, `--gin_bindings`,
`--gin.NAME=VALUE`, `--gin_search_paths`), where gin files are found, and the checks that turn
gin's errors into one line.

Gin files are looked up in the current directory, the `--gin_search_paths`, and the `gin/` and
`configs/` folders installed with the package (so `--gin_file=runs/prompt_finetune.gin` works
from a wheel). Later `--gin_file`s and bindings win over earlier ones.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
from typing import Sequence


class UsageError(ValueError):
  """A flag or gin setting that cannot work; the message names it."""


def add_flags(parser: argparse.ArgumentParser) -> None:
  """T5X's gin flags, on a command that runs a gin-configured function."""
  group = parser.add_argument_group('gin (T5X flags)')
  group.add_argument('--gin_file', action='append', default=[],
                     help='gin file; repeatable, later files win')
  group.add_argument('--gin_bindings', action='append', default=[],
                     help="a gin binding, e.g. \"MODEL_DIR = '/tmp/x'\" (T5X's --gin.NAME=VALUE "
                     "gives one too); repeatable")
  group.add_argument('--gin_search_paths', action='append', default=[],
                     help='extra folders (comma-separated or repeated) to find gin files in')


def package_gin_dirs() -> list[str]:
  """The gin/ and configs/ folders: inside the installed package (wheel) or the checkout."""
  package = os.path.dirname(os.path.abspath(__file__))
  dirs = []
  for root in (package, os.path.dirname(package)):
    if os.path.isdir(os.path.join(root, 'gin')):
      # The folders themselves ('runs/prompt_finetune.gin') and their parent
      # ('configs/paper/t5_1_1_base_rte.gin', as written from a checkout).
      dirs += [os.path.join(root, 'gin'), os.path.join(root, 'configs'), root]
  return [d for d in dirs if os.path.isdir(d)]


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """T5X's `--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (bare paths get quoted)."""
  out = []
  for arg in argv:
    m = re.fullmatch(r'--gin\.([^=]+)=(.*)', arg, re.DOTALL)
    if m:
      out.append(f'--gin_bindings={m.group(1)} = {_gin_value(m.group(2))}')
    else:
      out.append(arg)
  return out


def _gin_value(value: str) -> str:
  # Gin values are Python-like literals; a bare word or path would be a syntax error, so quote it.
  if re.fullmatch(r"\s*([@%\[\(\{'\"]|-?\d|True\b|False\b|None\b).*", value, re.DOTALL):
    return value
  return repr(value)


def setup(args: argparse.Namespace, default_files: Sequence[str] = (),
          defaults: Sequence[str] = ()) -> None:
  """Parses the gin files, then `defaults` (bindings a command fills in), then the user's."""
  import gin
  search = [os.getcwd()]
  for entry in args.gin_search_paths:
    search += [p for p in entry.split(',') if p]
  search += package_gin_dirs()
  for path in search:
    gin.add_config_file_search_path(path)
  files = list(args.gin_file) or list(default_files)
  if not files:
    raise UsageError('no --gin_file given (e.g. --gin_file=configs/paper/t5_1_1_base_rte.gin, '
                     'or a file of your own that includes runs/prompt_finetune.gin).')
  resolved = [_find_gin_file(f, search) for f in files]
  _guard_gin_package_lookup()
  # gin logs every search-path probe (and miss, as an error) on the root logger.
  quiet = _DropMessages(('Path not found', 'system_path_file_exists'))
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(resolved, list(defaults) + list(args.gin_bindings),
                                        finalize_config=True)
  except (ValueError, SyntaxError, ImportError, IOError) as e:
    raise UsageError(f'gin configuration error: {e}') from None
  finally:
    logging.getLogger().removeFilter(quiet)
  check_macros_used(args.gin_bindings)


def _referenced_macros() -> set[str]:
  """Names used as %NAME anywhere in the parsed configuration."""
  from gin import config as gin_config
  found: set[str] = set()

  def walk(value):
    if isinstance(value, gin_config.ConfigurableReference):
      if value.selector == 'gin.macro':
        found.add('/'.join(value.scopes))
    elif isinstance(value, dict):
      for v in value.values():
        walk(v)
    elif isinstance(value, (list, tuple, set)):
      for v in value:
        walk(v)
  for bindings in gin_config._CONFIG.values():  # pylint: disable=protected-access
    walk(bindings)
  return found


def check_macros_used(bindings: Sequence[str]) -> None:
  """A --gin.NAME macro that no configuration reads is a typo: name it and the close match."""
  names = [m.group(1) for b in bindings
           if (m := re.match(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=', b))]
  if not names:
    return
  used = _referenced_macros()
  for name in names:
    if name not in used:
      close = difflib.get_close_matches(name, sorted(used), n=1)
      hint = f'did you mean {close[0]}?' if close else 'check its spelling'
      raise UsageError(f'--gin.{name}: no gin file reads the macro {name} ({hint}).')


def _guard_gin_package_lookup() -> None:
  """gin also looks an include ('runs/x.gin') up as a file of a Python package ('runs'). A
  plain folder of that name on sys.path (./runs, which the quickstart leaves, under `python -m`)
  is a namespace package without a file, and gin 0.5 then raises TypeError instead of going on
  to its search paths. That lookup now answers 'not found' there."""
  from gin import config as gin_config
  for i, (reader, exists) in enumerate(gin_config._FILE_READERS):  # pylint: disable=protected-access
    if getattr(exists, '__name__', '') == 'system_path_file_exists':
      def guarded(path: str, exists=exists) -> bool:
        try:
          return exists(path)
        except TypeError:
          return False
      gin_config._FILE_READERS[i] = (reader, guarded)  # pylint: disable=protected-access


class _DropMessages(logging.Filter):

  def __init__(self, prefix: tuple[str, ...]):
    super().__init__()
    self.prefix = prefix

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefix)


def _find_gin_file(name: str, search: Sequence[str]) -> str:
  if os.path.isabs(name):
    if os.path.exists(name):
      return name
  for root in search:
    candidate = os.path.join(root, name)
    if os.path.exists(candidate):
      return candidate
  raise UsageError(f'gin file {name!r} not found in: {", ".join(search)}')
