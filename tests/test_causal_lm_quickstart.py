"""The decoder-only quickstart (train/causal_lm_quickstart.py) at a reduced size, through
`prompt-tuning quickstart --gin_file=quickstart_causal_lm.gin` in this process: the frozen
model's HF folder, the tuned prompt beating the untrained one, the mixed batch against each
prompt alone, and a bad task name refused before anything is written."""

import json

import numpy as np
import pytest

pytest.importorskip('seqio')
pytest.importorskip('tokenizers')

import gin  # noqa: E402

from prompt_tuning import cli  # noqa: E402
from prompt_tuning.checkpoints import hf_decoder  # noqa: E402
from prompt_tuning.data import batching  # noqa: E402
from prompt_tuning.data import causal_lm as data  # noqa: E402
from prompt_tuning.inference import causal_lm  # noqa: E402
from prompt_tuning.models import decoder_only  # noqa: E402

FN = 'causal_lm_quickstart.quickstart_causal_lm'
# Small enough for the suite: the base model-tuned briefly, short prompt runs, few examples.
REDUCED = {'model_tune_steps': 100, 'prompt_steps': 20, 'eval_period': 20, 'batch_size': 16,
           'eval_max_examples': 32, 'second_task_steps': 10, 'mixed_batch_rows': 2}


def _quickstart(model_dir, **settings) -> int:
  bindings = [f"{FN}.model_dir = '{model_dir}'"] + [
      f'{FN}.{k} = {v!r}' for k, v in {**REDUCED, **settings}.items()]
  gin.clear_config()
  try:
    return cli.main(['quickstart', '--gin_file=quickstart_causal_lm.gin'] +
                    [f'--gin_bindings={b}' for b in bindings])
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('demo') / 'quickstart_causal_lm'
  assert _quickstart(model_dir) == 0
  return model_dir, json.loads((model_dir / 'quickstart.json').read_text())


def test_the_tuned_prompt_steers_the_frozen_model_to_the_task(demo):
  model_dir, report = demo
  untrained, tuned = report['untrained prompt'], report['tuned prompt']
  # A real demonstration: far above the untrained prompt, near the oracle (the prefixed input).
  assert tuned['rank/accuracy'] >= untrained['rank/accuracy'] + 30, report
  oracle = report['task prefix, no prompt (oracle)']
  assert tuned['rank/accuracy'] >= oracle['generate/accuracy'] - 20, report
  assert report['architecture'] == 'LlamaForCausalLM' and report['prompt parameters'] == 4 * 64
  prompt = np.load(model_dir / 'prompt' / 'export' / 'prompt.npy')
  assert prompt.shape == (4, 64)
  assert (model_dir / 'prompt' / 'export' / 'peft' / 'adapter_config.json').exists()
  assert (model_dir / 'prompt' / 'plots' / 'training.png').exists()


def test_the_base_is_an_hf_folder_with_its_tokenizer(demo):
  model_dir, _ = demo
  base = str(model_dir / 'base')
  config, params = hf_decoder.load(base)
  tokenizer = data.CausalLMTokenizer(base)
  assert config.architecture == 'LlamaForCausalLM' and config.vocab_size == tokenizer.vocab_size
  assert tokenizer.add_bos and len(tokenizer.encode('max: 38251 =')) == 8  # a token per digit
  assert json.loads((model_dir / 'base' / 'recipe.json').read_text())['steps'] == 100


def test_each_row_of_the_mixed_batch_gets_what_its_prompt_alone_gives(demo):
  model_dir, report = demo
  rows = report['second prompt']['mixed batch']
  names = [report['task'], report['second prompt']['task']]
  assert [r['prompt'] for r in rows] == names * 2
  assert rows[0]['inputs'] == rows[1]['inputs'] and rows[0]['expected'] != rows[1]['expected']
  base = str(model_dir / 'base')
  config, params = hf_decoder.load(base)
  tokenizer = data.CausalLMTokenizer(base)
  model = decoder_only.DecoderOnly(config, report['placement'])
  prompts = {names[0]: np.load(model_dir / 'prompt' / 'export' / 'prompt.npy'),
             names[1]: np.load(model_dir / 'second_prompt' / 'export' / 'prompt.npy')}
  # The same rows with one prompt for all, per prompt (the batch's shapes: no new compilation).
  ids = [[tokenizer.bos_id] + tokenizer.encode(row['inputs']) for row in rows]
  tokens_BxL, lengths_B = batching.pad_rows(ids), np.array([len(i) for i in ids], np.int32)
  alone = {name: np.asarray(causal_lm.greedy(model, params, tokens_BxL, lengths_B, 2,
                                             np.stack([prompt] * len(rows))))
           for name, prompt in prompts.items()}
  for i, row in enumerate(rows):
    assert row['answer'] == tokenizer.target_text(alone[row['prompt']][i]), row


def test_a_bad_task_name_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
  assert _quickstart(tmp_path / 'run', prompt_task='quickstart_lm_maxx_taskless') == 2
  err = capsys.readouterr().err
  assert 'quickstart_lm_maxx_taskless' in err and 'Traceback' not in err
  assert not (tmp_path / 'run').exists()
