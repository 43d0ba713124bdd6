"""The offline WordLevel tokenizer builder (data/word_level.py), read back through
CausalLMTokenizer as a decoder-only checkpoint's tokenizer is."""

import json

import pytest

pytest.importorskip('tokenizers')

from prompt_tuning.data import causal_lm, word_level  # noqa: E402

LLAMA = {'model_type': 'llama', 'bos_token_id': word_level.BOS_ID,
         'eos_token_id': word_level.EOS_ID, 'pad_token_id': word_level.PAD_ID}


def test_special_ids_come_first_and_config_json_is_written(tmp_path):
  folder = word_level.word_level_tokenizer(['max: 38251 =', '8'], str(tmp_path / 't'), LLAMA)
  tok = causal_lm.CausalLMTokenizer(folder)
  vocab = json.loads((tmp_path / 't' / 'tokenizer.json').read_text())['model']['vocab']
  assert [vocab[t] for t in word_level.SPECIAL_TOKENS] == [0, 1, 2, 3]
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 0, True)
  assert json.loads((tmp_path / 't' / 'config.json').read_text()) == LLAMA
  # Words and punctuation runs are tokens; a number is one word unless digits are split.
  assert len(tok.encode('max: 38251 =')) == 4
  assert tok.encode('never seen') == [3, 3]  # <unk>


def test_split_digits_makes_every_digit_a_token(tmp_path):
  folder = word_level.word_level_tokenizer(['max: 0123456789 ='], str(tmp_path / 't'), LLAMA,
                                           split_digits=True)
  tok = causal_lm.CausalLMTokenizer(folder)
  ids = tok.encode('max: 38251 =')
  assert len(ids) == 8 and 3 not in ids
  assert tok.target_text(tok.encode_target('8') + [tok.eos_id, 5]) == '8'
  assert tok.decode(tok.encode('38251')) == '3 8 2 5 1'  # WordLevel joins with spaces


def test_an_existing_folder_is_refused(tmp_path):
  with pytest.raises(FileExistsError, match='already exists'):
    word_level.word_level_tokenizer(['a'], str(tmp_path), LLAMA)
