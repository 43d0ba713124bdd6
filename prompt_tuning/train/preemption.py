"""Preemption: SIGTERM/SIGINT ask the run to save at the current step and exit 0, as T5X does.

The first signal only sets a flag; the training loop checks it after every step (an evaluation
between its batches) and stops cleanly. A second signal exits at once. With several processes the
flag is agreed on at check points, so all hosts save the same step together.

`crash_point` is for tests: PROMPT_TUNING_FAULT=<point>@<step> kills the process (SIGKILL) when
the run reaches that point, so a test can cut a run at an exact moment and check the restart.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Optional

log = logging.getLogger('prompt_tuning')

FAULT_ENV = 'PROMPT_TUNING_FAULT'
_requested: Optional[str] = None
_orbax_armed = False


class Preempted(Exception):
  """The run stopped on a signal after saving `step`; the CLI reports it and exits 0."""

  def __init__(self, signal_name: str, step: int, model_dir: str):
    super().__init__(f'stopped by {signal_name} at step {step}: saved {model_dir} (rerun the same '
                     f'command to resume from step {step}).')
    self.step = step


class Interrupted(Exception):
  """A signal stopped work that can be redone (an evaluation); the loop turns it into Preempted."""

  def __init__(self, signal_name: str):
    super().__init__(signal_name)
    self.signal_name = signal_name


def check_interrupt() -> None:
  """Between the batches of an evaluation: stop at once on a signal (one process only, since
  other hosts would wait for this one in their collectives)."""
  if _requested is not None:
    import jax
    if jax.process_count() == 1:
      raise Interrupted(_requested)


def requested() -> Optional[str]:
  """The name of the signal that asked this process to stop, if any."""
  return _requested


def reset() -> None:
  global _requested
  _requested = None


def _handle(signum, frame) -> None:
  global _requested
  name = signal.Signals(signum).name
  if _requested is not None:
    print(f'prompt-tuning: second {name}: exiting now without saving; MODEL_DIR keeps its last '
          f'committed step.', file=sys.stderr, flush=True)
    os._exit(128 + signum)
  _requested = name
  log.warning('%s received: saving at the end of this step, then exiting (send it again to exit '
              'at once).', name)


class SignalGuard:
  """Installs the handlers for a `with` block (main thread only; elsewhere a no-op)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    reset()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, _handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    reset()
    return False


def agreed(check: bool) -> Optional[str]:
  """The stop request as all processes see it; cheap on one process (no communication)."""
  import jax
  if jax.process_count() == 1:
    return _requested
  if not check:  # hosts only stop together, at check points
    return None
  import numpy as np
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray(_requested is not None, np.int32))
  return (_requested or 'a signal on another process') if np.asarray(flags).any() else None


# ----------------------------------------------------------------------------------------------
# Test-only crash points.


def _fault() -> Optional[tuple[str, int]]:
  spec = os.environ.get(FAULT_ENV)
  if not spec or '@' not in spec:
    return None
  point, step = spec.rsplit('@', 1)
  return point, int(step)


def crash_point(point: str, step: int) -> None:
  """SIGKILLs this process at `point` of `step` when PROMPT_TUNING_FAULT names them
  ('sigterm@N' instead sends SIGTERM after step N, as a scheduler preempting the job would)."""
  fault = _fault()
  if fault == (point, step):
    os.kill(os.getpid(), signal.SIGKILL)
  if fault == ('sigterm', step) and point == 'step':
    os.kill(os.getpid(), signal.SIGTERM)


def arm_orbax_crash() -> None:
  """For PROMPT_TUNING_FAULT=orbax_commit@N: die inside orbax's save of step N, after its files
  are written and before the rename that commits them."""
  global _orbax_armed
  fault = _fault()
  if fault is None or fault[0] != 'orbax_commit' or _orbax_armed:
    return
  _orbax_armed = True
  from orbax.checkpoint._src.path import atomicity
  step = fault[1]

  # Locally orbax commits by a rename; on object storage by writing a commit file.
  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    cls.finalize = _killing_finalize(cls.finalize, step)


def _killing_finalize(original, step: int):
  async def finalize(self, *args, **kwargs):
    if str(self.get_final()).rstrip('/').rsplit('/', 1)[-1] == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
    return await original(self, *args, **kwargs)
  return finalize
