"""Prompt tuning a decoder-only model end to end (train/causal_lm_run.py) on the real RTE files:
a random tiny Llama saved as an HF folder with a tokenizer built here; MODEL_DIR, evaluations,
resume, the PEFT CAUSAL_LM export, a placement PEFT cannot take refused up front, deep prompts,
and a prompt per task of a mixture (the quickstart tasks) with a shared prompt."""

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
from prompt_tuning.data import pipeline, tasks  # noqa: E402
from prompt_tuning.inference.causal_lm_eval import CausalLMEvaluator  # noqa: E402
from prompt_tuning.inference.causal_runner import CausalPromptedModel  # noqa: E402
from prompt_tuning.models import decoder_only  # noqa: E402
from prompt_tuning.models.decoder_config import DecoderConfig  # noqa: E402
from prompt_tuning.models.prompt import PromptConfig  # noqa: E402
from prompt_tuning.prompts import files as prompt_files  # noqa: E402
from prompt_tuning.train import model_dir as model_dir_lib  # noqa: E402
from prompt_tuning.train.causal_lm_run import train_causal_lm  # noqa: E402

TASK = 'super_glue_rte_local'
LENGTHS = {'inputs': 48, 'targets': 4}
MIXTURE = 'quickstart_taskless_mixture'  # two tasks, alike inputs: only their prompts differ


@pytest.fixture(scope='module')
def checkpoint(shared, tmp_path_factory):
  """An HF folder: a random tiny Llama (float32 weights), config.json and a tokenizer.json."""
  saved = tasks.get_settings()
  tasks.set_local_data_dir(shared('data'))
  folder = str(tmp_path_factory.mktemp('ckpt') / 'llama')
  corpus = [t for split in ('train', 'validation')
            for ex in data.text_examples(TASK, split) for t in (ex['inputs'], ex['targets'])]
  corpus += [t for name in pipeline.prompt_names(MIXTURE)
             for ex in data.text_examples(name, 'validation')
             for t in (ex['inputs'], ex['targets'])]
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


def test_a_placement_peft_cannot_take_is_refused_and_a_deep_run_exports_npy(checkpoint,
                                                                             tmp_path):
  with pytest.raises(ValueError, match=r"PEFT cannot place a prompt at 'after_bos'"):
    _train(checkpoint, tmp_path / 'run', 2, prompt=PromptConfig(4, 'after_bos'))
  assert not (tmp_path / 'run').exists()
  run = tmp_path / 'run'
  summary = _train(checkpoint, run, 2, prompt=PromptConfig(4, 'after_bos', deep=True),
                   export_formats=('npy',))
  assert set(summary['exports']) == {'npy', 'npy (deep)'}
  deep = model_dir_lib.load_deep_prompt(str(run))
  assert deep.shape == (1, 4, 32) and json.load(open(run / 'run_info.json'))['deep'] is True
  np.testing.assert_array_equal(np.load(run / 'export' / 'deep_prompt.npy'), deep)
  assert not np.array_equal(deep, model_dir_lib.load_deep_prompt(str(run), 0))  # it trained


def test_a_mixture_trains_evaluates_and_exports_a_prompt_per_task(checkpoint, tmp_path):
  """PROMPT_PER_TASK with a shared prompt ('concat'): a table of the mixture's tasks, each task
  evaluated with its own effective prompt (what a single-task evaluation of that prompt gives)
  and exported on its own (npy, PEFT)."""
  run, lengths = tmp_path / 'run', {'inputs': 12, 'targets': 4}
  summary = train_causal_lm(
      model_dir=str(run), mixture_or_task_name=MIXTURE, task_feature_lengths=lengths,
      batch_size=4, train_steps=2, checkpoint_dir=checkpoint, prompt_per_task=True,
      prompt=PromptConfig(3, 'prefix', shared='concat'), eval_period=2, eval_methods=('rank',),
      eval_max_examples=4, eval_batch_size=4, group_by_length=0)
  names = pipeline.prompt_names(MIXTURE)
  assert summary['prompt_names'] == names
  info = json.load(open(run / 'run_info.json'))
  assert (info['num_prompts'], info['prompt_names'], info['prompt_shared']) == (2, names, 'concat')
  table, step = model_dir_lib.load_prompt(str(run))
  assert step == 2 and table.shape == (2, 6, 32)  # [shared; task] per task
  assert not np.array_equal(table, model_dir_lib.load_prompt(str(run), 0)[0])
  config, params = hf_decoder.load(checkpoint)
  tokenizer = data.CausalLMTokenizer(checkpoint)
  for k, name in enumerate(names):
    np.testing.assert_array_equal(np.load(run / 'export' / 'prompts' / f'{name}.npy'), table[k])
    np.testing.assert_array_equal(
        prompt_files.load_prompt_file(summary['exports'][f'peft/{name}']), table[k])
    # The task alone, its rows given prompt k of the table (the run's compiled shapes).
    alone = CausalLMEvaluator(name, 'validation', tokenizer, lengths, methods=('rank',),
                              batch_size=4, max_examples=4, prompt_ids={name: k}).evaluate(
        CausalPromptedModel(config, params, table), 2)
    assert summary['final_eval'][f'rank/{name}/accuracy'] == alone['rank/accuracy'], name


