"""prompt_tuning.testing, the fixtures shared by tests and benchmarks; and the rule that keeps them
in one place: no test file imports a test module (test_*) or conftest (tests/ helper modules,
conftest's fixtures and prompt_tuning.testing are what test files share)."""

import ast
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning import testing

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _test_module_imports(source: str) -> list[str]:
  """'line: module' for each import of a test module (test_*) or conftest in `source`, at any
  depth (imports inside functions included)."""
  def forbidden(dotted: str) -> bool:
    return any(part.startswith('test_') or part == 'conftest' for part in dotted.split('.'))

  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ''
      names = [module]
      if node.level or module in ('', 'tests'):  # `from tests import x`, `from . import x`
        names += [f'{module}.{alias.name}' for alias in node.names]
    else:
      continue
    found += [f'{node.lineno}: {name.strip(".")}' for name in names if forbidden(name)]
  return found


def test_no_test_file_imports_a_test_module_or_conftest():
  files = sorted(glob.glob(os.path.join(HERE, '*.py')))
  assert len(files) > 40 and os.path.join(HERE, 'conftest.py') in files
  bad = {}
  for path in files:
    with open(path) as f:
      found = _test_module_imports(f.read())
    if found:
      bad[os.path.basename(path)] = found
  assert not bad, (f'{bad}: share fixtures through prompt_tuning.testing, a conftest fixture or '
                   'a helper module in tests/, not by importing a test module or conftest')


def _private_names(source: str) -> list[str]:
  """'line: name' for each private name (`_x`) of prompt_tuning that `source` imports or reads
  off a module it imported from prompt_tuning."""
  tree = ast.parse(source)
  modules, found = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('prompt_tuning'):
      for alias in node.names:
        modules.add(alias.asname or alias.name)
        if alias.name.startswith('_') and not alias.name.startswith('__'):
          found.append(f'{node.lineno}: {alias.name}')
    elif isinstance(node, ast.Import):
      modules |= {a.asname or a.name.split('.')[0] for a in node.names
                  if a.name.startswith('prompt_tuning')}
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in modules and node.attr.startswith('_')
        and not node.attr.startswith('__')):
      found.append(f'{node.lineno}: {node.value.id}.{node.attr}')
  return found


def test_no_test_file_uses_a_private_name_of_the_package():
  bad = {}
  for path in sorted(glob.glob(os.path.join(HERE, '*.py'))):
    with open(path) as f:
      found = _private_names(f.read())
    if found:
      bad[os.path.basename(path)] = found
  assert not bad, f'{bad}: test the public API (give what a test needs a public name)'


@pytest.mark.parametrize('source', ['from prompt_tuning import runs\nruns._flat({})',
                                    'from prompt_tuning.data.tasks import _settings',
                                    'import prompt_tuning.runs as r\nr._x'])
def test_the_private_rule_finds_each_form(source):
  assert len(_private_names(source)) == 1, source


@pytest.mark.parametrize('source', [
    'from test_t5x_checkpoint import FIXTURE', 'import test_serve', 'import tests.test_serve',
    'from tests.conftest import shared_path', 'from tests import conftest', 'import conftest',
    'from . import test_serve', 'def f():\n  from test_serve import call'])
def test_the_rule_finds_each_form_of_such_an_import(source):
  assert len(_test_module_imports(source)) == 1, source


def test_the_rule_allows_helpers_and_the_testing_module():
  assert _test_module_imports('\n'.join([
      'from prompt_tuning import testing', 'from prompt_tuning.testing import FIXTURE',
      'import prompt_tuning.testing.gcs_emulator', 'from cli_helpers import run_cli',
      'from train_fixtures import make_trainer', 'from benchmarks import common',
      'from prompt_tuning.testing import testing_helper'])) == []


def test_importing_it_loads_no_tensorflow_jax_or_pytest():
  """Benchmarks import it where pytest is absent, and before they choose JAX's backend."""
  code = ('import sys\nimport prompt_tuning.testing\n'
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'seqio', 'jax', 'flax', 'pytest'}))")
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == '[]'


def test_shared_path_reads_the_variable_else_beside_the_checkout(monkeypatch):
  monkeypatch.setenv(testing.SHARED_ENV, '/some/where')
  assert testing.shared_path(*testing.FIXTURE) == '/some/where/fixtures/t5x_tiny/checkpoint_3'
  monkeypatch.delenv(testing.SHARED_ENV)
  assert os.path.normpath(testing.shared_path('data')) == os.path.join(
      os.path.dirname(REPO), 'shared', 'data')


