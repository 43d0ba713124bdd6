"""Markdown tables from benchmark JSON files.

  python -m benchmarks.summarize out/*.json > out/summary.md
"""

from __future__ import annotations

import json
import os
import sys

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import types  # noqa: E402

from benchmarks import causal_lm_real_data  # noqa: E402
from benchmarks import inference  # noqa: E402
from benchmarks import real_data  # noqa: E402
from benchmarks import train_step  # noqa: E402
from benchmarks import tuning_cost  # noqa: E402

MODULES = {'train_step': train_step, 'inference': inference, 'real_data': real_data,
           'tuning_cost': tuning_cost, 'causal_lm_real_data': causal_lm_real_data,
           'real_data_eval': types.SimpleNamespace(TABLE_HEADER=real_data.EVAL_TABLE_HEADER,
                                                   table_row=real_data.eval_table_row)}


def tables(paths: list[str]) -> str:
  rows = {name: [] for name in MODULES}
  for path in paths:
    if not os.path.isfile(path):  # e.g. an unmatched shell glob: no run finished
      continue
    with open(path) as f:
      result = json.load(f)
    if result.get('benchmark') in MODULES:
      rows[result['benchmark']].append(MODULES[result['benchmark']].table_row(result))
  parts = [f'### {name}\n\n{MODULES[name].TABLE_HEADER}\n' + '\n'.join(lines)
           for name, lines in rows.items() if lines]
  return '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
  print(tables(sys.argv[1:]), end='')
