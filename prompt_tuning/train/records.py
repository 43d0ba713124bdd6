"""JSONL records (metrics.jsonl, inference_eval/*-metrics.jsonl): one JSON object a line,
appended durably, read back whole (a line a kill cut short is left out), rewritten atomically.
Local or on object storage (which has no append: the file is written again whole)."""

from __future__ import annotations

import json
import os
from typing import Callable

from prompt_tuning import storage


def read_jsonl(path: str) -> list[dict]:
  """The whole records of a JSONL file (a line a kill cut short is left out)."""
  if not storage.exists(path):
    return []
  records = []
  for line in storage.read_bytes(path).decode('utf-8', errors='replace').split('\n'):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


def append_jsonl(path: str, record: dict) -> None:
  """Appends one line; after a line a kill cut short, on a line of its own. Object storage
  has no append: the file is written again whole, as one object (it stays small)."""
  if storage.is_remote(path):
    old = storage.read_bytes(path) if storage.exists(path) else b''
    cut = bool(old) and not old.endswith(b'\n')
    storage.write_atomic(path, old + (('\n' if cut else '') + json.dumps(record) + '\n').encode())
    return
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'a+b') as f:
    cut = False
    if f.seek(0, os.SEEK_END) > 0:
      f.seek(-1, os.SEEK_END)
      cut = f.read(1) != b'\n'
    f.write((('\n' if cut else '') + json.dumps(record) + '\n').encode())


def rewrite_jsonl(path: str, keep: Callable[[dict], bool]) -> None:
  """Keeps the records `keep` accepts (the file is rewritten atomically, only if it changes)."""
  if not storage.exists(path):
    return
  records = read_jsonl(path)
  kept = [r for r in records if keep(r)]
  original = storage.read_bytes(path)
  data = ''.join(json.dumps(r) + '\n' for r in kept).encode()
  if data != original:
    storage.write_atomic(path, data)
