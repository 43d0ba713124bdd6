"""inspection: nearest vocabulary tokens of each prompt position by cosine similarity, norms, and
`prompt-tuning inspect` on every prompt source (tiny synthetic files; the released prompts, the
T5X fixture and the real vocabulary when shared/ is there)."""

import json
import os
import types

import numpy as np
import pytest

from prompt_tuning import checkpoints, cli
from prompt_tuning.prompts import inspection, files as prompt_files
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.data.vocab import SentencePieceVocab
from prompt_tuning.testing import FIXTURE, VOCAB

EMBEDDING = np.random.RandomState(0).randn(12, 4).astype(np.float32)
EMBEDDING[7] = 2.0 * EMBEDDING[2]  # same direction as row 2 (exactly: a power of 2): a tie


def planted_prompt():
  """Positions that are scaled copies of rows 5, 2 and 9, and a zero position."""
  return np.stack([2.5 * EMBEDDING[5], 0.5 * EMBEDDING[2], EMBEDDING[9],
                   np.zeros(4, np.float32)])


class FakeVocab:

  def piece(self, token_id):
    return f'tok{token_id}'


def test_scaled_copies_find_their_token_with_similarity_one():
  found = inspection.nearest_tokens(planted_prompt(), EMBEDDING, k=3)
  assert found['ids'].shape == (4, 3) and found['similarities'].shape == (4, 3)
  assert found['ids'][0, 0] == 5 and found['ids'][2, 0] == 9
  np.testing.assert_allclose(found['similarities'][:3, 0], 1.0, atol=1e-6)
  assert np.all(found['similarities'][[0, 2], 1] < 0.9999)  # (position 1 has a tie)
  # Descending similarities, each the cosine of the listed row.
  sims = found['similarities']
  assert np.all(np.diff(sims, axis=-1) <= 0)
  for p in range(3):
    for j, i in enumerate(found['ids'][p]):
      row, pos = EMBEDDING[i], planted_prompt()[p]
      cosine = row @ pos / (np.linalg.norm(row) * np.linalg.norm(pos))
      assert sims[p, j] == pytest.approx(cosine, abs=1e-6)


def test_ties_go_to_the_lower_id_and_zero_positions_score_zero():
  found = inspection.nearest_tokens(planted_prompt(), EMBEDDING, k=3)
  # Rows 2 and 7 point the same way: both similarity 1, the lower id first.
  np.testing.assert_array_equal(found['ids'][1, :2], [2, 7])
  np.testing.assert_allclose(found['similarities'][1, :2], 1.0, atol=1e-6)
  # A zero position is equally (0) similar to every row: ids 0, 1, 2.
  np.testing.assert_array_equal(found['ids'][3], [0, 1, 2])
  np.testing.assert_array_equal(found['similarities'][3], 0.0)


def test_opposite_direction_ranks_last_with_similarity_minus_one():
  found = inspection.nearest_tokens(-EMBEDDING[4][None], EMBEDDING, k=12)
  assert found['ids'][0, -1] == 4
  assert found['similarities'][0, -1] == pytest.approx(-1.0, abs=1e-6)
  assert sorted(found['ids'][0].tolist()) == list(range(12))


def test_norms_and_num_tokens():
  prompt = planted_prompt()
  found = inspection.nearest_tokens(prompt, EMBEDDING, k=2)
  np.testing.assert_allclose(found['norms'], np.linalg.norm(prompt, axis=-1), rtol=1e-6)
  assert found['norms'][0] == pytest.approx(2.5 * np.linalg.norm(EMBEDDING[5]), rel=1e-6)
  # Rows 9.. are left out: position 2 (a copy of row 9) must find another row.
  limited = inspection.nearest_tokens(prompt, EMBEDDING, k=2, num_tokens=9)
  assert limited['ids'].max() < 9 and limited['ids'][2, 0] != 9
  assert limited['ids'][0, 0] == 5


