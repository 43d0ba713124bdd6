"""`RequestError`: what every part of the server raises for a request it refuses; the HTTP layer
(app.py) answers it in the one error shape."""

from typing import Optional


class RequestError(Exception):
  """A request the server refuses: HTTP `status`, a message naming the problem and `param`,
  the request field at fault ('decoding.num_beams', 'inputs[2]') where there is one."""

  def __init__(self, status: int, message: str, headers: Optional[dict] = None,
               param: Optional[str] = None):
    super().__init__(message)
    self.status = status
    self.headers = headers or {}
    self.param = param
