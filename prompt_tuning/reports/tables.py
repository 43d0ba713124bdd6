"""The report's tables, in the paper's layouts, and their Markdown and CSV forms.

  task_tables      per task: method, model size, variant -> best score of the main metric, the
                   step that reached it, and the final score (the runs behind Figures 1 and 3)
  mrqa_table       Table 1: trained on SQuAD, F1 / EM on each out-of-domain set (and SQuAD)
  transfer_table   Table 2: zero-shot QQP <-> MRPC, accuracy and F1

Published numbers sit in columns of their own, beside ours, each with its citation in the
table's notes (published.py says which numbers exist in the paper's text).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Optional, Sequence

from prompt_tuning.reports import published
from prompt_tuning.reports.runs import Run

Cell = Optional[object]  # a number, text, or None (an empty cell)
PARAMETERS = 'parameters'


@dataclasses.dataclass
class Table:
  title: str
  columns: list[str]
  rows: list[list[Cell]]
  notes: list[str] = dataclasses.field(default_factory=list)


def _order(run: Run) -> tuple:
  return (run.method, run.params, run.variant, run.name)


def task_tables(runs: Sequence[Run]) -> dict[str, Table]:
  """One table per task (runs grouped by base task), rows by method, size, variant."""
  tables = {}
  for task in sorted({r.task for r in runs}):
    members = sorted((r for r in runs if r.task == task), key=_order)
    rows: list[list[Cell]] = []
    for r in members:
      (best_step, best), (final_step, final) = r.best, r.final
      rows.append([r.method, r.size, r.params, r.variant or None, r.metric, best, best_step,
                   final, final_step, r.name])
    notes = ['best: the highest score of the run\'s main metric over its evaluations (the '
             'first step reaching it); final: its last evaluation. The paper prints Figure 1 '
             'and 3 scores only as plots, so no published values are given here.']
    for size, d_model, params in sorted({(r.size, r.d_model, r.params) for r in members}):
      paper = published.frozen_params(size, d_model)
      if paper is not None:
        notes.append(f'parameters of {size}: {params:,} here, {int(paper.value):,} in '
                     f'{paper.cite}.')
    tables[task] = Table(
        f'Task {task}', ['method', 'size', PARAMETERS, 'variant', 'metric', 'best',
                         'best step', 'final', 'final step', 'run'], rows, notes)
  return tables


def mrqa_table(runs: Sequence[Run]) -> Optional[Table]:
  """Table 1's layout for the runs with MRQA scores; None when no run has one."""
  chosen = sorted((r for r in runs if any(t in r.scores for t in published.MRQA_ROWS)),
                  key=_order)
  if not chosen:
    return None
  columns = ['dataset', 'domain', 'task']
  labels = [r.label for r in chosen]
  for r, label in zip(chosen, labels):
    label += f' ({r.name})' if labels.count(label) > 1 else ''  # seeds: one column pair each
    columns += [f'{label} F1', f'{label} EM']
  columns += [f'{published.PAPER} {published.MODEL_TUNING} F1',
              f'{published.PAPER} {published.PROMPT_TUNING} F1', f'{published.PAPER} Δ', 'source']
  rows: list[list[Cell]] = []
  notes = ['Ours: F1 / EM (x100, the MRQA evaluation\'s) at the run\'s best step on its main '
           'metric where evaluated there, else at the latest evaluation of that set.']
  for task in published.MRQA_ROWS:
    name, domain = published.mrqa_row(task)
    row: list[Cell] = [name, domain, task]
    for r in chosen:
      score = r.scores.get(task)
      row += [None, None] if score is None else [score.metrics.get('f1'), score.metrics.get('em')]
      if score is not None and score.step != r.best[0]:
        notes.append(f'{r.name}: {task} at step {score.step} (its best step is {r.best[0]}).')
    paper = [published.mrqa_f1(task, published.MODEL_TUNING),
             published.mrqa_f1(task, published.PROMPT_TUNING), published.mrqa_delta(task)]
    rows.append(row + [str(p) if p else None for p in paper] + [published.cite_row(paper)])
  missing = [r.name for r in chosen
             if not any(t in r.scores for t in published.MRQA_ROWS if t != 'mrqa_squad')]
  if missing:
    notes.append('No out-of-domain evaluation in ' + ', '.join(missing) + ': score the run with '
                 '`prompt-tuning eval` on mrqa_out_of_domain (or mrqa_out_of_domain_local).')
  notes.append(f'Published ({published.PAPER}, arXiv 2104.08691): mean ±stddev over the paper\'s '
               f'runs, F1 only (the paper reports no EM); Δ = prompt tuning - model tuning.')
  return Table('MRQA: trained on SQuAD, zero-shot out of domain (Table 1 layout)', columns, rows,
               notes)