def test_a_prompt_table_gives_each_prompt_its_own_neighbours():
  table = np.stack([planted_prompt(), planted_prompt()[::-1] * 2])
  found = inspection.nearest_tokens(table, EMBEDDING, k=2)
  assert found['ids'].shape == (2, 4, 2) and found['norms'].shape == (2, 4)
  assert found['ids'][0, 0, 0] == 5 and found['ids'][1, 3, 0] == 5
  np.testing.assert_allclose(found['norms'][1], 2 * found['norms'][0][::-1], rtol=1e-6)


def test_width_mismatch_and_bad_arguments_are_named():
  with pytest.raises(ValueError, match=r'prompt \[2, 3\] has width 3 .* table \[12, 4\] has '
                                       r'width 4'):
    inspection.nearest_tokens(np.ones((2, 3)), EMBEDDING)
  with pytest.raises(ValueError, match='at least one'):
    inspection.nearest_tokens(planted_prompt(), EMBEDDING, k=0)
  with pytest.raises(ValueError, match='num_tokens=13'):
    inspection.nearest_tokens(planted_prompt(), EMBEDDING, num_tokens=13)


def test_report_decodes_ids_and_summarises_norms():
  prompt = planted_prompt()
  report = inspection.inspect_prompt(prompt, EMBEDDING, k=2, vocab=FakeVocab())
  assert report['prompt_shape'] == [4, 4] and report['embedding_shape'] == [12, 4]
  assert report['k'] == 2 and report['searched_ids'] == 12 and len(report['prompts']) == 1
  positions = report['prompts'][0]['positions']
  assert [p['position'] for p in positions] == [0, 1, 2, 3]
  assert positions[0]['nearest'][0] == {'id': 5, 'similarity': pytest.approx(1.0, abs=1e-6),
                                        'token': 'tok5'}
  norms = np.linalg.norm(prompt, axis=-1)
  s = report['summary']
  assert s['prompt_norm_mean'] == pytest.approx(norms.mean(), rel=1e-6)
  assert (s['prompt_norm_min'], s['prompt_norm_max']) == (0.0, pytest.approx(norms.max()))
  assert s['embedding_norm_mean'] == pytest.approx(np.linalg.norm(EMBEDDING, axis=-1).mean())
  json.dumps(report)  # JSON-ready
  text = inspection.format_table(report, 'p.npy', 'ckpt')
  assert 'p.npy [4, 4]' in text and 'ckpt [12, 4]' in text
  assert 'tok5(5) 1.000' in text.splitlines()[-4]
  no_vocab = inspection.inspect_prompt(prompt, EMBEDDING, k=2)
  assert 'token' not in no_vocab['prompts'][0]['positions'][0]['nearest'][0]
  assert '#5 1.000' in inspection.format_table(no_vocab)


# ----------------------------------------------------------------------------------------------
# Reading the embedding; the CLI.


def _t5x_base(tmp_path, prompt=None):
  """A T5X checkpoint holding only the token embedding (and the prompt, when given)."""
  params = {'token_embedder': {'embedding': EMBEDDING}}
  if prompt is not None:
    params['encoder'] = {'prompt': {'prompt': {'prompt': prompt}}}
  return checkpoints.save_t5x(str(tmp_path / 'base'), params, step=1)


def test_load_embedding_from_t5x_hf_and_npy(tmp_path):
  from safetensors.numpy import save_file
  ckpt = _t5x_base(tmp_path)
  value, source = inspection.load_embedding(ckpt)
  np.testing.assert_array_equal(value, EMBEDDING)
  assert source.endswith('checkpoint [token_embedder/embedding]')
  hf_dir = tmp_path / 'hf'
  hf_dir.mkdir()
  (hf_dir / 'config.json').write_text('{}')
  save_file({'encoder.embed_tokens.weight': EMBEDDING, 'lm_head.weight': EMBEDDING[:3]},
            str(hf_dir / 'model.safetensors'))
  value, source = inspection.load_embedding(str(hf_dir))
  np.testing.assert_array_equal(value, EMBEDDING)
  assert source.endswith('model.safetensors [encoder.embed_tokens.weight]')
  np.save(tmp_path / 'table.npy', EMBEDDING.astype(np.float16))
  value, source = inspection.load_embedding(str(tmp_path / 'table.npy'))
  assert value.dtype == np.float32 and value.shape == (12, 4)
  np.save(tmp_path / 'ints.npy', np.zeros((3, 4), np.int32))
  with pytest.raises(ValueError, match='holds floats'):
    inspection.load_embedding(str(tmp_path / 'ints.npy'))


