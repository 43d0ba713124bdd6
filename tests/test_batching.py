"""batching: bucket lists, trimming a batch to its bucket, grouping windows by length."""

import numpy as np
import pytest

from prompt_tuning.data import batching
from prompt_tuning.testing import FIXTURE, VOCAB

LENGTHS = {'inputs': 64, 'targets': 8}


def test_auto_buckets_step_grows_with_length_and_end_at_the_limit():
  assert batching.auto_buckets(512) == (2, 4, 6, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128,
                                        160, 192, 224, 256, 320, 384, 448, 512)
  assert batching.auto_buckets(100) == (2, 4, 6, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100)
  assert batching.auto_buckets(8) == (2, 4, 6, 8)  # targets: labels are 2-6 tokens
  assert batching.auto_buckets(6) == (2, 4, 6)
  assert batching.auto_buckets(5) == (2, 4, 5)
  assert batching.auto_buckets(2) == (2,)
  assert batching.auto_buckets(1) == (1,)
  for limit in (8, 100, 512, 2048):
    buckets = batching.auto_buckets(limit)
    # A row pads by less than 8 tokens, or 1/8 of its length.
    for short, long in zip(buckets, buckets[1:]):
      assert long - short <= max(8, short / 4)


@pytest.mark.parametrize('setting, expected', [
    ('auto', {'inputs': batching.auto_buckets(64), 'targets': (2, 4, 6, 8)}),
    (None, None),
    ([16, 32, 64], {'inputs': (16, 32, 64), 'targets': (8,)}),
    ([16, 100], {'inputs': (16, 64), 'targets': (8,)}),
    ({'inputs': [32, 64]}, {'inputs': (32, 64), 'targets': (2, 4, 6, 8)}),
    ({'inputs': [32, 64], 'targets': [4, 8]}, {'inputs': (32, 64), 'targets': (4, 8)}),
])
def test_resolve(setting, expected):
  assert batching.resolve(setting, LENGTHS) == expected


@pytest.mark.parametrize('setting, message', [
    ([64, 32], 'LENGTH_BUCKETS = [64, 32]: bucket lengths must be strictly increasing'),
    ([16, 32], "the largest bucket (32) is below TASK_FEATURE_LENGTHS['inputs'] = 64"),
    ({'targets': [2, 4]}, "('targets'): the largest bucket (4) is below "
                          "TASK_FEATURE_LENGTHS['targets'] = 8"),
    ('fast', "LENGTH_BUCKETS = 'fast': use 'auto', None"),
    ([0, 64], 'must be positive integers'),
    ([], 'non-empty list'),
    ({'input': [64]}, "unknown key(s) ['input']"),
])
def test_bad_settings_name_the_macro(setting, message):
  with pytest.raises(ValueError) as e:
    batching.resolve(setting, LENGTHS)
  assert message in str(e.value)


def test_row_lengths_count_to_the_last_real_token():
  tokens = np.array([[5, 1, 0, 0], [0, 0, 0, 0], [3, 0, 4, 1], [2, 2, 2, 2]])
  np.testing.assert_array_equal(batching.row_lengths(tokens), [2, 0, 4, 4])


