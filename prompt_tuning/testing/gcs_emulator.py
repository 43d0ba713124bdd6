"""A Google Cloud Storage API server on 127.0.0.1, for tests and benchmarks (no network here).

gcp-storage-emulator's request handlers and storage, served by a threaded server with one lock
around each request: its own server answers one connection at a time, so a client that keeps a
connection alive (gcsfs, tensorstore) stalls every other client. It adds what GCS does and the
emulator does not: generation preconditions (`ifGenerationMatch`, `ifGenerationNotMatch`) and a
read's generation in `x-goog-generation` (OCDBT, orbax's format, commits by a conditional write of
its manifest; without them two writers of one manifest failed now and then).

Faults can be injected through
`POST /_faults {"count": N, "status": 503 | 429 | 0, "match": "substring", "every": K}`: N of
the matching requests (every K-th one; K=1: the next N) get that status (0: the connection is
closed with no answer). `GET /_faults` lists the rules with how many faults each has served.

    python -m prompt_tuning.testing.gcs_emulator --port=0 --bucket=bkt  # prints its URL

Clients find it through the variables they already honour: STORAGE_EMULATOR_HOST (gcsfs and
Google's clients) and TENSORSTORE_GCS_HTTP_URL (tensorstore's gcs driver); `env(url)` gives both.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from functools import partial
from http import server
from typing import Optional

FAULTS_PATH = '/_faults'


def env(url: str) -> dict[str, str]:
  """The variables that point GCS clients at the emulator at `url`."""
  return {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
          'GOOGLE_CLOUD_PROJECT': 'test-project',
          # tensorstore's fixed-token hook: without it, it logs an error line for the missing
          # gcloud credentials (an emulator takes any token).
          'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
          # google-auth and gcsfs: never probe the GCE metadata server for credentials.
          'NO_GCE_CHECK': 'true'}


def _handler_class():
  from gcp_storage_emulator.server import RequestHandler

  lock = threading.Lock()
  faults: list[dict] = []

  class Handler(RequestHandler):
    # HTTP/1.0: one request per connection. The emulator sends some answers (a 404, an empty
    # body) without Content-Length, which a kept-alive client would wait on for ever.
    protocol_version = 'HTTP/1.0'
    disable_nagle_algorithm = True  # small answers go out at once (~45 ms each otherwise)

    def handle_one_request(self):  # one request at a time into the storage
      try:
        self.raw_requestline = self.rfile.readline(65537)
      except OSError:
        self.close_connection = True
        return
      if not self.raw_requestline:
        self.close_connection = True
        return
      if not self.parse_request():
        return
      if self.path.startswith(FAULTS_PATH):
        return self._set_faults() if self.command == 'POST' else self._reply(
            200, json.dumps(faults).encode())
      fault = self._take_fault()
      if fault is not None:
        return self._answer_fault(fault)
      with lock:
        method = getattr(self, 'do_' + self.command, None)
        self.storage.offsets = _offsets(self.path)
        generation = self._generation_headers()
        failed = _precondition_failure(self.command, self.path, generation)
        if failed:
          self._reply(failed, b'' if failed == 304 else json.dumps(
              {'error': {'code': failed, 'message': 'precondition'}}).encode(), generation)
        elif method is None:
          self.send_error(501)
        else:
          self._object_headers = generation
          method()
      self.wfile.flush()

    def _generation_headers(self) -> dict[str, str]:
      """The addressed object's x-goog-generation/-metageneration ({} when there is none)."""
      bucket, name = _object_of(self.command, self.path)
      if not name:
        return {}
      try:
        obj = self.storage.get_file_obj(bucket, name)
      except Exception:  # noqa: BLE001  (no such bucket or object)
        return {}
      return {'x-goog-generation': str(obj['generation']),
              'x-goog-metageneration': str(obj.get('metageneration', 1))}

    def send_response(self, code, message=None):
      self._status = code
      super().send_response(code, message)

    def end_headers(self):
      # A read's generation travels in headers, as on GCS: tensorstore conditions its next write
      # of the same object (an OCDBT manifest) on it.
      if self.command == 'GET' and getattr(self, '_status', 0) in (200, 206):
        for key, value in getattr(self, '_object_headers', {}).items():
          self.send_header(key, value)
      self._object_headers = {}
      super().end_headers()

    def _set_faults(self):
      length = int(self.headers.get('Content-Length') or 0)
      spec = json.loads(self.rfile.read(length) or b'{}')
      with lock:
        faults.append({'count': int(spec.get('count', 1)), 'status': int(spec.get('status', 503)),
                       'match': spec.get('match', ''), 'every': max(1, int(spec.get('every', 1))),
                       'seen': 0, 'served': 0})
      self._reply(200, b'{}')

    def _take_fault(self) -> Optional[dict]:
      with lock:
        for fault in faults:
          if fault['served'] < fault['count'] and fault['match'] in self.path:
            fault['seen'] += 1
            if fault['seen'] % fault['every'] == 0:
              fault['served'] += 1
              return dict(fault)
      return None

    def _answer_fault(self, fault: dict):
      length = int(self.headers.get('Content-Length') or 0)
      if length:
        self.rfile.read(length)
      if fault['status'] == 0:  # a dropped connection
        self.close_connection = True
        self.connection.shutdown(2)
        return
      self._reply(fault['status'], json.dumps(
          {'error': {'code': fault['status'], 'message': 'injected fault'}}).encode())

    def _reply(self, status: int, body: bytes, headers: Optional[dict] = None):
      self.send_response(status)
      for key, value in (headers or {}).items():
        self.send_header(key, value)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)
      self.wfile.flush()

  return Handler


