"""pyproject.toml: the wheel carries every subpackage and the gin files (packages are listed by
hand because gin/ and configs/ are mapped into the package); setup.py stays a thin shim; the
README stays short, keeps the two fresh-machine commands (.ci/run runs the second), and every
file it links and every gin file the docs launch exist."""

import os
import re
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


def _read(*parts: str) -> str:
  with open(os.path.join(ROOT, *parts), encoding='utf-8') as f:
    return f.read()


def test_setup_py_is_a_thin_shim():
  # Metadata lives in pyproject.toml only; setup.py just calls setup().
  code = [line for line in _read('setup.py').splitlines()
          if line.strip() and not line.startswith(('"""', '#'))]
  assert code == ['from setuptools import setup', 'setup()']
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    assert tomllib.load(f)['project']['name'] == 'prompt-tuning'


def test_readme_is_short():
  assert os.path.getsize(os.path.join(ROOT, 'README.md')) <= 15_000, \
      'README.md is for users: move detail to docs/ or benchmarks/README.md'


def test_readme_fresh_machine_has_exactly_the_two_commands():
  readme = _read('README.md')
  section = readme.split('## Fresh machine', 1)[1].split('\n## ', 1)[0]
  blocks = section.split('```bash\n')[1:]
  commands = [block.split('```', 1)[0].strip() for block in blocks]
  assert commands == [
      "pip install -e '.[data]' && python -m prompt_tuning",
      "pip install -q 'torch==2.13.0' -e '.[data,test]' && "
      "python -m pytest -q -n 2 --dist loadfile tests",
  ]
  ci = _read('.ci', 'run').splitlines()  # CI runs the README's test command
  install, test = commands[1].split(' && ')
  assert install in ci and test in ci


def test_readme_links_and_gin_files_exist():
  readme = _read('README.md')
  for target in re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', readme):
    if '://' not in target:
      assert os.path.exists(os.path.join(ROOT, target)), target
  for doc in ('README.md', 'docs/launching.md', 'docs/serving.md'):
    for gin_file in re.findall(r'--gin_file=([\w./-]+\.gin)', _read(doc)):
      assert any(os.path.isfile(os.path.join(ROOT, folder, gin_file))
                 for folder in ('', 'gin', 'configs')), f'{doc}: {gin_file}'