def batch_of(input_rows, target_rows, length=64, target_length=8):
  def pad(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for i, n in enumerate(rows):
      out[i, :n] = np.arange(2, n + 2)
    return out
  targets = pad(target_rows, target_length)
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  return {'encoder_input_tokens': pad(input_rows, length), 'decoder_input_tokens': decoder_inputs,
          'decoder_target_tokens': targets,
          'decoder_loss_weights': (targets > 0).astype(np.int32)}


def test_trim_cuts_each_feature_to_its_bucket_and_keeps_every_real_token():
  batch = batch_of([20, 33, 5], [3, 1, 2])
  buckets = batching.resolve({'inputs': [16, 32, 48, 64], 'targets': [4, 8]}, LENGTHS)
  out = batching.trim(batch, buckets)
  assert out['encoder_input_tokens'].shape == (3, 48)
  assert {out[k].shape for k in ('decoder_input_tokens', 'decoder_target_tokens',
                                 'decoder_loss_weights')} == {(3, 4)}
  for key, value in out.items():
    width = value.shape[1]
    np.testing.assert_array_equal(value, batch[key][:, :width])
    assert not batch[key][:, width:].any()
  assert batching.trim(batch, None)['encoder_input_tokens'].shape == (3, 64)


def test_trim_pads_to_an_agreed_length_and_refuses_to_cut_real_tokens():
  batch = batch_of([20, 5], [3, 1])
  buckets = batching.resolve('auto', LENGTHS)
  out = batching.trim(batch, buckets, {'inputs': 41, 'targets': 3})  # another host's longest
  assert out['encoder_input_tokens'].shape == (2, 48)
  with pytest.raises(ValueError, match='real tokens past the bucket length 16'):
    batching.trim(batch, buckets, {'inputs': 12, 'targets': 3})
  agreed = list(batching.trimmed(iter([batch]), buckets, agree=lambda n: {**n, 'inputs': 60}))
  assert agreed[0]['encoder_input_tokens'].shape == (2, 64)


def test_targets_that_fill_their_bucket_lose_only_their_shifted_eos():
  batch = batch_of([20, 5], [4, 2])  # row 0: 4 targets, so decoder input position 4 is real
  buckets = batching.resolve('auto', LENGTHS)
  assert batch['decoder_input_tokens'][0, 4] != 0
  out = batching.trim(batch, buckets)
  assert out['decoder_target_tokens'].shape == (2, 4)
  np.testing.assert_array_equal(out['decoder_input_tokens'], batch['decoder_input_tokens'][:, :4])
  # More than that one shifted token past the bucket is still refused.
  bad = {**batch, 'decoder_input_tokens': batch['decoder_input_tokens'].copy()}
  bad['decoder_input_tokens'][1, 6] = 7
  with pytest.raises(ValueError, match='decoder_input_tokens: real tokens past the bucket'):
    batching.trim(bad, buckets)


def test_prompt_ids_pass_trim_unchanged_and_follow_their_rows_when_grouped():
  batch = {**batch_of([20, 33, 5], [3, 1, 2]), 'prompt_ids': np.array([2, 0, 1], np.int32)}
  out = batching.trim(batch, batching.resolve('auto', LENGTHS))
  assert out['encoder_input_tokens'].shape == (3, 40)  # trimming did cut the inputs
  assert out['prompt_ids'] is batch['prompt_ids']
  # Grouping reorders rows: each keeps its prompt id (here the id is the row's input length).
  lengths = np.random.default_rng(0).integers(1, 65, 8)
  big = {**batch_of(lengths.tolist(), [1] * 8), 'prompt_ids': lengths.astype(np.int32)}
  for group in batching.group_in_windows(iter([big]), 4, 2, seed=0):
    np.testing.assert_array_equal(group['prompt_ids'],
                                  batching.row_lengths(group['encoder_input_tokens']))


def windows(num_windows, batch_size, window, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(num_windows):
    n = batch_size * window
    yield batch_of(rng.integers(1, 65, n).tolist(), rng.integers(1, 9, n).tolist())


def test_group_in_windows_sorts_within_a_window_keeps_every_row_and_resumes():
  big = list(windows(3, 4, 5))
  grouped = list(batching.group_in_windows(iter(big), 4, 5, seed=1))
  assert len(grouped) == 15
  for w in range(3):
    rows = np.concatenate([g['encoder_input_tokens'] for g in grouped[5 * w:5 * w + 5]])
    assert sorted(map(bytes, rows)) == sorted(map(bytes, big[w]['encoder_input_tokens']))
  # Each batch holds a run of similar lengths: its rows' spread is small next to the window's.
  spread = [np.ptp(batching.row_lengths(g['encoder_input_tokens'])) for g in grouped]
  assert max(spread) < np.ptp(batching.row_lengths(big[0]['encoder_input_tokens'])) / 2
  again = list(batching.group_in_windows(iter(big), 4, 5, seed=1))
  assert all(np.array_equal(a['encoder_input_tokens'], b['encoder_input_tokens'])
             for a, b in zip(grouped, again))
  # Resuming at batch 7 = window 1, batch 2 of it: the same batches from there on.
  resumed = list(batching.group_in_windows(iter(big[1:]), 4, 5, seed=1, start_position=7))
  assert len(resumed) == 8
  assert all(np.array_equal(a['encoder_input_tokens'], b['encoder_input_tokens'])
             for a, b in zip(grouped[7:], resumed))


@pytest.mark.parametrize('task, split, target_width', [
    ('super_glue_rte_local', 'train', 6),  # labels of 5-6 tokens with EOS
    ('glue_sst2_local', 'validation', 2),  # 2 tokens: every target row fills its bucket
])
def test_bucketed_batches_train_like_fixed_ones(shared, monkeypatch, task, split, target_width):
  """Real RTE / SST-2 batches (T5 vocabulary, paper's 512 inputs) on the real T5X fixture:
  trimmed to their bucket they give the loss, gradient norm and prompt of the same batches at
  512."""
  monkeypatch.setenv('PROMPT_TUNING_DATA_DIR', shared('data'))
  monkeypatch.setenv('PROMPT_TUNING_VOCAB', shared(*VOCAB))
  from prompt_tuning import checkpoints
  from prompt_tuning.data import pipeline
  from prompt_tuning.testing import FIXTURE_CONFIG
  from train_fixtures import make_trainer

  lengths = {'inputs': 512, 'targets': 8}
  stream = pipeline.get_batches(task, split, lengths, 4, seed=3)
  fixed = [next(stream) for _ in range(3)]
  trimmed = [batching.trim(b, batching.resolve('auto', lengths)) for b in fixed]
  assert all(b['encoder_input_tokens'].shape[1] <= 256 for b in trimmed)
  assert {b['decoder_target_tokens'].shape[1] for b in trimmed} == {target_width}
  config, frozen = checkpoints.load_base(shared(*FIXTURE), FIXTURE_CONFIG.replace(dtype='float32'))
  trainer = make_trainer(config, frozen)
  start = np.random.RandomState(0).uniform(-0.5, 0.5, trainer.prompt_shape)
  results = []
  for stream in (fixed, trimmed):
    state, metrics, updates = trainer.init_state(start), [], []
    for batch in stream:
      before = trainer.prompt(state)
      state, m = trainer.train_step(state, batch)
      metrics.append({k: float(m[k]) for k in ('loss', 'grad_norm', 'accuracy')})
      updates.append(trainer.prompt(state) - before)
    results.append((trainer.prompt(state), metrics, updates))
  (prompt_a, metrics_a, updates_a), (prompt_b, metrics_b, updates_b) = results
  for a, b in zip(metrics_a, metrics_b):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
  # Each step's prompt update, and the prompt after three, within 1e-5 (relative, as vectors).
  for a, b in list(zip(updates_a, updates_b)) + [(prompt_a, prompt_b)]:
    assert np.linalg.norm(b - a) <= 1e-5 * np.linalg.norm(a), np.linalg.norm(b - a)
  assert min(np.linalg.norm(u) for u in updates_a) > 1e-3  # the steps did move the prompt


def test_pad_rows_pads_below_and_right_and_cuts_at_the_width():
  np.testing.assert_array_equal(batching.pad_rows([[5, 6, 1], [7, 1]]), [[5, 6, 1], [7, 1, 0]])
  out = batching.pad_rows([[5, 6, 7, 1], [8]], 3, 2)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, [[5, 6], [8, 0], [0, 0]])
