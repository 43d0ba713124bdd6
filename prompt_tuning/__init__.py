"""prompt-tuning: Lester et al. (2021) prompt tuning of a frozen T5 1.1 in JAX/Flax, T5X-compatible.

Where things live (docs/ARCHITECTURE.md): the prompt enters the model in
`models/t5.py:Encoder.__call__` (module in `models/prompt.py`); training in `train/`; running
prompted models (decoding, the runner, evaluation) in `inference/`; prompts (initialisers, files,
libraries, ensembles, export) in `prompts/`; the gin-configured entry points in `runs.py`; the
command line in `cli.py`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Modules that moved when the package was grouped by concept: gin files and `config.gin`s written
# before then import them by their old names (`from prompt_tuning import decoding`), and still load.
MOVED = {
    'prompt_tuning.batching': 'prompt_tuning.data.batching',
    'prompt_tuning.vocab': 'prompt_tuning.data.vocab',
    'prompt_tuning.decoding': 'prompt_tuning.inference.decoding',
    'prompt_tuning.evaluation': 'prompt_tuning.inference.evaluation',
    'prompt_tuning.ensemble': 'prompt_tuning.prompts.ensembles',
    'prompt_tuning.export': 'prompt_tuning.prompts.export',
    'prompt_tuning.inspection': 'prompt_tuning.prompts.inspection',
    'prompt_tuning.prompt_files': 'prompt_tuning.prompts.files',
    'prompt_tuning.prompt_init': 'prompt_tuning.prompts.init',
    'prompt_tuning.prompt_library': 'prompt_tuning.prompts.library',
    'prompt_tuning.model_dir': 'prompt_tuning.train.model_dir',
    'prompt_tuning.reporting': 'prompt_tuning.train.reporting',
    'prompt_tuning.xla_cpu': 'prompt_tuning.train.xla_cpu',
    'prompt_tuning.serve_api': 'prompt_tuning.serve.app',
    'prompt_tuning.serve_config': 'prompt_tuning.serve.config',
    'prompt_tuning.serve_requests': 'prompt_tuning.serve.requests',
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Imports an old module name as the very module object it became (not a copy)."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname not in MOVED:
      return None
    return importlib.util.spec_from_loader(fullname, self)

  def create_module(self, spec):
    module = importlib.import_module(MOVED[spec.name])
    spec.loader_state = module.__spec__
    return module

  def exec_module(self, module):
    # The import system stamped the old name's spec on the module; give it back its own.
    module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
  sys.meta_path.insert(0, _MovedModules())  # before any finder that could see a stale file
