"""Decoder-only decoding beyond greedy (inference/causal_lm.py): `generate` with each
DecodingConfig method on a tiny random Llama and a batch whose rows carry their own prompts.
References: argmax and log-probs of the full forward pass (no cache), and beam search against an
exhaustive search over every continuation. Every run shares a few jitted shapes."""

import functools
import itertools

import jax
import numpy as np
import pytest

from prompt_tuning.inference import causal_lm
from prompt_tuning.inference.decoding import DecodingConfig
from prompt_tuning.models import decoder_only
from prompt_tuning.models.decoder_config import DecoderConfig

V, D, P, STEPS = 6, 32, 2, 6
TOKENS = np.array([[1, 3, 4, 5], [1, 5, 0, 0]], np.int32)  # right-padded
LENGTHS = np.array([4, 2], np.int32)
GREEDY = DecodingConfig('greedy')


@pytest.fixture(scope='module')
def setup():
  """(model, params, per-row prompts [2, P, D], eos: a token greedy emits mid-way in row 0)."""
  config = DecoderConfig(vocab_size=V, d_model=D, num_layers=1, num_heads=4, num_kv_heads=2,
                         head_dim=8, d_ff=64, dtype='float32')
  # Larger weights than the init's: peaked next-token distributions, far from ties.
  params = jax.tree.map(lambda x: 1.5 * x, decoder_only.init_params(config, jax.random.PRNGKey(0)))
  model = decoder_only.DecoderOnly(config)
  prompts = np.random.RandomState(0).normal(0, 1.0, (2, P, D)).astype(np.float32)
  free = causal_lm.generate(model, params, TOKENS, LENGTHS, STEPS, GREEDY, prompts, eos_ids=())
  # An EOS first emitted at a later step of row 0 (so that something precedes it).
  eos = next(int(t) for i, t in enumerate(free[0]) if i >= 1 and t not in free[0][:i])
  return model, params, prompts, eos, free


@functools.partial(jax.jit, static_argnames=('model',))
def _forward(model, params, tokens, prompt):
  return model.apply({'params': params}, tokens, prompt)


def _logp(model, params, prompts, rows, continuations):
  """Log-softmaxed logits [N, W, V] of each row's inputs + continuation (row r of the batch with
  its prompt), one full forward pass (no cache) padded to one shape for every call."""
  seqs = [list(TOKENS[r, :LENGTHS[r]]) + list(c) for r, c in zip(rows, continuations)]
  padded = np.zeros((64, TOKENS.shape[1] + STEPS), np.int32)
  for k, s in enumerate(seqs):
    padded[k, :len(s)] = s
  table = np.zeros((64,) + prompts.shape[1:], np.float32)
  table[:len(seqs)] = prompts[rows]
  return np.asarray(jax.nn.log_softmax(_forward(model, params, padded, table), -1))[:len(seqs)]


def _continuation_logp(model, params, prompts, rows, continuations):
  """log p(continuation | its row's prompt and inputs)."""
  logp = _logp(model, params, prompts, rows, continuations)
  start = LENGTHS[rows] - 1  # logits[t] predict token t + 1
  return np.array([sum(logp[k, start[k] + j, t] for j, t in enumerate(c))
                   for k, c in enumerate(continuations)])


def test_greedy_is_the_full_forward_argmax_and_pads_after_eos(setup):
  model, params, prompts, eos, free = setup
  # Without an EOS each generated token is the argmax of the full forward on what precedes it.
  logp = _logp(model, params, prompts, [0, 1], free)
  for r in range(2):
    np.testing.assert_array_equal(free[r], logp[r, LENGTHS[r] - 1:][:STEPS].argmax(-1))
  stopped = causal_lm.generate(model, params, TOKENS, LENGTHS, STEPS, GREEDY, prompts,
                               eos_ids=(eos,))
  for r in range(2):
    hits = np.flatnonzero(free[r] == eos)
    end = hits[0] + 1 if len(hits) else STEPS
    np.testing.assert_array_equal(stopped[r, :end], free[r, :end])  # the EOS is kept
    np.testing.assert_array_equal(stopped[r, end:], 0)
  assert 0 < np.flatnonzero(stopped[0] == eos)[0] < STEPS - 1


def test_one_beam_and_top_k_one_are_greedy(setup):
  model, params, prompts, eos, free = setup
  run = lambda c, eos_ids: causal_lm.generate(model, params, TOKENS, LENGTHS, STEPS, c, prompts,
                                              eos_ids=eos_ids)
  one_beam = DecodingConfig('beam_search', num_beams=1, alpha=0.0)
  np.testing.assert_array_equal(run(one_beam, ()), free)  # no EOS: the live beam is greedy's
  greedy = run(GREEDY, (eos,))
  np.testing.assert_array_equal(run(DecodingConfig('sample', top_k=1, seed=3), (eos,)), greedy)
  # With an EOS, T5X's rule also finishes an EOS ranked second, and a row with a finished beam
  # returns its best: greedy's prefix + EOS, ending no later than greedy itself.
  beam = run(one_beam, (eos,))
  for r in range(2):
    end = list(beam[r]).index(eos)
    np.testing.assert_array_equal(beam[r, :end], greedy[r, :end])
    np.testing.assert_array_equal(beam[r, end + 1:], 0)
    assert eos not in greedy[r] or end <= list(greedy[r]).index(eos)


