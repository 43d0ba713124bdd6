"""preemption: signals become a save and a clean exit; a second signal exits at once."""

import signal
import subprocess
import sys


def test_second_signal_exits_at_once():
  script = ('import os, signal, time\n'
            'from prompt_tuning.train import preemption\n'
            'with preemption.SignalGuard():\n'
            '  os.kill(os.getpid(), signal.SIGTERM)\n'
            '  assert preemption.requested() == "SIGTERM"\n'
            '  print("saving", flush=True)\n'
            '  os.kill(os.getpid(), signal.SIGTERM)\n'
            '  time.sleep(30)\n'
            '  print("still running")\n')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
  assert proc.stdout == 'saving\n'
  assert 'second SIGTERM: exiting now' in proc.stderr
