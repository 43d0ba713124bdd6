"""pyproject.toml: the wheel carries every subpackage and the gin files (packages are listed by
hand because gin/ and configs/ are mapped into the package)."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setuptools() -> dict:
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['tool']['setuptools']


def test_every_subpackage_is_listed():
  on_disk = {os.path.relpath(d, ROOT).replace(os.sep, '.')
             for d, _, files in os.walk(os.path.join(ROOT, 'prompt_tuning'))
             if '__init__.py' in files}
  listed = set(_setuptools()['packages'])
  assert on_disk - listed == set(), 'add these to [tool.setuptools] packages'


def test_gin_and_configs_install_inside_the_package():
  tool = _setuptools()
  assert tool['package-dir'] == {'prompt_tuning.gin': 'gin', 'prompt_tuning.configs': 'configs'}
  for package in ('prompt_tuning.gin', 'prompt_tuning.configs'):
    assert '**/*.gin' in tool['package-data'][package]
  assert os.path.isfile(os.path.join(ROOT, 'gin', 'runs', 'prompt_finetune.gin'))
