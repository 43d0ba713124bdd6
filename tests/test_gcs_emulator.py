"""The GCS API server tests run against (prompt_tuning.testing.gcs_emulator): the generation
preconditions GCS has and OCDBT commits by, generation headers on reads, injected faults."""

import json
import urllib.error
import urllib.request
import uuid

import pytest


def call(url, method, path, body=None):
  """(status, headers, body) of one request."""
  request = urllib.request.Request(url + path, data=body, method=method)
  try:
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.status, response.headers, response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers, e.read()


@pytest.fixture
def name():
  return f'emulator-{uuid.uuid4().hex[:8]}%2Fobj'  # a name with an (encoded) slash


def upload(gcs, name, body, condition=''):
  return call(gcs.url, 'POST', f'/upload/storage/v1/b/bkt/o?uploadType=media&name={name}'
              f'{condition}', body)


def test_a_read_carries_the_generation_the_upload_answered(gcs, name):
  status, _, answer = upload(gcs, name, b'one')
  assert status == 200
  generation = json.loads(answer)['generation']
  status, headers, body = call(gcs.url, 'GET', f'/storage/v1/b/bkt/o/{name}?alt=media')
  assert (status, body) == (200, b'one')
  assert headers['x-goog-generation'] == generation
  assert headers['x-goog-metageneration'] == '1'


def test_generation_preconditions_as_on_gcs(gcs, name):
  assert upload(gcs, name, b'one', '&ifGenerationMatch=0')[0] == 200
  # Create-only fails once the object exists; nothing is overwritten.
  assert upload(gcs, name, b'two', '&ifGenerationMatch=0')[0] == 412
  status, headers, body = call(gcs.url, 'GET', f'/storage/v1/b/bkt/o/{name}?alt=media')
  assert body == b'one'
  generation = headers['x-goog-generation']
  # A read conditioned on a generation the reader already holds: 304, nothing sent.
  status, headers, body = call(
      gcs.url, 'GET', f'/storage/v1/b/bkt/o/{name}?alt=media&ifGenerationNotMatch={generation}')
  assert (status, body) == (304, b'')
  assert upload(gcs, name, b'two', f'&ifGenerationMatch={int(generation) + 1}')[0] == 412
  status, _, answer = upload(gcs, name, b'two', f'&ifGenerationMatch={generation}')
  assert status == 200 and json.loads(answer)['generation'] != generation
  assert call(gcs.url, 'DELETE', f'/storage/v1/b/bkt/o/{name}?ifGenerationMatch={generation}'
              )[0] == 412
  assert call(gcs.url, 'GET', f'/storage/v1/b/bkt/o/{name}?alt=media')[2] == b'two'
  assert call(gcs.url, 'GET', f'/storage/v1/b/bkt/o/{name}missing?alt=media')[0] == 404


def test_injected_faults_are_served_then_requests_succeed(gcs, name):
  upload(gcs, name, b'one')
  gcs.inject(2, 503, match=name)
  statuses = [call(gcs.url, 'GET', f'/storage/v1/b/bkt/o/{name}?alt=media')[0]
              for _ in range(3)]
  assert statuses == [503, 503, 200]
  assert [f['served'] for f in gcs.faults() if f['match'] == name] == [2]
