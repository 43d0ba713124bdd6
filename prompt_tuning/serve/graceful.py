"""`GracefulServer`: uvicorn's server with a shutdown that loses nothing it accepted (the
SIGTERM/SIGINT handling of `prompt-tuning serve`). Imports uvicorn: the command imports this
module when it starts serving."""

import asyncio
import contextlib
import logging
import os
import select
import signal
import time
from typing import Any, Callable, Optional, Sequence

import uvicorn

log = logging.getLogger('prompt_tuning')


class GracefulServer(uvicorn.Server):
  """uvicorn's server with a shutdown that loses nothing it accepted.

  On SIGTERM/SIGINT uvicorn closes its listening socket and every idle connection at once:
  connections still in the kernel's accept queue were reset, and so were connections whose
  request had arrived but not been read yet (both common while a batch compiles). Here the
  event loop first accepts what is queued and reads what has arrived (at most `drain_s`);
  then listening stops (new connections are refused), every request received is answered
  (those waiting behind a compile too) and the server returns. A second signal exits at
  once. A graceful stop is not re-raised afterwards (uvicorn would, so the process would die
  of the signal): it is a clean exit.
  """
  drain_s = 2.0

  def __init__(self, config, counts: Callable[[], tuple[int, int]]):
    super().__init__(config)
    self.counts = counts  # () -> (requests received, requests answered)
    self.signal: Optional[int] = None
    self.unread = 0  # connections closed with a request not yet read (after drain_s)

  def handle_exit(self, sig: int, frame: Any) -> None:
    received, answered = self.counts()
    if self.should_exit:
      log.warning('second signal (%s): exiting now, %d request(s) unanswered',
                  signal_name(sig), received - answered)
      logging.shutdown()
      os._exit(1)
    self.signal = sig
    log.info('%s: no new connections; answering the %d request(s) in flight and any '
             'already sent', signal_name(sig), received - answered)
    super().handle_exit(sig, frame)

  async def shutdown(self, sockets=None):
    self.unread = await self._drain()
    await super().shutdown(sockets)

  async def _drain(self) -> int:
    deadline = time.monotonic() + self.drain_s
    while True:
      listening = [s.fileno() for server in self.servers for s in (server.sockets or ())]
      idle = [fd for fd in map(_idle_socket, list(self.server_state.connections)) if fd >= 0]
      waiting = _readable(listening) + _readable(idle)
      if not waiting or time.monotonic() > deadline:
        return len(_readable(idle))
      await asyncio.sleep(0.005)  # the loop accepts and reads meanwhile

  @contextlib.contextmanager
  def capture_signals(self):
    with super().capture_signals():
      try:
        yield
      finally:
        self._captured_signals.clear()


def signal_name(sig: int) -> str:
  return signal.Signals(sig).name


def _idle_socket(connection: Any) -> int:
  """The socket of a uvicorn connection with no request in progress, or -1."""
  cycle = getattr(connection, 'cycle', None)
  transport = getattr(connection, 'transport', None)
  if (cycle is not None and not cycle.response_complete) or transport is None or (
      transport.is_closing()):
    return -1
  sock = transport.get_extra_info('socket')
  return sock.fileno() if sock is not None else -1


def _readable(fds: Sequence[int]) -> list[int]:
  """The file descriptors with something to read (a connection to accept, a request)."""
  poller = select.poll()
  for fd in fds:
    poller.register(fd, select.POLLIN)
  return [fd for fd, _ in poller.poll(0)]