_OBJECT_PATH = re.compile(r'^(?:/download)?(?:/storage/v1)?/b/(?P<bucket>[-.\w]+)/o/(?P<name>.+)$')
_UPLOAD_PATH = re.compile(r'^/upload/storage/v1/b/(?P<bucket>[-.\w]+)/o$')


def _object_of(command: str, path: str) -> tuple[str, str]:
  """(bucket, object name) a request addresses: a read, delete or patch by path, an upload by
  its `name` query; ('', '') for anything else (listings, multipart uploads naming it inside)."""
  from urllib.parse import parse_qs, unquote, urlparse
  url = urlparse(path)
  match = _OBJECT_PATH.match(url.path)
  # A name's own slashes arrive encoded; a raw one starts a sub-resource (`/acl`, `/copyTo/..`).
  if match and command in ('GET', 'DELETE', 'PATCH') and '/' not in match['name']:
    return match['bucket'], unquote(match['name'])
  match = _UPLOAD_PATH.match(url.path)
  if match and command in ('POST', 'PUT'):
    return match['bucket'], parse_qs(url.query).get('name', [''])[0]
  return '', ''


def _precondition_failure(command: str, path: str, headers: dict[str, str]) -> int:
  """GCS's generation preconditions, which the emulator ignores: 412 when `ifGenerationMatch`
  (0: the object must not exist) or `ifGenerationNotMatch` fails, 304 for a read whose
  `ifGenerationNotMatch` names the current generation; 0 when the request may go on. OCDBT
  (orbax's checkpoint format) commits by a conditional write of its manifest."""
  from urllib.parse import parse_qs, urlparse
  query = parse_qs(urlparse(path).query)
  current = int(headers['x-goog-generation']) if headers else 0  # 0: no such object
  match = query.get('ifGenerationMatch', [None])[0]
  if match is not None and int(match) != current:
    return 404 if command == 'GET' and not current else 412
  not_match = query.get('ifGenerationNotMatch', [None])[0]
  if not_match is not None and int(not_match) == current:
    return 304 if command == 'GET' and current else 412
  return 0


def _offsets(path: str) -> tuple[str, str]:
  """A listing's startOffset/endOffset (tensorstore lists a range of names with them)."""
  from urllib.parse import parse_qs, urlparse
  query = parse_qs(urlparse(path).query)
  return query.get('startOffset', [''])[0], query.get('endOffset', [''])[0]


def _storage_class():
  """The emulator's storage, whose listings honour the request's name range (it ignores
  startOffset/endOffset, and tensorstore aborts on names outside the range it asked for)."""
  from gcp_storage_emulator.storage import Storage

  class RangedStorage(Storage):
    offsets = ('', '')

    def get_file_list(self, *args, **kwargs):
      files, prefixes = super().get_file_list(*args, **kwargs)
      start, end = self.offsets
      if start or end:
        files = [f for f in files if start <= f['name'] and (not end or f['name'] < end)]
      return files, prefixes

  return RangedStorage


class _Server(socketserver.ThreadingMixIn, server.HTTPServer):
  daemon_threads = True

  def handle_error(self, request, client_address):  # a client that hung up (an injected drop)
    pass


def serve(port: int = 0, buckets: tuple[str, ...] = ('bkt',)) -> _Server:
  """Starts the server in a thread of this process; returns it (`server_address`, `shutdown`)."""
  from gcp_storage_emulator.handlers import buckets as buckets_lib
  storage = _storage_class()(use_memory_fs=True)
  for name in buckets:
    buckets_lib.create_bucket(name, storage)
  httpd = _Server(('127.0.0.1', port), partial(_handler_class(), storage))
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  return httpd


class Emulator:
  """The emulator in a process of its own (it outlives the runs a test kills); a context manager
  with `url`, `env` and `inject(count, status, match)`."""

  def __init__(self, buckets: tuple[str, ...] = ('bkt',)):
    self.buckets = buckets
    self.process: Optional[subprocess.Popen] = None
    self.url = ''

  def __enter__(self) -> 'Emulator':
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'prompt_tuning.testing.gcs_emulator', '--port=0',
         *[f'--bucket={b}' for b in self.buckets]], stdout=subprocess.PIPE, text=True)
    assert self.process.stdout is not None
    self.url = self.process.stdout.readline().strip()
    if not self.url.startswith('http://127.0.0.1:'):
      self.process.kill()
      raise RuntimeError(f'the GCS emulator did not start (it printed {self.url!r}).')
    return self

  @property
  def env(self) -> dict[str, str]:
    return env(self.url)

  def inject(self, count: int, status: int = 503, match: str = '', every: int = 1) -> None:
    import urllib.request
    body = json.dumps({'count': count, 'status': status, 'match': match,
                       'every': every}).encode()
    urllib.request.urlopen(urllib.request.Request(self.url + FAULTS_PATH, body, method='POST'),
                           timeout=10).read()

  def faults(self) -> list[dict]:
    """The injected rules, each with `served`: how many faults it has answered."""
    import urllib.request
    with urllib.request.urlopen(self.url + FAULTS_PATH, timeout=10) as response:
      return json.loads(response.read())

  def __exit__(self, *exc) -> None:
    if self.process is not None:
      self.process.terminate()
      try:
        self.process.wait(10)
      except subprocess.TimeoutExpired:
        self.process.kill()


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--bucket', action='append', default=[])
  args = parser.parse_args(argv)
  import logging
  logging.disable(logging.CRITICAL)  # the emulator logs each missing object at error level
  httpd = serve(args.port, tuple(args.bucket or ['bkt']))
  print(f'http://127.0.0.1:{httpd.server_address[1]}', flush=True)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  while True:
    time.sleep(3600)


if __name__ == '__main__':
  main()
