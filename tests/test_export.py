"""export: `prompt-tuning export` reads MODEL_DIR's committed prompt and writes each format; a
run's final exports."""

import json
import os

import numpy as np
import pytest

from prompt_tuning import checkpoints
from prompt_tuning.prompts import export, files as prompt_files
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.models import t5
from prompt_tuning.testing import FIXTURE, FIXTURE_CONFIG


def committed_dir(tmp_path, base, step=3, model_config=True):
  """A MODEL_DIR as a run leaves it, for the readers: a committed orbax step (its folder), its
  numpy prompt and run_info.json."""
  path = str(tmp_path / 'run')
  os.makedirs(os.path.join(model_dir_lib.checkpoints_dir(path), str(step)))
  prompt = np.random.RandomState(step).randn(5, FIXTURE_CONFIG.d_model).astype(np.float32)
  model_dir_lib.write_numpy_prompt(path, step, prompt)
  info = {'prompt_length': 5, 'd_model': FIXTURE_CONFIG.d_model, 'placement': 'prefix',
          'initial_checkpoint': base}
  if model_config:
    info['model_config'] = FIXTURE_CONFIG.__dict__
  with open(os.path.join(path, model_dir_lib.RUN_INFO), 'w') as f:
    json.dump(info, f)
  return path, prompt


@pytest.fixture
def base(shared):
  return shared(*FIXTURE)


def test_each_format_holds_the_committed_prompt(tmp_path, base):
  path, prompt = committed_dir(tmp_path, base)
  npy = export.export(path, 'npy', str(tmp_path / 'p.npy'))
  assert os.path.isabs(npy) and np.load(npy).tobytes() == prompt.tobytes()
  peft_dir = export.export(path, 'peft', str(tmp_path / 'peft'))
  np.testing.assert_array_equal(prompt_files.load_prompt_file(peft_dir), prompt)
  config = json.load(open(os.path.join(peft_dir, prompt_files.PEFT_CONFIG)))
  assert config['base_model_name_or_path'] == base and config['num_virtual_tokens'] == 5
  ckpt = export.export(path, 't5x', str(tmp_path / 't5x'))
  assert ckpt.endswith('checkpoint_3')
  _, params = checkpoints.load_params(ckpt, FIXTURE_CONFIG)
  np.testing.assert_array_equal(params['encoder']['prompt']['prompt']['prompt'], prompt)
  _, frozen = checkpoints.load_base(base, FIXTURE_CONFIG)
  np.testing.assert_array_equal(params['token_embedder']['embedding'],
                                frozen['token_embedder']['embedding'])


def test_unknown_format_and_missing_model_config_are_named(tmp_path, base):
  path, _ = committed_dir(tmp_path, base, model_config=False)
  with pytest.raises(ValueError, match="Unknown export format 'onnx'"):
    export.export(path, 'onnx', str(tmp_path / 'x'))
  with pytest.raises(model_dir_lib.ModelDirError, match='export --format=npy needs none'):
    export.export(path, 'peft', str(tmp_path / 'peft'))
  with pytest.raises(model_dir_lib.ModelDirError, match='no prompt for step 7'):
    export.export(path, 'npy', str(tmp_path / 'p.npy'), step=7)
  assert not os.path.exists(tmp_path / 'peft') and not os.path.exists(tmp_path / 'p.npy')


def test_final_exports(tmp_path):
  config = t5.T5Config.preset('tiny')
  prompt = np.ones((3, config.d_model), np.float32)
  written = export.export_final(str(tmp_path), prompt, config)
  assert written == {'npy': str(tmp_path / 'export' / 'prompt.npy'),
                     'peft': str(tmp_path / 'export' / 'peft')}
  assert export.export_final(str(tmp_path / 'none'), prompt, config, ()) == {}
  with pytest.raises(ValueError, match='export_formats'):
    export.check_final_formats(['npy', 't5x'])
  export.check_final_formats(export.FINAL_FORMATS)
