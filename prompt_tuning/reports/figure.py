"""The Figure 1 / Figure 3 plot of one task: best score against the frozen model's parameters
(log scale), one line per method and variant; runs of one size and variant (seeds) are drawn
as their mean with a bar of ± one standard deviation, as the paper draws its three runs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from prompt_tuning.storage import save_atomic
from prompt_tuning.reports.runs import Run

_MARKERS = 'oxs^Dv*P'


def lines(runs: Sequence[Run]) -> dict[str, list[tuple[int, float, float, int]]]:
  """legend label -> [(parameters, mean best score, its stddev, runs)], by size."""
  groups: dict[str, dict[int, list[float]]] = {}
  for run in sorted(runs, key=lambda r: (r.method, r.variant, r.params)):
    label = run.method + (f' ({run.variant})' if run.variant else '')
    groups.setdefault(label, {}).setdefault(run.params, []).append(run.best[1])
  return {label: [(params, float(np.mean(v)), float(np.std(v)), len(v))
                  for params, v in sorted(by_size.items())]
          for label, by_size in groups.items()}


def scale_plot(path: str, task: str, runs: Sequence[Run]) -> str:
  """Writes the plot of `runs` (all of `task`) as a PNG at `path`; returns `path`."""
  import matplotlib
  matplotlib.use('Agg')  # files only: no display, and the same output on every machine
  import matplotlib.pyplot as plt

  metrics = sorted({r.metric for r in runs})
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  for k, (label, points) in enumerate(lines(runs).items()):
    x = [p[0] for p in points]
    y = [p[1] for p in points]
    err = [p[2] for p in points]
    ax.errorbar(x, y, yerr=err if any(err) else None, marker=_MARKERS[k % len(_MARKERS)],
                capsize=3, label=label)
  ax.set_xscale('log')
  ax.set_xlabel('model parameters')
  sizes = sorted({(r.params, r.size) for r in runs})
  top = ax.secondary_xaxis('top')  # the size names (small ... xxl, d<width>) above their points
  top.set_xticks([p for p, _ in sizes], [name for _, name in sizes], fontsize='small')
  top.minorticks_off()
  ax.set_ylabel(f'best {", ".join(metrics)}')
  ax.set_title(f'{task}: score vs model size')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize='small')
  fig.tight_layout()
  save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format='png'))
  plt.close(fig)
  return path