def test_an_ensemble_trains_members_on_the_same_batches_and_scores_them(checkpoint, tmp_path):
  """PROMPT_ENSEMBLE = 2: two members from different starts, each batch run once per member;
  evaluated as each member, their mean and the ensemble; exported per member."""
  run = tmp_path / 'run'
  summary = train_causal_lm(
      model_dir=str(run), mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
      batch_size=4, train_steps=2, checkpoint_dir=checkpoint, prompt_ensemble=2,
      prompt=PromptConfig(3, 'prefix'), eval_period=2, eval_methods=('rank',),
      eval_max_examples=4, eval_batch_size=4, group_by_length=0)
  assert summary['prompt_names'] == ['member0', 'member1']
  table, _ = model_dir_lib.load_prompt(str(run))
  start, _ = model_dir_lib.load_prompt(str(run), 0)
  assert table.shape == (2, 3, 32) and not np.array_equal(start[0], start[1])
  assert not np.array_equal(table, start)
  final = summary['final_eval']
  assert {'rank/ensemble/accuracy', 'rank/member_mean/accuracy', 'rank/member0/accuracy',
          'rank/member1/accuracy'} <= set(final)
  assert final['rank/member_mean/accuracy'] == pytest.approx(
      (final['rank/member0/accuracy'] + final['rank/member1/accuracy']) / 2)
  for k in (0, 1):
    np.testing.assert_array_equal(np.load(run / 'export' / 'prompts' / f'member{k}.npy'),
                                  table[k])


def test_the_gin_file_binds_multi_task_and_deep_settings():
  """runs/multi_task_prompt_tuning.gin and prompts/deep.gin after the decoder-only run's file
  set the names T5's runs use (PROMPT_PER_TASK, PROMPT_SHARED, PromptConfig.deep)."""
  import gin
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.add_config_file_search_path(os.path.join(repo, 'gin'))  # for its includes, as the CLI
  files = ['runs/causal_lm_prompt_tuning.gin', 'runs/multi_task_prompt_tuning.gin']
  required = ["MODEL_DIR = '/m'", "MIXTURE_OR_TASK_NAME = 'x'", 'TASK_FEATURE_LENGTHS = {}',
              "INITIAL_CHECKPOINT_PATH = '/c'"]
  try:
    for extra, shared, deep in (([], None, False), (["PROMPT_SHARED = 'add'"], 'add', False),
                                (['PROMPT_PER_TASK = False'], None, True)):
      gin.clear_config()
      names = files + (['prompts/deep.gin'] if deep else [])
      gin.parse_config_files_and_bindings([os.path.join(repo, 'gin', f) for f in names],
                                          required + extra)
      config = gin.get_configurable(PromptConfig)()
      assert (config.shared, config.deep) == (shared, deep)
      assert gin.query_parameter('%PROMPT_PER_TASK') is not deep
      assert str(gin.query_parameter('causal_lm_run.train_causal_lm.prompt_per_task')) == (
          '%PROMPT_PER_TASK')
    gin.clear_config()  # T5's ensemble file after it: PROMPT_ENSEMBLE reaches the run
    gin.parse_config_files_and_bindings(
        [os.path.join(repo, 'gin', f) for f in (files[0], 'runs/prompt_ensemble_train.gin')],
        required)
    assert gin.query_parameter('%PROMPT_ENSEMBLE') == 5
    assert str(gin.query_parameter('causal_lm_run.train_causal_lm.prompt_ensemble')) == (
        '%PROMPT_ENSEMBLE')
  finally:
    gin.clear_config()


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