def transfer_table(runs: Sequence[Run]) -> Optional[Table]:
  """Table 2's layout for the runs with a zero-shot QQP <-> MRPC score; None without one."""
  rows: list[list[Cell]] = []
  for source, target in published.TRANSFER_PAIRS:
    task = f'glue_{target}_from_{source}'
    scored = sorted((r for r in runs if task in r.scores), key=_order)
    if not scored:
      continue
    for method in (published.MODEL_TUNING, published.PROMPT_TUNING):
      paper = published.transfer(source, target, method)
      ours: list[Optional[Run]] = [r for r in scored if r.method == method] or [None]
      for r in ours:  # no run of the method: the paper's row alone
        score = None if r is None else r.scores[task]
        rows.append([source.upper(), target.upper(), method,
                     None if r is None else r.size + (f', {r.variant}' if r.variant else ''),
                     None if score is None else score.step,
                     None if score is None else score.metrics.get('accuracy'),
                     None if score is None else score.metrics.get('f1'),
                     *[str(p) if p else None for p in paper], published.cite_row(paper),
                     None if r is None else r.name])
  if not rows:
    return None
  return Table(
      'GLUE transfer: zero-shot QQP <-> MRPC (Table 2 layout)',
      ['train', 'eval', 'tuning', 'model', 'step', 'accuracy', 'F1',
       f'{published.PAPER} accuracy', f'{published.PAPER} F1', 'source', 'run'], rows,
      ['Ours at the run\'s best step on its main metric (the trained task\'s validation F1: the '
       'paper selects checkpoints on in-domain validation too), else at the latest evaluation.',
       f'Published ({published.PAPER}, arXiv 2104.08691): mean ±stddev over the paper\'s runs.'])


def _text(cell: Cell, column: str = '') -> str:
  if cell is None:
    return ''
  if isinstance(cell, float):
    return f'{cell:.2f}'
  if column == PARAMETERS and isinstance(cell, int):
    # As the paper names sizes (77M ... 11B); runs.csv keeps the exact count.
    for scale, unit in ((1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
      if cell >= scale:
        return f'{cell / scale:.1f}{unit}'
  return str(cell)


def markdown(table: Table) -> str:
  """A Markdown section: the title, a pipe table (empty cells blank), the notes."""
  def line(cells):
    return '| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |'
  out = [f'## {table.title}', '', line(table.columns),
         line(['---'] * len(table.columns))]
  out += [line([_text(c, column) for c, column in zip(row, table.columns)])
          for row in table.rows]
  out += [''] + [f'- {n}' for n in table.notes]
  return '\n'.join(out) + '\n'


def csv_text(table: Table, extra: Sequence[tuple[str, Cell]] = (), header: bool = True) -> str:
  """The table as CSV (full-precision numbers, exact parameter counts); `extra` columns
  (name, value) lead every row, e.g. the task of a per-task table in one file of all tasks."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  if header:
    writer.writerow([name for name, _ in extra] + table.columns)
  for row in table.rows:
    writer.writerow([value for _, value in extra] +
                    ['' if c is None else repr(c) if isinstance(c, float) else c for c in row])
  return buffer.getvalue()
