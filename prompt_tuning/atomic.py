"""Atomic file writes: a temporary sibling renamed into place, so a reader sees the old file or
the new one, never a part. Every file under MODEL_DIR and every export is written this way."""

from __future__ import annotations

import os
from typing import Any, Callable

TMP_MARK = '.tmp-'  # what repair looks for: `<name>.tmp-<pid>`


def tmp_name(path: str) -> str:
  return f'{path}{TMP_MARK}{os.getpid()}'


def atomic_write(path: str, data: bytes | str) -> str:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = tmp_name(path)
  with open(tmp, 'wb') as f:
    f.write(data.encode() if isinstance(data, str) else data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def atomic_save(path: str, save: Callable[[str], Any]) -> str:
  """Runs `save(tmp_path)` (a writer that wants a path), then renames into place."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = tmp_name(path)
  save(tmp)
  os.replace(tmp, path)
  return path
