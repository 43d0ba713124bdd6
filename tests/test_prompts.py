"""prompts: the names gin files and saved configs used before the prompt code was split up still
resolve to the moved objects, and a config.gin written then still parses and trains."""

import os

import gin
import numpy as np

from cli_helpers import rte_env
from prompt_tuning import cli, prompts
from prompt_tuning.inference import decoding, evaluation
from prompt_tuning.train import model_dir
from prompt_tuning.prompts import files as prompt_files, init as prompt_init
from prompt_tuning import checkpoints, runs
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.train import plan
from prompt_tuning.data.vocab import SentencePieceVocab
from prompt_tuning.testing import FIXTURE, VOCAB

OLD_CONFIG = os.path.join(os.path.dirname(__file__), 'data', 'config_before_split.gin')


def test_old_names_are_the_moved_objects():
  assert prompts.PromptConfig is prompt_lib.PromptConfig
  assert prompts.Prompt is prompt_lib.Prompt
  assert prompts.get_prompt is prompt_lib.get_prompt
  assert prompts.initializer_by_name is prompt_init.initializer_by_name
  assert prompts.class_labels is prompt_init.class_labels
  assert prompts.load_prompt_file is prompt_files.load_prompt_file
  assert evaluation.Decoding is decoding.DecodingConfig
  assert runs.plan is plan.plan


def test_old_and_new_gin_names_configure_the_same_object():
  gin.clear_config()
  try:
    gin.parse_config('\n'.join([
        'from __gin__ import dynamic_registration',
        'from prompt_tuning import prompts',
        'from prompt_tuning.models import prompt',
        'OLD = @prompts.PromptConfig()', 'NEW = @prompt.PromptConfig()',
        'prompts.PromptConfig.length = 7', "prompt.PromptConfig.placement = 'suffix'"]))
    old, new = gin.query_parameter('%OLD').scoped_configurable_fn(), gin.query_parameter(
        '%NEW').scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert old == new == prompt_lib.PromptConfig(7, 'suffix')


def test_config_written_before_the_split_trains(shared, tmp_path, monkeypatch):
  for key, value in rte_env(shared).items():
    monkeypatch.setenv(key, value)
  out = tmp_path / 'm'
  base = shared(*FIXTURE)
  code = cli.main(['train', f'--gin_file={OLD_CONFIG}', f'--gin.MODEL_DIR={out}',
                   f'--gin.INITIAL_CHECKPOINT_PATH={base}', '--gin.TRAIN_STEPS=1',
                   '--gin.EVAL_PERIOD=0'])
  gin.clear_config()
  assert code == 0
  assert model_dir.latest_step(str(out)) == 1
  prompt, step = model_dir.load_prompt(str(out))
  assert step == 1 and prompt.shape == (5, 4) and np.all(np.isfinite(prompt))
  # The class-label initialisation named as prompts.initializer_by_name ran: the step-0 prompt's
  # first row is the mean embedding of 'entailment', not a uniform draw.
  start, _ = model_dir.load_prompt(str(out), 0)
  _, params = checkpoints.load_params(base)
  ids = SentencePieceVocab(shared(*VOCAB)).encode('entailment')
  expected = np.asarray(params['token_embedder']['embedding'], np.float32)[ids].mean(0)
  np.testing.assert_allclose(start[0], expected, rtol=1e-6)
