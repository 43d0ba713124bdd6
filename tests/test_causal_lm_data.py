"""Decoder-only data (data/causal_lm.py) on the real RTE, BoolQ and SST-2 validation files, with
tokenizers built here: rows, loss weights, cuts, buckets, resumption, eval, SeqIO's convention."""

import json

import numpy as np
import pytest

seqio = pytest.importorskip('seqio')
tokenizers = pytest.importorskip('tokenizers')

from prompt_tuning import testing  # noqa: E402
from prompt_tuning.data import batching, causal_lm, tasks  # noqa: E402

TASKS = ('super_glue_rte_local', 'super_glue_boolq_local', 'glue_sst2_local')
LENGTHS = {'inputs': 512, 'targets': 8}


@pytest.fixture(scope='module')
def texts(shared):
  """{task: its validation examples as text}, the tasks reading shared/data."""
  saved = tasks.get_settings()
  tasks.set_local_data_dir(shared('data'))
  yield {name: causal_lm.text_examples(name, 'validation') for name in TASKS}
  tasks.restore_settings(saved)


def _save(tok, folder, config):
  folder.mkdir()
  tok.save(str(folder / 'tokenizer.json'))
  (folder / 'config.json').write_text(json.dumps(config))
  return str(folder)


@pytest.fixture(scope='module')
def word_dir(texts, tmp_path_factory):
  """A Llama-like WordLevel tokenizer (<pad> 0, <s> 1, </s> 2, <unk> 3) over every word."""
  corpus = [t for exs in texts.values() for ex in exs for t in (ex['inputs'], ex['targets'])]
  return testing.word_level_tokenizer(corpus, str(tmp_path_factory.mktemp('w') / 'llama'), {
      'model_type': 'llama', 'bos_token_id': 1, 'eos_token_id': 2})