@pytest.mark.parametrize('size', ['small', 'xxl'])
def test_fixture_bindings_over_a_preset_give_the_fixture_model(size):
  """What the CLI tests and the serving benchmark bind: the presets' MODEL becomes the fixture's
  architecture with float32 activations (dropout stays the presets')."""
  import gin
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO, 'gin', 'models', 't5_1_1_prompt.gin'),
         os.path.join(REPO, 'gin', 'models', 'sizes', f'{size}.gin')], testing.FIXTURE_BINDINGS)
    model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert model.replace(dropout_rate=0.0) == testing.FIXTURE_CONFIG.replace(dtype='float32')


def test_fixture_config_matches_the_checkpoint(shared):
  from prompt_tuning import checkpoints
  config, _ = checkpoints.load_params(shared(*testing.FIXTURE))
  # relpos_max_distance is not in T5X's format: loading without a config gives the default.
  assert config == testing.FIXTURE_CONFIG.replace(relpos_max_distance=128)


def test_synthetic_batch_padded():
  batch = testing.synthetic_batch(3, batch=4, inputs=10, targets=6, vocab=50)
  enc, dec, tgt = (batch[k] for k in ('encoder_input_tokens', 'decoder_input_tokens',
                                      'decoder_target_tokens'))
  assert all(x.dtype == np.int32 for x in (enc, dec, tgt))
  assert enc.shape == (4, 10) and dec.shape == tgt.shape == (4, 6)
  assert (enc[0, 5:] == 0).all() and (enc[1:, -1] == 1).all() and (enc[:, :5] >= 2).all()
  assert (tgt[1, 3:] == 0).all() and (np.delete(tgt, 1, axis=0) >= 2).all()
  np.testing.assert_array_equal(dec[:, 0], 0)
  np.testing.assert_array_equal(dec[:, 1:], tgt[:, :-1] * (tgt[:, 1:] > 0))
  again = testing.synthetic_batch(3, batch=4, inputs=10, targets=6, vocab=50)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)
  other = testing.synthetic_batch(4, batch=4, inputs=10, targets=6, vocab=50)
  assert not np.array_equal(other['encoder_input_tokens'], enc)


def test_synthetic_batch_full_length():
  batch = testing.synthetic_batch(1, batch=3, inputs=8, targets=4, vocab=512, padding=False)
  enc, dec, tgt = (batch[k] for k in ('encoder_input_tokens', 'decoder_input_tokens',
                                      'decoder_target_tokens'))
  assert (enc[:, -1] == 1).all() and (tgt[:, -1] == 1).all()
  assert (enc[:, :-1] >= 2).all() and (tgt[:, :-1] >= 2).all() and (enc < 512).all()
  np.testing.assert_array_equal(dec, np.concatenate([np.zeros((3, 1), np.int32), tgt[:, :-1]], 1))


def test_random_prompts_are_seeded_by_position():
  prompts = testing.random_prompts(['a', 'b'], 5, 4, scale=2.0)
  assert list(prompts) == ['a', 'b'] and prompts['a'].shape == (5, 4)
  assert prompts['a'].dtype == np.float32
  np.testing.assert_array_equal(
      prompts['b'], np.random.RandomState(1).normal(scale=2.0, size=(5, 4)).astype(np.float32))
  np.testing.assert_array_equal(testing.random_prompts(['x'], 5, 4, scale=2.0)['x'], prompts['a'])


def test_serve_command_and_a_server_that_exits_before_listening(tmp_path):
  args = testing.serve_command('/lib', 8123, '/v.model', '/ckpt', ['A = 1'], ['--x=1'])
  assert args[:4] == [sys.executable, '-m', 'prompt_tuning', 'serve']
  assert {'--prompts=/lib', '--port=8123', '--vocab=/v.model', '--x=1',
          '--gin_bindings=A = 1', "--gin_bindings=INITIAL_CHECKPOINT_PATH = '/ckpt'"} <= set(args)
  log = tmp_path / 'log'
  with open(log, 'w') as err:
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; sys.exit("no model here")'],
                            stderr=err)
  with pytest.raises(RuntimeError, match='the server exited 1: no model here'):
    testing.wait_until_up(proc, testing.free_port(), 60, log=log)
