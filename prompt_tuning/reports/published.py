"""The paper's published numbers that the report prints beside ours, each with its citation.

Only numbers read from stored copies of the paper's text are here (Lester et al. 2021, arXiv
2104.08691v2, EMNLP 2021); nothing is filled in from memory. They were checked in this project's
search index of public text:
  - the paper's text converted to Markdown (found by the string "trained on SQuAD and evaluated
    on out-of-domain", index file id 51785957536): Table 1's Prompt and Δ columns and SQuAD's
    Model cell, and the whole of Table 2;
  - two reading notes that quote Table 1 whole (found by "TextbookQA | Book", index file ids
    4564968679 and 68685058762): the Model column of the six out-of-domain rows, which the
    conversion above lost; each of those equals Prompt - Δ of the paper's own text.

  - Table 4's total parameters at prompt length 1, in both of the above and in a text dump of
    the paper's PDF (found by "76,961,664", index file id 800815602).

Left out, and why:
  - Table 1 reports F1 only: the EM columns of the MRQA table have no published counterpart.
  - Figures 1 and 3 (SuperGLUE score against model size, per method and ablation) are plots;
    their points are not printed anywhere in the paper's text, so the per-task tables and the
    scale plots show no published values.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

PAPER = 'Lester et al. 2021'
MODEL_TUNING = 'model tuning'
PROMPT_TUNING = 'prompt tuning'
_COLUMN = {MODEL_TUNING: 'Model', PROMPT_TUNING: 'Prompt'}


@dataclasses.dataclass(frozen=True)
class Published:
  """A mean (and stddev over the paper's runs) and where it is printed."""
  value: float
  stddev: Optional[float]
  cite: str

  def __str__(self) -> str:
    return f'{self.value:.1f}' + ('' if self.stddev is None else f' ±{self.stddev:.1f}')


def cite_row(values: Sequence[Optional[Published]]) -> Optional[str]:
  """One citation for a row's published cells: the part their citations share, then what
  differs (e.g. 'Lester et al. 2021, Table 1, row TextbookQA: Model, Prompt, Δ')."""
  cites = [v.cite.split(', ') for v in values if v is not None]
  if not cites:
    return None
  shared = 0
  while all(len(c) > shared + 1 and c[shared] == cites[0][shared] for c in cites):
    shared += 1
  tails = [', '.join(c[shared:]) for c in cites]
  return ', '.join(cites[0][:shared]) + (': ' + ', '.join(tails) if len(cites) > 1 else
                                         ', ' + tails[0])


# Table 1 (F1, trained on SQuAD): our task -> the paper's row name, its domain, and
# (model tuning, prompt tuning, Δ) as printed.
_TABLE1 = {
    'mrqa_squad': ('SQuAD', 'Wiki', (94.9, 0.2), (94.8, 0.1), -0.1),
    'mrqa_textbook_qa': ('TextbookQA', 'Book', (54.3, 3.7), (66.8, 2.9), +12.5),
    'mrqa_bio_asq': ('BioASQ', 'Bio', (77.9, 0.4), (79.1, 0.3), +1.2),
    'mrqa_race': ('RACE', 'Exam', (59.8, 0.6), (60.7, 0.5), +0.9),
    'mrqa_relation_extraction': ('RE', 'Wiki', (88.4, 0.1), (88.8, 0.2), +0.4),
    'mrqa_duo_rc': ('DuoRC', 'Movie', (68.9, 0.7), (67.7, 1.1), -1.2),
    'mrqa_drop': ('DROP', 'Wiki', (68.9, 1.7), (67.1, 1.9), -1.8),
}
MRQA_ROWS: tuple[str, ...] = tuple(_TABLE1)  # the paper's row order, in-domain first
MRQA_IN_DOMAIN = 'mrqa_squad'

# Table 2 (zero-shot QQP <-> MRPC): (source, target) -> method -> (accuracy, F1), mean ±stddev.
_TABLE2 = {
    ('qqp', 'mrpc'): {MODEL_TUNING: ((73.1, 0.9), (81.2, 2.1)),
                      PROMPT_TUNING: ((76.3, 0.1), (84.3, 0.3))},
    ('mrpc', 'qqp'): {MODEL_TUNING: ((74.9, 1.3), (70.9, 1.2)),
                      PROMPT_TUNING: ((75.4, 0.8), (69.7, 0.3))},
}
TRANSFER_PAIRS: tuple[tuple[str, str], ...] = tuple(_TABLE2)


def mrqa_row(task: str) -> tuple[str, str]:
  """(the paper's name of `task`'s row in Table 1, its domain)."""
  name, domain, *_ = _TABLE1[task]
  return name, domain


def mrqa_f1(task: str, method: str) -> Optional[Published]:
  """Table 1's F1 of `method` on `task` (an mrqa_* task), or None."""
  if task not in _TABLE1 or method not in _COLUMN:
    return None
  name, _, model, prompt, _ = _TABLE1[task]
  value, stddev = model if method == MODEL_TUNING else prompt
  return Published(value, stddev, f'{PAPER}, Table 1, row {name}, {_COLUMN[method]}')


def mrqa_delta(task: str) -> Optional[Published]:
  """Table 1's Δ (prompt tuning minus model tuning F1) on `task`, or None."""
  if task not in _TABLE1:
    return None
  name, *_, delta = _TABLE1[task]
  return Published(delta, None, f'{PAPER}, Table 1, row {name}, Δ')


def transfer(source: str, target: str, method: str) -> tuple[Optional[Published],
                                                             Optional[Published]]:
  """Table 2's (accuracy, F1) of `method` trained on `source`, evaluated zero-shot on `target`
  (GLUE names: 'qqp', 'mrpc'); (None, None) where the paper has no such row."""
  row = _TABLE2.get((source, target), {}).get(method)
  if row is None:
    return None, None
  (acc, acc_sd), (f1, f1_sd) = row
  where = f'{PAPER}, Table 2, row {source.upper()} -> {target.upper()}, {_COLUMN[method]}'
  return Published(acc, acc_sd, f'{where}, Accuracy'), Published(f1, f1_sd, f'{where}, F1')


# Table 4, "Total Parameters" at prompt length 1: the frozen T5 1.1 model plus a 1-token prompt
# (d_model parameters).
_TABLE4_LENGTH_1 = {'small': 76_961_664, 'base': 247_578_624, 'large': 783_151_104,
                    'xl': 2_849_759_232, 'xxl': 11_135_336_448}


def frozen_params(size: str, d_model: int) -> Optional[Published]:
  """The parameters of T5 1.1 `size` without a prompt, from Table 4 (its total with a 1-token
  prompt, less that prompt's `d_model`); None for a size the paper does not list."""
  if size not in _TABLE4_LENGTH_1:
    return None
  row = size.upper() if size in ('xl', 'xxl') else size.title()  # as the paper writes them
  return Published(_TABLE4_LENGTH_1[size] - d_model, None,
                   f'{PAPER}, Table 4, row {row}, prompt length 1, Total Parameters (less the '
                   f'1-token prompt)')