@pytest.fixture(scope='module')
def bpe_dir(texts, tmp_path_factory):
  """A GPT-2-like byte-level BPE (<pad> 0 then <|endoftext|> 1: BOS = EOS, no BOS added)."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=600, special_tokens=['<pad>', '<|endoftext|>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([ex['inputs'] for ex in texts['super_glue_rte_local']], trainer)
  return _save(tok, tmp_path_factory.mktemp('b') / 'gpt2', {
      'model_type': 'gpt2', 'bos_token_id': 1, 'eos_token_id': [1]})


def _raw(directory):
  return tokenizers.Tokenizer.from_file(f'{directory}/tokenizer.json')


def test_the_tokenizer_takes_its_ids_and_bos_habit_from_the_family(word_dir, bpe_dir):
  llama, gpt2 = causal_lm.CausalLMTokenizer(word_dir), causal_lm.CausalLMTokenizer(bpe_dir)
  assert (llama.bos_id, llama.eos_id, llama.pad_id, llama.add_bos) == (1, 2, 0, True)
  assert (gpt2.bos_id, gpt2.eos_id, gpt2.add_bos, gpt2.byte_level) == (1, 1, False, True)
  assert not llama.byte_level
  assert llama.encode('rte premise:') == _raw(word_dir).encode('rte premise:').ids
  # Byte-level: a target is a word after the inputs, its space in its first token.
  assert gpt2.encode_target('yes') == gpt2.encode(' yes') != gpt2.encode('yes')
  assert llama.decode(llama.encode('a charming journey') + [2, 5]) == 'a charming journey'
  assert causal_lm.CausalLMTokenizer(word_dir, add_bos=False).add_bos is False


def test_a_missing_or_unreadable_tokenizer_is_one_line_naming_it(tmp_path):
  with pytest.raises(causal_lm.TokenizerError, match='tokenizer.json: tokenizer file not found'
                     ) as missing:
    causal_lm.CausalLMTokenizer(str(tmp_path))
  (tmp_path / 'tokenizer.json').write_text('{"not": "a tokenizer"')
  with pytest.raises(causal_lm.TokenizerError, match='not a readable tokenizer.json') as bad:
    causal_lm.CausalLMTokenizer(str(tmp_path))
  for error in (missing, bad):
    assert str(tmp_path / 'tokenizer.json') in str(error.value)
    assert '\n' not in str(error.value)


@pytest.mark.parametrize('name', TASKS)
@pytest.mark.parametrize('which', ['word', 'bpe'])
def test_rows_are_bos_inputs_targets_eos_weighted_on_targets(name, which, texts, word_dir,
                                                             bpe_dir):
  directory = word_dir if which == 'word' else bpe_dir
  tok, raw = causal_lm.CausalLMTokenizer(directory), _raw(directory)
  batch = next(causal_lm.get_batches(name, 'validation', tok, LENGTHS, 4, shuffle=False,
                                     repeat=False))
  assert sorted(batch) == sorted(causal_lm.BATCH_FEATURES)
  assert all(v.dtype == np.int32 for v in batch.values())
  width = batching.bucket_for(int(batch['lengths'].max()), batching.auto_buckets(520))
  assert batch['decoder_target_tokens'].shape == (4, width)
  for i, ex in enumerate(texts[name][:4]):
    bos = [1] if which == 'word' else []
    prefix = bos + raw.encode(ex['inputs']).ids[-(LENGTHS['inputs'] - len(bos)):]  # left cut
    space = ' ' if which == 'bpe' else ''
    target = raw.encode(space + ex['targets']).ids + [tok.eos_id]
    row = prefix + target
    assert 0 < len(prefix) <= LENGTHS['inputs'] and len(target) <= LENGTHS['targets']
    assert batch['lengths'][i] == len(row)
    assert batch['decoder_target_tokens'][i].tolist() == row + [0] * (width - len(row))
    assert batch['decoder_input_tokens'][i].tolist() == ([0] + row + [0] * width)[:width]
    weights = [0] * len(prefix) + [1] * len(target) + [0] * (width - len(row))
    assert batch['decoder_loss_weights'][i].tolist() == weights
    assert tok.target_text(target) == ex['targets']


def test_inputs_are_cut_from_the_left_keeping_bos_and_targets_keep_eos(texts, word_dir):
  tok, raw = causal_lm.CausalLMTokenizer(word_dir), _raw(word_dir)
  ex = texts['super_glue_boolq_local'][0]  # a long passage, then its question
  body = raw.encode(ex['inputs']).ids
  prefix, target, cut = causal_lm.encode_example(tok, ex['inputs'], ex['targets'],
                                                 {'inputs': 16, 'targets': 8})
  assert cut and prefix == [1] + body[-15:]
  assert tok.decode(prefix[1:]).endswith('does ethanol take more energy make that produces')
  prefix, target, cut = causal_lm.encode_example(tok, 'rte premise: a b', 'not_entailment',
                                                 {'inputs': 64, 'targets': 1})
  assert cut and target == [2]  # targets cut from the right; EOS stays
  exact = len(body) + 1
  _, _, cut = causal_lm.encode_example(tok, ex['inputs'], ex['targets'],
                                       {'inputs': exact, 'targets': 2})
  assert not cut  # [BOS] + every input token fits exactly
  batch = next(causal_lm.get_batches('super_glue_boolq_local', 'validation', tok,
                                     {'inputs': 16, 'targets': 8}, 4, shuffle=False))
  assert batch['lengths'].max() <= 24 and batch['decoder_target_tokens'].shape[1] == 24
  with pytest.raises(ValueError, match='inputs need more than 1'):
    causal_lm.encode_example(tok, 'a', 'b', {'inputs': 1, 'targets': 4})


def test_row_batches_of_encoded_rows_are_get_batches_naming_each_rows_example(texts,
                                                                               word_dir):
  """row_batches (no SeqIO: what benchmarks and machines without TensorFlow feed the trainer)
  gives get_batches' grouped stream; example_index names each row's example."""
  tok = causal_lm.CausalLMTokenizer(word_dir)
  rows = [causal_lm.encode_example(tok, e['inputs'], e['targets'], LENGTHS)[:2]
          for e in texts['super_glue_rte_local']]
  ours = causal_lm.row_batches([rows], LENGTHS, 8, seed=3, group_window=3, example_index=True)
  ref = causal_lm.get_batches('super_glue_rte_local', 'validation', tok, LENGTHS, 8, seed=3,
                              group_window=3)
  for _, a, b in zip(range(6), ours, ref):
    assert set(a) == set(b) | {'example_index'}
    assert all(np.array_equal(a[k], b[k]) for k in b)
    for row, i in enumerate(a['example_index']):
      real = a['decoder_target_tokens'][row, :a['lengths'][row]].tolist()
      assert real == list(rows[i][0]) + list(rows[i][1])
  with pytest.raises(ValueError, match='at least one row for every task'):
    next(causal_lm.row_batches([rows, []], LENGTHS, 8))


def test_batches_pad_to_length_buckets_and_resume_at_a_position(word_dir):
  tok = causal_lm.CausalLMTokenizer(word_dir)

  def stream(**kw):
    return causal_lm.get_batches('super_glue_rte_local', 'validation', tok, LENGTHS, 8,
                                 seed=3, **kw)

  first = [b for _, b in zip(range(40), stream())]  # 320 rows: past RTE's 277, a new epoch
  for batch in first:
    width = batch['decoder_target_tokens'].shape[1]
    assert width == batching.bucket_for(int(batch['lengths'].max()), batching.auto_buckets(520))
  assert not np.array_equal(first[0]['decoder_target_tokens'][:, :8],
                            next(stream(shuffle=False))['decoder_target_tokens'][:, :8])
  for start in (5, 34):
    resumed = [b for _, b in zip(range(4), stream(start_position=start))]
    for a, b in zip(first[start:start + 4], resumed):
      assert all(np.array_equal(a[k], b[k]) for k in a)
  grouped = [b for _, b in zip(range(9), stream(group_window=3))]
  spread = [int(b['lengths'].max() - b['lengths'].min()) for b in grouped]
  assert np.mean(spread) < np.mean([int(b['lengths'].max() - b['lengths'].min())
                                    for b in first[:9]])
  resumed = [b for _, b in zip(range(5), stream(group_window=3, start_position=4))]
  for a, b in zip(grouped[4:], resumed):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  shard = next(stream(shuffle=False, shard_index=1, num_shards=2))
  row = next(stream(shuffle=False))['decoder_target_tokens'][1]
  assert shard['decoder_target_tokens'][0][:len(row)].tolist()[:10] == row.tolist()[:10]


@pytest.mark.parametrize('name', TASKS)
def test_eval_rows_labels_and_perfect_predictions_score_100(name, texts, bpe_dir):
  tok = causal_lm.CausalLMTokenizer(bpe_dir)
  examples, cut = causal_lm.get_eval_examples(name, 'validation', tok, LENGTHS,
                                              max_examples=50)
  long = [len(tok.encode(t['inputs'])) > LENGTHS['inputs'] for t in texts[name][:50]]
  assert len(examples) == 50 and cut == sum(long)  # BoolQ's passages run long here
  for ex, text in zip(examples, texts[name]):
    assert ex['inputs'] == tok.encode(text['inputs'])[-LENGTHS['inputs']:]
    assert ex['targets'] == tok.encode_target(text['targets']) + [tok.eos_id]
    assert (ex['inputs_pretokenized'], ex['targets_pretokenized'], ex['task']) == (
        text['inputs'], text['targets'], name)
    assert ex['idx'] == text['idx']
  batches = list(causal_lm.eval_batches(examples, 16))
  assert [b['inputs'].shape[0] for b in batches] == [16] * 4
  last = batches[-1]
  assert last['example_index'].tolist() == [48, 49] + [-1] * 14
  for b in batches:
    for row, length, i in zip(b['inputs'], b['lengths'], b['example_index']):
      ex = examples[i if i >= 0 else b['example_index'][0]]
      assert row[:length].tolist() == ex['inputs'] and not row[length:].any()
  labels = tasks.TASK_INFO[name].labels
  candidates = causal_lm.label_candidates(name, tok)
  assert [tok.target_text(c) for c in candidates] == list(labels)
  # Rank classification's perfect choice: the candidate equal to each example's target.
  predictions = [tok.target_text(candidates[[c == ex['targets'] for c in candidates].index(True)])
                 for ex in examples]
  scores = causal_lm.evaluate_predictions(name, examples, predictions)
  assert scores['accuracy'] == 100.0 and scores['invalid'] == 0
  wrong = [labels[1 - labels.index(p)] for p in predictions]
  assert causal_lm.evaluate_predictions(name, examples, wrong)['accuracy'] == 0.0


def test_features_are_seqio_decoder_feature_converters(texts, word_dir):
  """Pins the convention for the trainer: SeqIO's DecoderFeatureConverter(pack=False) on inputs
  = [BOS] + inputs, targets = targets + EOS gives our three features (full length)."""
  import tensorflow as tf
  tok = causal_lm.CausalLMTokenizer(word_dir)
  lengths = {'inputs': 48, 'targets': 6}
  pairs = [causal_lm.encode_example(tok, ex['inputs'], ex['targets'], lengths)[:2]
           for name in TASKS for ex in texts[name][:3]]
  ds = tf.data.Dataset.from_generator(
      lambda: ({'inputs': p, 'targets': t} for p, t in pairs),
      output_signature={'inputs': tf.TensorSpec([None], tf.int32),
                        'targets': tf.TensorSpec([None], tf.int32)})
  converted = list(seqio.DecoderFeatureConverter(pack=False)(ds, lengths).as_numpy_iterator())
  ours = causal_lm.rows_to_features([p for p, _ in pairs], [t for _, t in pairs], 54)
  assert len(converted) == len(pairs)
  for i, theirs in enumerate(converted):
    for key in ('decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights'):
      assert theirs[key].tolist() == ours[key][i].tolist(), key
    # Where inputs end: the converter's prefix mask covers the prefix and one position more.
    assert int(theirs['decoder_causal_attention'].sum()) == len(pairs[i][0]) + 1


def test_a_mixture_tags_rows_with_their_task_and_resumes(word_dir):
  tok = causal_lm.CausalLMTokenizer(word_dir)
  names = [t.name for t in seqio.get_mixture_or_task('quickstart_mixture').tasks]

  def stream(start):
    return causal_lm.get_batches('quickstart_mixture', 'train', tok, {'inputs': 32, 'targets': 8},
                                 8, seed=1, start_position=start, prompt_per_task=True)

  first = [b for _, b in zip(range(12), stream(0))]
  ids = np.concatenate([b['prompt_ids'] for b in first])
  assert ids.dtype == np.int32 and set(ids.tolist()) == set(range(len(names)))
  for a, b in zip(first[7:], stream(7)):
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# A real released tokenizer, offline: no Llama / GPT-2 tokenizer.json ships in a package fit for
# the test extra, so T5's released SentencePiece model (shared/) is made a tokenizer.json by
# transformers' own slow -> fast converter and checked against sentencepiece itself.


@pytest.fixture(scope='module')
def t5_dir(shared, tmp_path_factory):
  """T5's released SentencePiece model as a tokenizer.json (transformers' converter; no
  config.json: the tokenizer's own template decides BOS, and it adds none)."""
  import shutil
  transformers = pytest.importorskip('transformers')
  source = tmp_path_factory.mktemp('spm')
  shutil.copy(shared(*testing.VOCAB), source / 'spiece.model')
  folder = str(tmp_path_factory.mktemp('t5') / 't5')
  transformers.T5TokenizerFast.from_pretrained(str(source)).save_pretrained(folder)
  return folder


