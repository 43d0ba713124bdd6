"""Prompt tuning a decoder-only model end to end (train/causal_lm_run.py) on the real RTE files:
a random tiny Llama saved as an HF folder with a tokenizer built here; MODEL_DIR, evaluations,
resume, the PEFT CAUSAL_LM export, and a placement PEFT cannot take refused up front."""

import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip('seqio')
pytest.importorskip('tokenizers')

from prompt_tuning import testing  # noqa: E402
from prompt_tuning.checkpoints import hf_decoder  # noqa: E402
from prompt_tuning.data import causal_lm as data  # noqa: E402
from prompt_tuning.data import tasks  # noqa: E402
from prompt_tuning.models import decoder_only  # noqa: E402
from prompt_tuning.models.decoder_config import DecoderConfig  # noqa: E402
from prompt_tuning.models.prompt import PromptConfig  # noqa: E402
from prompt_tuning.prompts import files as prompt_files  # noqa: E402
from prompt_tuning.train import model_dir as model_dir_lib  # noqa: E402
from prompt_tuning.train.causal_lm_run import train_causal_lm  # noqa: E402

TASK = 'super_glue_rte_local'
LENGTHS = {'inputs': 48, 'targets': 4}


@pytest.fixture(scope='module')
def checkpoint(shared, tmp_path_factory):
  """An HF folder: a random tiny Llama (float32 weights), config.json and a tokenizer.json."""
  saved = tasks.get_settings()
  tasks.set_local_data_dir(shared('data'))
  folder = str(tmp_path_factory.mktemp('ckpt') / 'llama')
  corpus = [t for split in ('train', 'validation')
            for ex in data.text_examples(TASK, split) for t in (ex['inputs'], ex['targets'])]
  testing.word_level_tokenizer(corpus, folder, {})
  vocab = data.CausalLMTokenizer(folder, add_bos=True).vocab_size
  config = DecoderConfig(vocab_size=vocab, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, d_ff=64, dtype='float32', bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
  hf_decoder.save(folder, config, decoder_only.init_params(config, jax.random.PRNGKey(0)))
  yield folder
  tasks.restore_settings(saved)


def _train(checkpoint, model_dir, steps, **kw):
  return train_causal_lm(
      model_dir=str(model_dir), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
      batch_size=4, train_steps=steps, checkpoint_dir=checkpoint,
      prompt=kw.pop('prompt', PromptConfig(4, 'prefix')), eval_period=2,
      eval_methods=('rank', 'generate'), eval_max_examples=8, eval_batch_size=4,
      group_by_length=0, **kw)


def test_a_run_trains_evaluates_resumes_and_exports(checkpoint, tmp_path):
  run = tmp_path / 'run'
  first = _train(checkpoint, run, 2)
  assert first['steps'] == 2 and model_dir_lib.committed_steps(str(run)) == [2]
  summary = _train(checkpoint, run, 4)  # resumes at step 2
  records = [json.loads(line) for line in open(run / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['kind'] == 'eval'] == [0, 2, 4]
  assert all({'rank/accuracy', 'generate/accuracy'} <= set(r) for r in records
             if r['kind'] == 'eval')
  assert summary['final_eval']['rank/accuracy'] == records[-1]['rank/accuracy']
  prompt, step = model_dir_lib.load_prompt(str(run))
  assert step == 4 and prompt.shape == (4, 32)
  start, _ = model_dir_lib.load_prompt(str(run), 0)
  assert not np.array_equal(prompt, start)  # it trained
  info = json.load(open(run / 'run_info.json'))
  assert info['architecture'] == 'decoder_only' and info['placement'] == 'prefix'
  np.testing.assert_array_equal(np.load(run / 'export' / 'prompt.npy'), prompt)
  adapter = summary['exports']['peft']
  assert json.load(open(os.path.join(adapter, 'adapter_config.json')))['task_type'] == 'CAUSAL_LM'
  np.testing.assert_array_equal(prompt_files.load_prompt_file(adapter), prompt)


def test_a_placement_peft_cannot_take_is_refused_before_anything_is_written(checkpoint,
                                                                             tmp_path):
  with pytest.raises(ValueError, match=r"PEFT cannot place a prompt at 'after_bos'"):
    _train(checkpoint, tmp_path / 'run', 2, prompt=PromptConfig(4, 'after_bos'))
  assert not (tmp_path / 'run').exists()
  summary = _train(checkpoint, tmp_path / 'run', 2, prompt=PromptConfig(4, 'after_bos'),
                   export_formats=('npy',))
  assert set(summary['exports']) == {'npy'}


def test_a_t5_model_or_another_family_is_refused_in_one_line(checkpoint, tmp_path):
  from prompt_tuning.models import t5
  from prompt_tuning.models.decoder_model import DecoderModel
  with pytest.raises(ValueError, match=r'T5Config, a T5 model.*models/decoder_only.gin'):
    _train(checkpoint, tmp_path / 'run', 2, model=t5.T5Config.preset('tiny'))
  with pytest.raises(ValueError, match=r'holds a llama model.*models/gpt2.gin'):
    _train(checkpoint, tmp_path / 'run', 2, model=DecoderModel('gpt2'))
  assert not (tmp_path / 'run').exists()


def test_the_train_command_runs_it_from_its_gin_file(checkpoint, shared, tmp_path):
  from cli_helpers import run_cli
  bindings = [f"MODEL_DIR = '{tmp_path / 'run'}'", f"INITIAL_CHECKPOINT_PATH = '{checkpoint}'",
              f"MIXTURE_OR_TASK_NAME = '{TASK}'", f'TASK_FEATURE_LENGTHS = {LENGTHS}',
              'TRAIN_STEPS = 2', 'BATCH_SIZE = 4', 'EVAL_PERIOD = 2', 'EVAL_MAX_EXAMPLES = 8',
              'PROMPT_LENGTH = 4', 'GROUP_BY_LENGTH = 0']
  # The family block checks the folder is a Llama and gives its defaults (BOS).
  args = ['train', '--gin_file=runs/causal_lm_prompt_tuning.gin', '--gin_file=models/llama.gin'] + [
      f'--gin_bindings={b}' for b in bindings]
  env = {'PROMPT_TUNING_DATA_DIR': shared('data')}
  run_cli(args, env, str(tmp_path))
  summary = json.load(open(tmp_path / 'run' / 'summary.json'))
  assert summary['architecture'] == 'decoder_only' and summary['steps'] == 2
  assert 'rank/accuracy' in summary['final_eval']
  assert 'causal_lm_run.train_causal_lm' in (tmp_path / 'run' / 'config.gin').read_text()

  bad = args + [f"--gin_bindings=MODEL_DIR = '{tmp_path / 'bad'}'",
                 "--gin_bindings=MIXTURE_OR_TASK_NAME = 'super_glue_rtee'"]
  refused = run_cli(bad, env, str(tmp_path), check=False)
  assert refused.returncode == 2 and 'Traceback' not in refused.stderr
  assert 'super_glue_rtee' in refused.stderr and not (tmp_path / 'bad').exists()
