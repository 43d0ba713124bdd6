"""CausalPromptedModel (inference/causal_runner.py): a decoder-only model with a prompt table run
over rows: a batch mixing prompts equals each prompt alone, generate and score equal the KV-cache
functions they wrap, and the HF folder / prompt file loaders."""

import jax
import numpy as np
import pytest

from prompt_tuning.checkpoints import hf_decoder
from prompt_tuning.inference import causal_lm
from prompt_tuning.inference.causal_runner import CausalPromptedModel, is_decoder_only_run
from prompt_tuning.inference.decoding import DecodingConfig
from prompt_tuning.models import decoder_only
from prompt_tuning.models.decoder_config import DecoderConfig
from prompt_tuning.prompts import library as library_lib

CONFIG = DecoderConfig(vocab_size=40, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=4, d_ff=32, dtype='float32')
P = 3


@pytest.fixture(scope='module')
def setup():
  params = decoder_only.init_params(CONFIG, jax.random.PRNGKey(0))
  table = np.random.RandomState(0).normal(0, 1, (2, P, CONFIG.d_model)).astype(np.float32)
  tokens = np.array([[1, 5, 9, 7], [1, 4, 0, 0], [1, 6, 8, 0]], np.int32)
  lengths = np.array([4, 2, 3], np.int32)
  return params, table, tokens, lengths


def test_a_mixed_batch_equals_each_prompt_alone(setup):
  params, table, tokens, lengths = setup
  mixed = CausalPromptedModel(CONFIG, params, table, names=['a', 'b'])
  ids = mixed.prompt_ids(['a', 'b', 'b'])
  out = mixed.generate(tokens, DecodingConfig(), 5, ids, lengths)
  candidates = np.array([[3, 2], [11, 12]], np.int32)
  scores = mixed.score(tokens, candidates, ids, lengths, np.array([2, 2]))
  for k in (0, 1):
    alone = CausalPromptedModel(CONFIG, params, table[k])
    rows = ids == k
    np.testing.assert_array_equal(
        alone.generate(tokens, DecodingConfig(), 5, lengths_B=lengths)[rows], out[rows])
    np.testing.assert_allclose(alone.score(tokens, candidates, lengths_B=lengths)[rows],
                               scores[rows], rtol=1e-5, atol=1e-5)
  model = decoder_only.DecoderOnly(CONFIG)
  np.testing.assert_array_equal(
      out[0], np.asarray(causal_lm.greedy(model, params, tokens, lengths, 5, table[0]))[0])
  with pytest.raises(library_lib.LibraryError, match="no prompt named 'c'"):
    mixed.prompt_ids(['c'])


def test_lengths_default_to_the_last_nonzero_id(setup):
  params, table, tokens, lengths = setup
  model = CausalPromptedModel(CONFIG, params, table[1], placement='after_bos')
  np.testing.assert_array_equal(model.generate(tokens, DecodingConfig(), 3),
                                model.generate(tokens, DecodingConfig(), 3, lengths_B=lengths))


def test_from_run_reads_an_hf_folder_and_a_prompt_file(setup, tmp_path):
  params, table, tokens, lengths = setup
  hf_decoder.save(str(tmp_path / 'llama'), CONFIG, params)
  np.save(tmp_path / 'p.npy', table[0])
  model, step, ids = CausalPromptedModel.from_run(str(tmp_path / 'llama'),
                                                  prompt_file=str(tmp_path / 'p.npy'))
  assert (step, ids, model.is_table) == (0, None, False)
  expected = CausalPromptedModel(CONFIG, params, table[0])
  np.testing.assert_array_equal(model.generate(tokens, DecodingConfig(), 4, lengths_B=lengths),
                                expected.generate(tokens, DecodingConfig(), 4, lengths_B=lengths))
  with pytest.raises(ValueError, match=r'shape \(3, 8\)'):
    CausalPromptedModel(CONFIG, params, np.zeros((3, 8), np.float32))
  with pytest.raises(ValueError, match='INITIAL_CHECKPOINT_PATH'):
    CausalPromptedModel.from_run(None, prompt_file=str(tmp_path / 'p.npy'))
  assert not is_decoder_only_run(str(tmp_path))