def test_a_released_tokenizer_encodes_and_decodes_real_texts_as_sentencepiece(texts, t5_dir,
                                                                              shared):
  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor(model_file=shared(*testing.VOCAB))
  tok = causal_lm.CausalLMTokenizer(t5_dir)
  assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.byte_level) == (None, sp.eos_id(), False,
                                                                   False)
  assert tok.vocab_size == 32100 and tok.piece(100) == sp.id_to_piece(100)
  checked = unknown = ties = 0
  for name, examples in texts.items():
    for ex in examples:
      for text in (ex['inputs'], ex['targets']):
        ids, reference = tok.encode(text), sp.encode(text)
        if ids != reference:  # only a tie of Viterbi paths may be broken the other way
          score = lambda x: sum(sp.get_score(i) for i in x)
          assert (sp.decode(ids), len(ids)) == (sp.decode(reference), len(reference)), text
          assert score(ids) == pytest.approx(score(reference), abs=1e-4), (name, text)
          ties += 1
        # decode stops at EOS and drops special tokens, <unk> too (sentencepiece shows ' ⁇ ').
        known = [i for i in ids if i != sp.unk_id()]
        assert tok.decode(ids + [sp.eos_id()] + ids) == sp.decode(known), (name, text)
        checked, unknown = checked + 1, unknown + (len(known) < len(ids))
    # A row: no BOS (the tokenizer adds none), inputs, targets, EOS (module docstring).
    prefix, target, cut = causal_lm.encode_example(tok, ex['inputs'], ex['targets'],
                                                   {'inputs': 100_000, 'targets': 100})
    assert (prefix, target, cut) == (tok.encode(ex['inputs']),
                                     sp.encode(ex['targets']) + [sp.eos_id()], False)
  # 1 tie in 8838 texts: BoolQ's '454609000000000' ('0000' '000' against '000' '0000').
  assert checked == 2 * (277 + 3270 + 872) and unknown > 0 and ties <= 2
