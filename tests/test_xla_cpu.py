"""xla_cpu: the XLA:CPU flags the CLI adds before JAX starts."""

import logging

import pytest
from jax._src import xla_bridge

from prompt_tuning.train import xla_cpu


@pytest.fixture
def not_started(monkeypatch):
  monkeypatch.setattr(xla_bridge, 'backends_are_initialized', lambda: False)
  monkeypatch.delenv('XLA_FLAGS', raising=False)


def test_adds_the_flag(not_started, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.setattr(xla_cpu, '_jaxlib_version', lambda: '0.10.2')
  assert xla_cpu.apply() == [xla_cpu.FAST_REDUCE]
  assert xla_cpu.os.environ['XLA_FLAGS'] == (
      f'--xla_force_host_platform_device_count=2 {xla_cpu.FAST_REDUCE}')


def test_the_users_setting_wins(not_started, monkeypatch):
  mine = '--xla_cpu_experimental_ynn_fusion_type='
  monkeypatch.setenv('XLA_FLAGS', mine)
  assert xla_cpu.apply() == []
  assert xla_cpu.os.environ['XLA_FLAGS'] == mine


def test_too_late_once_jax_started(monkeypatch):
  monkeypatch.setattr(xla_bridge, 'backends_are_initialized', lambda: True)
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_cpu.apply() == []
  assert 'XLA_FLAGS' not in xla_cpu.os.environ


def test_an_unchecked_jaxlib_that_rejects_the_flag_keeps_its_flags(not_started, monkeypatch,
                                                                    caplog):
  # A jaxlib this module has not seen: a child process tries the flags (XLA aborts on unknown ones).
  monkeypatch.setattr(xla_cpu, '_jaxlib_version', lambda: '99.0.0')
  with caplog.at_level(logging.WARNING):
    assert xla_cpu.apply(('--xla_cpu_no_such_flag_here=1',)) == []
  assert 'XLA_FLAGS' not in xla_cpu.os.environ
  assert 'rejects --xla_cpu_no_such_flag_here=1' in caplog.text


def test_the_installed_jaxlib_accepts_the_flags(not_started, monkeypatch):
  monkeypatch.setattr(xla_cpu, '_jaxlib_version', lambda: '99.0.0')  # force the child probe
  assert xla_cpu.apply((xla_cpu.FAST_REDUCE, xla_cpu.MEMORY_SCHEDULE)) == [
      xla_cpu.FAST_REDUCE, xla_cpu.MEMORY_SCHEDULE]
