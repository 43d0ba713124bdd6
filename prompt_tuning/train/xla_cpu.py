"""XLA:CPU flags the command line sets before JAX starts; a flag the user already put in XLA_FLAGS
is left as they set it.

FAST_REDUCE: jaxlib 0.10's CPU compiler hands reductions (layer-norm and softmax sums) to YNNPACK
fusions, which on this project's train step are slower than XLA's own loops, the more so the larger
the batch: T5 1.1 small, float32, 2-core AMD EPYC, P 100, T 8 — batch 8 × 48 tokens 1.07×, 8 × 96
1.12×, 32 × 200 1.26×, 32 × 300 1.47× faster without them (benchmarks/README.md). Dot and
elementwise fusions stay. GPU and TPU compilers ignore the flag.

XLA aborts the process on a flag it does not know, so on a jaxlib not checked here a child process
tries the flags first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Sequence

log = logging.getLogger(__name__)

FAST_REDUCE = '--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_REDUCE'
MEMORY_SCHEDULE = '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'
# jaxlib versions on which every flag above was seen to parse (and FAST_REDUCE measured).
CHECKED_JAXLIB = ('0.10.',)


def _name(flag: str) -> str:
  return flag.lstrip('-').split('=', 1)[0]


def _jaxlib_version() -> str:
  try:
    from importlib import metadata
    return metadata.version('jaxlib')
  except Exception:  # pylint: disable=broad-except
    return ''


def _parses(flags: str) -> bool:
  probe = subprocess.run([sys.executable, '-c', 'import jax; jax.devices("cpu")'],
                         env={**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu'},
                         capture_output=True, timeout=300)
  return probe.returncode == 0


def apply(flags: Sequence[str] = (FAST_REDUCE,)) -> list[str]:
  """Appends `flags` to XLA_FLAGS unless the user set them, JAX has already started (too late to
  matter) or this jaxlib rejects them. Returns the flags added."""
  from jax._src import xla_bridge  # importing jax starts no backend
  if xla_bridge.backends_are_initialized():
    return []
  current = os.environ.get('XLA_FLAGS', '')
  wanted = [f for f in flags if _name(f) not in current]
  if not wanted:
    return []
  combined = ' '.join([current, *wanted]).strip()
  if not _jaxlib_version().startswith(CHECKED_JAXLIB) and not _parses(combined):
    log.warning('This jaxlib rejects %s; XLA_FLAGS left as it was.', ' '.join(wanted))
    return []
  os.environ['XLA_FLAGS'] = combined
  return wanted
