"""The package's shape (#23): small modules, a root of few modules, and the module names that
moved still importable, so gin files and `config.gin`s written before keep loading."""

import ast
import importlib
import os

import pytest

import prompt_tuning

PACKAGE = os.path.dirname(prompt_tuning.__file__)


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        yield os.path.join(root, name)


def test_no_module_is_over_450_lines():
  long = {os.path.relpath(p, PACKAGE): n for p in _modules()
          if (n := sum(1 for _ in open(p, encoding='utf-8'))) > 450}
  assert not long


def test_the_package_root_holds_at_most_10_modules():
  root = sorted(n for n in os.listdir(PACKAGE) if n.endswith('.py'))
  assert len(root) <= 10, root


@pytest.mark.parametrize('old, new', sorted(prompt_tuning.MOVED.items()))
def test_a_moved_module_imports_by_its_old_name_as_the_same_module(old, new):
  module = importlib.import_module(old)
  assert module is importlib.import_module(new)
  assert module.__spec__.name == new  # it keeps its own spec


def test_the_package_itself_uses_only_the_new_names():
  old_names = set(prompt_tuning.MOVED)
  for path in _modules():
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
      if isinstance(node, ast.ImportFrom) and node.module:
        names = {f'{node.module}.{a.name}' for a in node.names} | {node.module}
      elif isinstance(node, ast.Import):
        names = {a.name for a in node.names}
      else:
        continue
      assert not names & old_names, (os.path.relpath(path, PACKAGE), names & old_names)


def test_gin_selectors_of_the_old_module_names_load():
  gin = pytest.importorskip('gin')
  from prompt_tuning.inference import decoding
  from prompt_tuning.prompts import init
  gin.clear_config()
  try:
    gin.parse_config('\n'.join([
        'from __gin__ import dynamic_registration',
        'from prompt_tuning import decoding',
        'from prompt_tuning import evaluation',
        'from prompt_tuning import prompt_init',
        'OLD = @evaluation.Decoding()',
        'evaluation.Decoding.method = "beam_search"',
        'evaluation.Decoding.num_beams = 3',
        'INIT = @prompt_init.initializer_by_name',
        'prompt_init.initializer_by_name.name = "random_uniform"',
        'NEW = @decoding.DecodingConfig()',
    ]))
    made = gin.query_parameter('%OLD').scoped_configurable_fn()
    assert isinstance(made, decoding.DecodingConfig) and made.num_beams == 3
    assert gin.query_parameter('%INIT').configurable.wrapped is init.initializer_by_name
  finally:
    gin.clear_config()
