"""Prompt libraries and mixed-task inference (#12 item 3): named prompts from files, PEFT
adapters and MODEL_DIRs in one table; a batch mixing prompts answers as each prompt alone."""

import json

import jax
import numpy as np
import pytest

from prompt_tuning import checkpoints, runs
from prompt_tuning.inference import decoding
from prompt_tuning.prompts import files as prompt_files
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.data import batching
from prompt_tuning.inference.runner import PromptedModel
from prompt_tuning.prompts.library import LibraryError, load_library

CONFIG = t5.T5Config(vocab_size=384, d_model=16, d_ff=32, num_heads=2, head_dim=8,
                     num_encoder_layers=1, num_decoder_layers=1, dtype='float32')
LENGTHS = {'inputs': 16, 'targets': 4}


@pytest.fixture(scope='module')
def frozen():
  return t5.init_params(CONFIG, jax.random.PRNGKey(0))


def _prompt(seed, length=3, width=16):
  return np.random.RandomState(seed).normal(size=(length, width)).astype(np.float32)


@pytest.fixture
def library_dir(tmp_path):
  directory = tmp_path / 'lib'
  prompt_files.write_npy(str(directory / 'first.npy'), _prompt(1))
  prompt_files.write_npy(str(directory / 'max.npy'), _prompt(2))
  prompt_files.write_peft(str(directory / 'min'), _prompt(3), CONFIG)
  (directory / 'notes.txt').write_text('not a prompt')
  return directory


def test_library_from_a_folder_a_mapping_and_a_list(library_dir):
  library = load_library(str(library_dir), d_model=16)
  assert list(library) == ['first', 'max', 'min']
  assert [p.kind for p in library.values()] == ['npy', 'npy', 'peft']
  np.testing.assert_array_equal(library['min'].value, _prompt(3))
  mapped = load_library({'b': str(library_dir / 'max.npy'), 'a': str(library_dir / 'min')})
  assert list(mapped) == ['b', 'a']
  listed = load_library([str(library_dir / 'first.npy'), str(library_dir / 'min')])
  assert list(listed) == [str(library_dir / 'first.npy'), str(library_dir / 'min')]


@pytest.mark.parametrize('make, message', [
    (lambda d: prompt_files.write_npy(str(d / 'wide.npy'), _prompt(4, width=8)),
     "prompt 'wide' .* has width 8 but the model's d_model is 16"),
    (lambda d: prompt_files.write_npy(str(d / 'long.npy'), _prompt(4, length=5)),
     "prompt 'long' .* has length 5 but 'first' has 3"),
    # an extension-less numpy file (as T5X writes them) named like max.npy
    (lambda d: prompt_files.write_npy(str(d / 'max'), _prompt(4)),
     "prompt name 'max' appears twice in the library: .*max and .*max.npy"),
])
def test_bad_library_entries_are_named(library_dir, make, message):
  make(library_dir)
  with pytest.raises(LibraryError, match=message):
    load_library(str(library_dir), d_model=16)


def test_duplicate_and_unsafe_names_are_refused(library_dir, tmp_path):
  with pytest.raises(LibraryError, match="'../etc' is not allowed"):
    load_library({'../etc': str(library_dir / 'max.npy')})
  with pytest.raises(LibraryError, match='appears twice'):
    load_library([str(library_dir / 'max.npy'), str(library_dir / 'max.npy')])
  with pytest.raises(LibraryError, match='does not exist'):
    load_library({'x': str(tmp_path / 'missing.npy')})
  (tmp_path / 'empty').mkdir()
  with pytest.raises(LibraryError, match='no prompts in it'):
    load_library(str(tmp_path / 'empty'))


@pytest.mark.parametrize('placement', ['prefix', 'suffix'])
def test_mixed_batch_equals_each_prompt_alone(library_dir, frozen, placement):
  library = load_library(str(library_dir), d_model=16)
  rng = np.random.RandomState(0)
  rows = [list(rng.randint(3, 300, size=rng.randint(2, 14))) + [1] for _ in range(10)]
  names = [['first', 'max', 'min'][i % 3] for i in range(10)]
  inputs = batching.pad_rows(rows, width=16)
  buckets = batching.auto_buckets(16)
  mixed = PromptedModel.with_library(CONFIG, frozen, library, placement=placement)
  ids = mixed.prompt_ids(names)
  greedy = decoding.DecodingConfig()
  together = mixed.generate_rows(inputs, greedy, 4, batch_size=4, buckets=buckets, prompt_ids_N=ids)
  candidates = np.array([[5, 1, 0], [7, 8, 1]], np.int32)
  scores = mixed.score_rows(inputs, candidates, batch_size=4, buckets=buckets, prompt_ids_N=ids)
  for name in ('first', 'max', 'min'):
    alone = PromptedModel.with_library(CONFIG, frozen, library, placement=placement, names=[name])
    assert not alone.is_table  # the plain single-prompt model
    picked = [i for i, n in enumerate(names) if n == name]
    outputs = alone.generate_rows(inputs[picked], greedy, 4, batch_size=4, buckets=buckets)
    np.testing.assert_array_equal(outputs, together[picked])
    np.testing.assert_allclose(alone.score_rows(inputs[picked], candidates, batch_size=4,
                                                buckets=buckets), scores[picked], atol=1e-5, rtol=0)
  with pytest.raises(LibraryError, match="no prompt named 'rte'"):
    mixed.prompt_ids(['rte'])


@pytest.fixture(scope='module')
def base_path(frozen, tmp_path_factory):
  directory = tmp_path_factory.mktemp('base')
  checkpoints.save_t5x(str(directory), frozen, 0, overwrite=True)
  return str(directory / 'checkpoint_0')


def _infer(base_path, library, input_file, out):
  return runs.infer(model_dir=None, mixture_or_task_name='quickstart_max',
                    task_feature_lengths=LENGTHS, initial_checkpoint_path=base_path, model=CONFIG,
                    prompt=PromptConfig(3), batch_size=4, prompt_library=library,
                    input_file=str(input_file), output_dir=str(out))


def test_infer_over_a_mixed_input_file(library_dir, base_path, tmp_path):
  inputs = tmp_path / 'mixed.jsonl'
  rows = [{'prompt': 'max', 'inputs': '38251'}, {'task': 'first', 'inputs': '907'},
          {'prompt': 'min', 'inputs': '5521'}, {'prompt': 'max', 'inputs': '12'}]
  inputs.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  path = _infer(base_path, str(library_dir), inputs, tmp_path / 'out')
  written = [json.loads(line) for line in open(path)]
  assert [(w['prompt'], w['inputs']) for w in written] == [
      (r.get('prompt', r.get('task')), r['inputs']) for r in rows]
  assert all(isinstance(w['prediction'], str) for w in written)


@pytest.mark.parametrize('lines, message', [
    (['{"prompt": "rte", "inputs": "1"}'], "row 1 asks for prompt 'rte'"),
    (['{"prompt": "max", "inputs": "1"}', 'not json'], 'mixed.jsonl:2: not a JSON object'),
    (['{"prompt": "max"}'], 'mixed.jsonl:1: each line needs'),
])
def test_bad_mixed_inputs_write_nothing(library_dir, base_path, tmp_path, lines, message):
  inputs = tmp_path / 'mixed.jsonl'
  inputs.write_text('\n'.join(lines) + '\n')
  with pytest.raises(ValueError, match=message):
    _infer(base_path, str(library_dir), inputs, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()
