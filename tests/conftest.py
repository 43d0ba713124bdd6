"""Test helpers: locate ../shared (PROMPT_TUNING_SHARED) and build small reference models."""

import os

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_path(*parts: str) -> str:
  root = os.environ.get('PROMPT_TUNING_SHARED', os.path.join(REPO, '..', 'shared'))
  return os.path.join(root, *parts)


@pytest.fixture(scope='session')
def shared():
  """Returns a function mapping relative parts to a path under shared/, skipping if absent."""
  def get(*parts):
    path = shared_path(*parts)
    if not os.path.exists(path):
      pytest.skip(f'shared fixture {path} not present (set PROMPT_TUNING_SHARED)')
    return path
  return get


@pytest.fixture(scope='session')
def tiny():
  """(config, params) of the tiny T5 1.1 in float32; initialised once per session."""
  from prompt_tuning.models import t5
  config = t5.T5Config.preset('tiny', dtype='float32')
  return config, t5.init_params(config)
