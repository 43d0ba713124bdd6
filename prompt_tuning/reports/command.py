"""`prompt-tuning report RUN_DIR... [--output DIR]`: reads finished MODEL_DIRs (local or gs://)
and writes the paper's layouts into DIR:

  report.md             every table below, the plots, and the folders left out with why
  runs.csv              the per-task tables in one file (a `task` column first)
  scale_<task>.png      Figure 1 / 3: best score vs model parameters, a line per method, variant
  mrqa.csv              Table 1 (when a run has MRQA scores)
  glue_transfer.csv     Table 2 (when a run has a zero-shot QQP <-> MRPC score)

A folder that is not a finished run gets one line on stderr and is left out; the report is
written when at least one run remains, else the command fails with one line.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Optional, Sequence

from prompt_tuning import storage
from prompt_tuning.reports import figure, tables
from prompt_tuning.reports.runs import Run, RunSkipped, read_run

DEFAULT_OUTPUT = 'report'


def collect(paths: Sequence[str]) -> tuple[list[Run], list[tuple[str, str]]]:
  """(the runs read, [(folder, why it was left out)]); a folder given twice is read once."""
  runs, skipped, seen = [], [], set()
  for path in paths:
    key = storage.absolute(str(path).rstrip('/') or str(path))
    if key in seen:
      continue
    seen.add(key)
    try:
      runs.append(read_run(path))
    except RunSkipped as e:
      skipped.append((path, str(e)))
    except storage.StorageError as e:  # an unreachable bucket or object: that folder only
      skipped.append((path, storage.one_line(e)))
  return runs, skipped


def _file_name(task: str) -> str:
  return 'scale_' + re.sub(r'[^\w.-]', '_', task) + '.png'


def write(runs: Sequence[Run], skipped: Sequence[tuple[str, str]], output: str) -> list[str]:
  """Writes the report of `runs` into `output`; returns the paths written."""
  written = []
  per_task = tables.task_tables(runs)
  sections = [f'# Prompt tuning report\n\n{len(runs)} run(s) reported'
              + (f', {len(skipped)} folder(s) left out' if skipped else '') + '.\n']
  csv_parts = []
  for k, (task, table) in enumerate(per_task.items()):
    plot = figure.scale_plot(storage.join(output, _file_name(task)), task,
                             [r for r in runs if r.task == task])
    written.append(plot)
    sections.append(tables.markdown(table) + f'\n![{task}: score vs model parameters]'
                    f'({_file_name(task)})\n')
    csv_parts.append(tables.csv_text(table, [('task', task)], header=k == 0))
  written.append(storage.write_atomic(storage.join(output, 'runs.csv'), ''.join(csv_parts)))
  for layout, name in ((tables.mrqa_table(runs), 'mrqa.csv'),
                       (tables.transfer_table(runs), 'glue_transfer.csv')):
    if layout is not None:
      sections.append(tables.markdown(layout))
      written.append(storage.write_atomic(storage.join(output, name), tables.csv_text(layout)))
  if skipped:
    sections.append('## Left out\n\n' + ''.join(f'- `{p}`: {why}\n' for p, why in skipped))
  report = storage.write_atomic(storage.join(output, 'report.md'), '\n'.join(sections))
  return [report] + written


def report(paths: Sequence[str], output: Optional[str] = None, err: Optional[IO] = None) -> int:
  """The command: a line on `err` (stderr) per folder left out; raises ValueError when none is
  left."""
  output = output or DEFAULT_OUTPUT
  err = err or sys.stderr  # looked up now: tests and callers may have replaced it
  runs, skipped = collect(paths)
  for path, why in skipped:
    print(f'prompt-tuning report: skipped {path}: {why}', file=err, flush=True)
  if not runs:
    raise ValueError(f'no run to report: all {len(skipped)} folder(s) were left out (see the '
                     f'lines above); give finished MODEL_DIRs.')
  written = write(runs, skipped, output)
  print(f'Reported {len(runs)} run(s) of {len({r.task for r in runs})} task(s) in {output}:')
  for path in written:
    print(f'  {path}')
  return 0