def test_sampling_is_decided_by_the_rng(setup):
  model, params, prompts, eos, _ = setup
  run = lambda **kw: causal_lm.generate(model, params, TOKENS, LENGTHS, STEPS,
                                        DecodingConfig('sample', **kw), prompts, eos_ids=(eos,))
  first = run(seed=0)
  np.testing.assert_array_equal(first, run(seed=0))
  others = [run(seed=s) for s in (1, 2, 3)]
  assert any(not np.array_equal(first, o) for o in others)
  # An explicit rng wins over the config's seed.
  explicit = causal_lm.generate(model, params, TOKENS, LENGTHS, STEPS, DecodingConfig('sample'),
                                prompts, rng=jax.random.PRNGKey(1), eos_ids=(eos,))
  np.testing.assert_array_equal(explicit, others[0])
  for row in [*others, first]:  # after a row's EOS only padding
    for r in range(2):
      hits = np.flatnonzero(row[r] == eos)
      assert not len(hits) or (row[r, hits[0] + 1:] == 0).all()


BEAM_STEPS = 3
# 2K candidates per step hold every continuation of every prefix: the search is exhaustive.
EXHAUSTIVE = V ** BEAM_STEPS // 2


def _every_ending(eos):
  """Every continuation that ends at its first EOS within BEAM_STEPS tokens."""
  others = [t for t in range(V) if t != eos]
  return [tuple(p) + (eos,) for n in range(BEAM_STEPS) for p in itertools.product(others,
                                                                                  repeat=n)]


def test_beam_search_matches_exhaustive_search(setup):
  model, params, prompts, eos, _ = setup
  tokens, scores = map(np.asarray, causal_lm.beam_search(
      model, params, TOKENS, LENGTHS, BEAM_STEPS, num_beams=EXHAUSTIVE, alpha=0.0,
      prompt=prompts, eos_ids=(eos,)))
  endings = _every_ending(eos)
  assert len(endings) < EXHAUSTIVE  # all of them fit in the finished set
  for r in range(2):
    reference = _continuation_logp(model, params, prompts, [r] * len(endings), endings)
    got = [tuple(t[:list(t).index(eos) + 1]) for t in tokens[r, :len(endings)]]
    # Every ending, once, best first, each scored with its own log-probability (alpha 0).
    assert sorted(got) == sorted(endings)
    expected = dict(zip(endings, reference))
    np.testing.assert_allclose(scores[r, :len(endings)], [expected[g] for g in got], atol=1e-4)
    assert np.all(np.diff(scores[r, :len(endings)]) <= 0)
    assert got[0] == endings[int(np.argmax(reference))]
    np.testing.assert_array_equal(scores[r, len(endings):], -np.inf)  # empty slots
    for t, g in zip(tokens[r], got):
      np.testing.assert_array_equal(t[len(g):], 0)


def test_a_batch_mixing_prompts_equals_each_prompt_alone(setup):
  model, params, prompts, eos, _ = setup
  beam = DecodingConfig('beam_search', num_beams=EXHAUSTIVE, alpha=0.0)
  for config, steps in ((GREEDY, STEPS), (beam, BEAM_STEPS)):
    run = functools.partial(causal_lm.generate, model, params, TOKENS, LENGTHS, steps, config,
                            eos_ids=(eos,))
    mixed = run(prompts)
    for r in range(2):
      alone = run(np.stack([prompts[r], prompts[r]]))  # same shapes: no new program
      np.testing.assert_array_equal(mixed[r], alone[r], err_msg=config.method)
  # A swapped prompt changes the answer: the prompts matter.
  assert not np.array_equal(causal_lm.generate(model, params, TOKENS, LENGTHS, STEPS, GREEDY,
                                               prompts[::-1], eos_ids=()), setup[4])


def test_eos_ids_come_from_the_config_and_bad_input_is_one_line(setup):
  model, params, prompts, _, _ = setup
  assert causal_lm.eos_ids_of(model) == ()
  for eos, ids in ((2, (2,)), ((128001, 128009), (128001, 128009))):
    config = model.config.replace(eos_token_id=eos)
    assert causal_lm.eos_ids_of(decoder_only.DecoderOnly(config)) == ids
  cases = [((TOKENS[0], LENGTHS, STEPS, GREEDY, None), 'tokens: .*shape'),
           ((TOKENS, np.array([4, 5]), STEPS, GREEDY, None), r'lengths: .*1\.\.4'),
           ((TOKENS, LENGTHS, 0, GREEDY, None), 'steps must be >= 1'),
           ((TOKENS, LENGTHS, STEPS, GREEDY, prompts[:1]), r'prompt: .*\[2, P, 32\].*\[1, 2, 32\]'),
           ((TOKENS, LENGTHS, STEPS, GREEDY, prompts[..., :4]), r'prompt: .*got shape'),
           ((TOKENS, LENGTHS, STEPS, DecodingConfig('sample', top_p=0.0), None), 'top_p'),
           ((TOKENS, LENGTHS, STEPS, DecodingConfig('beam_search', num_beams=0), None),
            'num_beams')]
  for args, message in cases:
    with pytest.raises(ValueError, match=message):
      causal_lm.generate(model, params, *args)
  # max_decode_length, when set, is the length (DecodingConfig.generate's rule).
  assert causal_lm.generate(model, params, TOKENS, LENGTHS, STEPS,
                            DecodingConfig(max_decode_length=STEPS), prompts).shape == (2, STEPS)