def _inspect(args, capsys):
  rc = cli.main(['inspect', *args])
  out, err = capsys.readouterr()
  return rc, out, err


def test_cli_reads_every_prompt_source(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv('PROMPT_TUNING_VOCAB', raising=False)
  prompt = planted_prompt()
  ckpt = _t5x_base(tmp_path, prompt)  # holds the prompt too: a T5X variable
  npy = prompt_files.write_npy(str(tmp_path / 'p.npy'), prompt)
  anchor = prompt_files.write_npy(str(tmp_path / 'encoder.prompt.prompt.prompt'), prompt)
  peft = prompt_files.write_peft(str(tmp_path / 'peft'), prompt, types.SimpleNamespace(
      d_model=4, num_heads=2, num_encoder_layers=2))
  run = str(tmp_path / 'run')
  os.makedirs(os.path.join(model_dir_lib.checkpoints_dir(run), '3'))
  model_dir_lib.write_numpy_prompt(run, 3, prompt)
  with open(os.path.join(run, model_dir_lib.RUN_INFO), 'w') as f:
    json.dump({'prompt_length': 4, 'd_model': 4, 'initial_checkpoint': ckpt}, f)
  sources = {'npy': [f'--prompt={npy}', f'--checkpoint={ckpt}'],
             'anchor': [f'--prompt={anchor}', f'--checkpoint={ckpt}'],
             'peft': [f'--prompt={peft}', f'--checkpoint={ckpt}'],
             't5x': [f'--prompt={ckpt}', f'--checkpoint={ckpt}'],
             'model_dir': [f'--model_dir={run}']}  # its base checkpoint from run_info.json
  for name, args in sources.items():
    out_json = tmp_path / f'{name}.json'
    rc, out, err = _inspect([*args, '--top_k=3', f'--json={out_json}'], capsys)
    assert rc == 0, (name, err)
    assert 'no vocabulary' in err
    report = json.loads(out_json.read_text())
    assert report['prompt_shape'] == [4, 4] and report['k'] == 3, name
    nearest = [p['nearest'] for p in report['prompts'][0]['positions']]
    assert [n[0]['id'] for n in nearest] == [5, 2, 9, 0], name
    assert all(len(n) == 3 for n in nearest)
    assert '#5 1.000' in out and f'wrote {out_json}' in out
  assert '(step 3)' in report['prompt_source']


def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv('PROMPT_TUNING_VOCAB', raising=False)
  ckpt = _t5x_base(tmp_path)
  wide = prompt_files.write_npy(str(tmp_path / 'wide.npy'), np.ones((3, 6), np.float32))
  fits = prompt_files.write_npy(str(tmp_path / 'fits.npy'), planted_prompt())
  out_json = tmp_path / 'out.json'
  cases = {
      'width': ([f'--prompt={wide}', f'--checkpoint={ckpt}'],
                ['wide.npy', '[3, 6]', 'checkpoint_1', '[12, 4]']),
      'missing prompt': ([f'--prompt={tmp_path / "none.npy"}', f'--checkpoint={ckpt}'],
                         ['none.npy']),
      'missing checkpoint': ([f'--prompt={wide}', f'--checkpoint={tmp_path / "nock"}'],
                             ['nock']),
      'no prompt': ([f'--checkpoint={ckpt}'], ['--prompt', '--model_dir']),
      'no checkpoint': ([f'--prompt={wide}'], ['--checkpoint']),
      'missing vocab': ([f'--prompt={fits}', f'--checkpoint={ckpt}',
                         f'--vocab={tmp_path / "none.model"}'], ['none.model']),
  }
  for name, (args, named) in cases.items():
    rc, out, err = _inspect([*args, f'--json={out_json}'], capsys)
    assert rc == 2, (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('prompt-tuning inspect: error: '), (name, err)
    assert all(word in lines[0] for word in named), (name, lines[0])
    assert not out_json.exists() and not out, name
  assert sorted(os.listdir(tmp_path)) == ['base', 'fits.npy', 'wide.npy']


def _decoder_folder(tmp_path):
  """A tiny random Llama HF folder with a word-level tokenizer.json; its embedding has 3 rows
  more than the tokenizer has ids (as Qwen2's table is padded)."""
  from prompt_tuning import testing
  from prompt_tuning.checkpoints import hf_decoder
  from prompt_tuning.models import decoder_only
  from prompt_tuning.models.decoder_config import DecoderConfig
  folder = testing.word_level_tokenizer(['the premise means entailment or not'],
                                        str(tmp_path / 'llama'), {})
  with open(os.path.join(folder, 'tokenizer.json')) as f:
    words = json.load(f)['model']['vocab']
  config = DecoderConfig(vocab_size=len(words) + 3, d_model=16, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=8, d_ff=32, bos_token_id=1, eos_token_id=2)
  hf_decoder.save(folder, config, decoder_only.init_params(config))
  return folder, words


def test_cli_on_a_decoder_only_folder_and_run_decodes_with_its_tokenizer(tmp_path, capsys,
                                                                         monkeypatch):
  monkeypatch.setenv('PROMPT_TUNING_VOCAB', str(tmp_path / 'a_t5_vocab.model'))  # not used
  folder, words = _decoder_folder(tmp_path)
  embedding, _ = inspection.load_embedding(folder)
  planted = ['entailment', 'not', '<s>']
  prompt = 3.0 * embedding[[words[w] for w in planted]]
  npy = prompt_files.write_npy(str(tmp_path / 'p.npy'), prompt)
  run = str(tmp_path / 'run')  # a decoder-only run: its base checkpoint is the HF folder
  os.makedirs(os.path.join(model_dir_lib.checkpoints_dir(run), '2'))
  model_dir_lib.write_numpy_prompt(run, 2, prompt)
  with open(os.path.join(run, model_dir_lib.RUN_INFO), 'w') as f:
    json.dump({'architecture': 'decoder_only', 'initial_checkpoint': folder}, f)
  for args in ([f'--prompt={npy}', f'--checkpoint={folder}'], [f'--model_dir={run}']):
    out_json = tmp_path / 'r.json'
    rc, out, err = _inspect([*args, f'--json={out_json}'], capsys)
    assert rc == 0 and 'no vocabulary' not in err, err
    report = json.loads(out_json.read_text())
    assert report['embedding_shape'] == [len(words) + 3, 16]
    assert report['searched_ids'] == len(words)  # the padding rows are left out
    assert report['vocab'] == os.path.join(folder, 'tokenizer.json')
    firsts = [p['nearest'][0] for p in report['prompts'][0]['positions']]
    assert [(n['token'], n['id']) for n in firsts] == [(w, words[w]) for w in planted]
    assert all(n['similarity'] == pytest.approx(1.0, abs=1e-5) for n in firsts)
    assert 'entailment(' in out and '<s>(1) 1.000' in out
  # Without its tokenizer.json the folder's ids are shown as ids (T5's $PROMPT_TUNING_VOCAB
  # is not taken for it).
  os.remove(os.path.join(folder, 'tokenizer.json'))
  rc, out, err = _inspect([f'--prompt={npy}', f'--checkpoint={folder}'], capsys)
  assert rc == 0 and 'no vocabulary' in err and f'#{words["not"]} 1.000' in out


# ----------------------------------------------------------------------------------------------
# The real artifacts: released prompts, the T5X fixture checkpoint, T5's vocabulary.


def test_vocab_pieces(shared):
  vocab = SentencePieceVocab(shared(*VOCAB))
  assert [vocab.piece(i) for i in (0, 1, 2)] == ['<pad>', '</s>', '<unk>']
  assert (vocab.piece(32099), vocab.piece(32000)) == ('<extra_id_0>', '<extra_id_99>')
  ids = vocab.encode('entailment')
  assert ''.join(vocab.piece(i) for i in ids).replace('\u2581', ' ').strip() == 'entailment'
  with pytest.raises(ValueError, match='id 32100 is outside'):
    vocab.piece(32100)


def test_cli_on_the_t5x_fixture_with_the_real_vocabulary(shared, tmp_path, capsys):
  ckpt, vocab_file = shared(*FIXTURE), shared(*VOCAB)
  reference = np.load(shared('fixtures', 't5x_tiny', 'embedding_32128x4.npy'))
  vocab = SentencePieceVocab(vocab_file)
  planted = vocab.encode('entailment contradiction')
  prompt = prompt_files.write_npy(str(tmp_path / 'p.npy'), 3.0 * reference[planted])
  out_json = tmp_path / 'r.json'
  rc, out, err = _inspect([f'--prompt={prompt}', f'--checkpoint={ckpt}', f'--vocab={vocab_file}',
                           f'--json={out_json}'], capsys)
  assert rc == 0, err
  report = json.loads(out_json.read_text())
  assert report['embedding_shape'] == [32128, 4] and report['searched_ids'] == 32100
  positions = report['prompts'][0]['positions']
  assert len(positions) == len(planted)
  for position, token_id in zip(positions, planted):
    assert len(position['nearest']) == 5
    first = position['nearest'][0]
    assert first['id'] == token_id and first['token'] == vocab.piece(token_id)
    assert first['similarity'] == pytest.approx(1.0, abs=1e-5)
    assert position['norm'] == pytest.approx(3 * np.linalg.norm(reference[token_id]), rel=1e-5)
    assert all(n['id'] < 32100 and isinstance(n['token'], str) and n['token']
               for n in position['nearest'])
  assert f'{vocab.piece(planted[0])}({planted[0]}) 1.000' in out


def test_released_prompt_against_the_fixture_is_a_width_error(shared, tmp_path, capsys):
  released = shared('fixtures', 'released_prompts', 't5_1_1_lm100k_base', 'rte.npy')
  ckpt = shared(*FIXTURE)
  rc, out, err = _inspect([f'--prompt={released}', f'--checkpoint={ckpt}',
                           f'--json={tmp_path / "r.json"}'], capsys)
  assert rc == 2 and not out and not os.listdir(tmp_path)
  assert 'rte.npy' in err and '[100, 768]' in err and '[32128, 4]' in err
  assert 'checkpoint_3' in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope='module')
def base_sized_table():
  # No T5 1.1 Base table is shared: a random one of its shape stands in (structure, not values).
  return np.random.default_rng(0).standard_normal((32128, 768), np.float32)


@pytest.mark.parametrize('task', ['rte', 'sst2', 'mrpc'])
def test_released_prompts_report_every_position(shared, task, base_sized_table):
  prompt = prompt_files.load_prompt_file(
      shared('fixtures', 'released_prompts', 't5_1_1_lm100k_base', f'{task}.npy'))
  vocab = SentencePieceVocab(shared(*VOCAB))
  table = base_sized_table
  report = inspection.inspect_prompt(prompt, table, vocab=vocab, num_tokens=vocab.vocab_size)
  positions = report['prompts'][0]['positions']
  assert report['prompt_shape'] == [100, 768] and len(positions) == 100
  norms = np.linalg.norm(prompt, axis=-1)
  for p, position in enumerate(positions):
    assert position['norm'] == pytest.approx(norms[p], rel=1e-5)
    assert len(position['nearest']) == 5
    assert all(n['token'] == vocab.piece(n['id']) and n['id'] < 32100
               for n in position['nearest'])
  assert report['summary']['prompt_norm_max'] == pytest.approx(norms.max(), rel=1e-5)
