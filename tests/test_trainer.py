"""Prompt-only training: what changes, what is compiled, resume, divergence, bad input; prompt
tables."""

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import checkpoints
from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.models import t5
from prompt_tuning.train import losses, loop, optim, state as state_lib
from prompt_tuning.testing import synthetic_batch
from train_fixtures import batches, make_trainer


@pytest.fixture(scope='module')
def model():
  config = t5.T5Config.preset('tiny', dtype='float32', dropout_rate=0.1)
  return config, t5.init_params(config)


def uniform_init(rng, shape):
  return prompt_init.random_uniform(0.5)(rng, shape)


def test_only_the_prompt_changes(model):
  config, frozen = model
  before = jax.tree_util.tree_map(np.array, frozen)
  trainer = make_trainer(config, frozen)
  state = trainer.init_state(np.random.RandomState(0).uniform(-0.5, 0.5, (5, 32)))
  prompt0 = np.array(prompt_lib.get_prompt(state.params))
  for i in range(2):
    state, metrics = trainer.train_step(state, synthetic_batch(i))
  assert not np.array_equal(prompt0, np.asarray(prompt_lib.get_prompt(state.params)))
  for tree in (frozen, trainer.frozen):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before),
                            jax.tree_util.tree_leaves(tree)):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
  # Optimizer state exists for the prompt alone.
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
    names = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
    assert leaf.size <= 5 * 32, (names, leaf.shape)
    if any(n in ('encoder', 'decoder', 'token_embedder') for n in names):
      assert 'prompt' in names, names
  assert set(metrics) >= {'loss', 'loss_per_token', 'accuracy', 'z_loss', 'prompt_norm'}
  assert trainer.trace_count == 1


def test_each_new_batch_shape_compiles_once_and_is_logged(tiny, caplog):
  config, params = tiny
  frozen, _ = prompt_lib.split_params(params)
  trainer = make_trainer(config, frozen)
  state = trainer.init_state(np.zeros(trainer.prompt_shape))
  with caplog.at_level(logging.INFO, logger='prompt_tuning'):
    for inputs in (12, 16, 12, 16):  # two buckets, each seen twice
      state, _ = trainer.train_step(state, synthetic_batch(0, inputs=inputs))
  assert trainer.trace_count == 2
  compiles = [r.getMessage() for r in caplog.records if 'Compiling the train step' in r.message]
  assert compiles == ['Compiling the train step for inputs 12, targets 4 (batch 8; compilation 1).',
                      'Compiling the train step for inputs 16, targets 4 (batch 8; compilation 2).']


def test_no_frozen_weight_gradient_work_survives_compilation():
  # Wide enough that matmuls, not vocab-sized elementwise work, dominate (as in real sizes).
  config = t5.T5Config.preset('tiny', dtype='float32', d_model=128, d_ff=256, head_dim=32,
                              vocab_size=2000)
  shapes = jax.eval_shape(lambda: t5.init_params(config))
  frozen = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  trainer = make_trainer(config, frozen)
  feature_shapes = {'encoder_input_tokens': (8, 32), 'decoder_input_tokens': (8, 8),
                    'decoder_target_tokens': (8, 8)}
  step_flops = _flops(trainer.lower_train_step(feature_shapes).compile())
  full = prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(jnp.zeros((5, 128))))
  batch = {k: jnp.ones(s, jnp.int32) for k, s in feature_shapes.items()}

  def forward_loss(params, b):
    logits = trainer.model.apply({'params': params}, b['encoder_input_tokens'],
                                 b['decoder_input_tokens'], b['decoder_target_tokens'])
    return losses.cross_entropy_loss(logits, b['decoder_target_tokens'],
                                     jnp.ones(b['decoder_target_tokens'].shape))[0]

  fwd_flops = _flops(jax.jit(forward_loss).lower(full, batch).compile())
  all_grad_flops = _flops(jax.jit(jax.grad(forward_loss)).lower(full, batch).compile())
  assert step_flops <= 2.1 * fwd_flops, step_flops / fwd_flops
  # The measurement can tell the difference: keeping weight gradients costs ~3x.
  assert all_grad_flops >= 2.7 * fwd_flops, all_grad_flops / fwd_flops


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def test_resume_is_bit_identical(model, tmp_path):
  config, frozen = model

  def run(model_dir, steps):
    trainer = make_trainer(config, frozen)
    return loop.train(trainer, lambda pos: batches(pos), str(model_dir), steps,
                      prompt_init=uniform_init, seed=3, save_every=2, keep=2)

  straight = run(tmp_path / 'straight', 4)
  run(tmp_path / 'resumed', 2)
  resumed = run(tmp_path / 'resumed', 4)
  a = np.asarray(prompt_lib.get_prompt(straight.params))
  b = np.asarray(prompt_lib.get_prompt(resumed.params))
  assert a.tobytes() == b.tobytes()
  assert int(resumed.step) == 4
  # The anchor's numpy checkpoints, float32, next to the small orbax state.
  saved = np.load(model_dir_lib.numpy_prompt_path(str(tmp_path / 'resumed'), 4))
  assert saved.dtype == np.float32 and saved.tobytes() == b.tobytes()
  assert os.path.exists(model_dir_lib.numpy_prompt_path(str(tmp_path / 'resumed'), 0))


def test_checkpoint_is_prompt_sized(model, tmp_path):
  config, frozen = model
  trainer = make_trainer(config, frozen)
  loop.train(trainer, lambda pos: batches(pos), str(tmp_path), 2, prompt_init=uniform_init,
             save_every=2)
  size = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(tmp_path / 'checkpoints') for f in files)
  model_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(frozen))
  assert size < 200_000 < model_bytes, (size, model_bytes)


def test_interrupted_save_leaves_previous_checkpoint_usable(model, tmp_path):
  config, frozen = model
  trainer = make_trainer(config, frozen)
  loop.train(trainer, lambda pos: batches(pos), str(tmp_path), 2, prompt_init=uniform_init,
             save_every=2)
  # What a crash during orbax's save of step 4 leaves behind: an uncommitted temporary dir.
  partial = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-1234'
  partial.mkdir()
  (partial / 'garbage').write_bytes(b'\0' * 10)
  ckpt = state_lib.PromptCheckpointer(str(tmp_path))
  assert ckpt.latest_step() == 2
  state, meta = ckpt.restore(trainer.abstract_state())
  assert int(state.step) == 2 and meta['data_position'] == 2


def test_model_dir_of_another_run_is_refused_untouched(model, tmp_path):
  config, frozen = model
  loop.train(make_trainer(config, frozen), lambda pos: batches(pos), str(tmp_path), 2,
             prompt_init=uniform_init, save_every=2)
  before = _snapshot(tmp_path)
  other = make_trainer(config, frozen, prompt_length=7)
  with pytest.raises(model_dir_lib.RunMismatchError,
                     match=r'holds a different prompt-tuning run \(prompt_length: saved 5, '
                           r'requested 7\).*nothing was changed'):
    loop.train(other, lambda pos: batches(pos), str(tmp_path), 4, prompt_init=uniform_init)
  assert _snapshot(tmp_path) == before


def _snapshot(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      out[os.path.relpath(p, root)] = open(p, 'rb').read()
  return out


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(model, tmp_path):
  config, frozen = model
  # A learning rate that turns NaN from the 4th update on (optimizer count 3).
  bad_lr = lambda count: jnp.where(count >= 3, jnp.nan, 0.3)
  trainer = make_trainer(config, frozen, optimizer=optim.adafactor(learning_rate=bad_lr))
  with pytest.raises(loop.TrainingDivergedError,
                     match=r'at step 4; stopped without saving. The last good checkpoint is '
                           r'step 2'):
    loop.train(trainer, lambda pos: batches(pos), str(tmp_path), 10,
               prompt_init=uniform_init, save_every=2, check_every=1)
  ckpt = state_lib.PromptCheckpointer(str(tmp_path))
  assert ckpt.latest_step() == 2
  state, _ = ckpt.restore(trainer.abstract_state())
  assert np.isfinite(np.asarray(prompt_lib.get_prompt(state.params))).all()
  assert np.isfinite(np.load(model_dir_lib.numpy_prompt_path(str(tmp_path), 2))).all()


def test_wrong_prompt_shape_is_refused(model):
  config, frozen = model
  trainer = make_trainer(config, frozen)
  with pytest.raises(ValueError, match=r'Initial prompt has shape \(5, 16\) but the model '
                                       r'expects \(5, 32\)'):
    trainer.init_state(np.zeros((5, 16)))


def test_packed_batches_are_refused(model):
  config, frozen = model
  trainer = make_trainer(config, frozen)
  state = trainer.init_state(np.zeros((5, 32)))
  batch = {**synthetic_batch(0), 'encoder_segment_ids': np.ones((8, 12), np.int32)}
  with pytest.raises(ValueError, match='Packed examples .*encoder_segment_ids.* not supported'):
    trainer.train_step(state, batch)


def test_frozen_weights_can_be_bfloat16(model):
  config, frozen = model
  trainer = make_trainer(config, frozen, frozen_dtype='bfloat16')
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(trainer.frozen))
  state = trainer.init_state(np.zeros((5, 32)))
  state, metrics = trainer.train_step(state, synthetic_batch(0))
  assert np.isfinite(float(metrics['loss']))
  assert prompt_lib.get_prompt(state.params).dtype == jnp.float32


def test_missing_base_checkpoint(tmp_path):
  missing = str(tmp_path / 'lm100k')
  with pytest.raises(checkpoints.CheckpointError,
                     match=rf'base checkpoint \(INITIAL_CHECKPOINT_PATH\): {missing}: no such'):
    checkpoints.load_base(missing)
  with pytest.raises(ValueError, match='set INITIAL_CHECKPOINT_PATH'):
    checkpoints.load_base(None)


def test_prompt_file_of_wrong_shape_writes_nothing(model, tmp_path):
  config, frozen = model
  bad = tmp_path / 'prompt.npy'
  np.save(bad, np.zeros((5, 16), np.float32))
  model_dir = tmp_path / 'run'
  with pytest.raises(ValueError, match=r'prompt.npy.*\(5, 16\).*\(5, 32\)'):
    loop.train(make_trainer(config, frozen), lambda pos: batches(pos), str(model_dir), 2,
               prompt_init=prompt_init.from_file(str(bad)))
  assert not model_dir.exists()


# ----------------------------------------------------------------------------------------------
# A prompt table: K prompts trained in one step, each row steering by its prompt_ids entry.


def test_table_step_gradients_equal_single_prompt_steps(tiny):
  """Prompt k's gradient in a mixed step is a K = 1 step's gradient on prompt k's rows alone.

  The loss is T5X's default, a sum over tokens (no normalising factor), so this holds exactly.
  With a normalising factor such as NUM_REAL_TARGET_TOKENS the mixed step divides by the whole
  batch's tokens and each alone step by its own rows', so they differ by tokens_k / tokens_all.

  Gradients are read from SGD steps of rate 1 (the update is minus the gradient). The table's
  SGD follows a global-norm clip that each prompt's gradient passes but the whole table's would
  not: the updates stay the gradients only because the optimizer sees each prompt on its own.
  """
  config, frozen = tiny
  table = np.random.RandomState(0).uniform(-0.5, 0.5, (4, 5, 32)).astype(np.float32)
  batch = synthetic_batch(0, batch=6)
  ids = np.array([0, 1, 2, 0, 1, 2], np.int32)  # prompt 3 steers no row
  single = make_trainer(config, frozen, optimizer=optax.sgd(1.0))
  grads, losses_alone = [], []
  for k in range(3):
    rows = ids == k
    alone, m = single.train_step(single.init_state(table[k]),
                                 {f: v[rows] for f, v in batch.items()})
    grads.append(table[k] - single.prompt(alone))
    losses_alone.append(float(m['loss']))
  norms = np.array([np.linalg.norm(g) for g in grads])
  clip = 1.01 * norms.max()
  assert norms.min() > 1e-3 and np.linalg.norm(norms) > 1.1 * clip, norms
  sgd = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(1.0))
  trainer = make_trainer(config, frozen, optimizer=sgd, num_prompts=4)
  state, metrics = trainer.train_step(trainer.init_state(table), {**batch, 'prompt_ids': ids})
  after = trainer.prompt(state)
  for k in range(3):
    np.testing.assert_allclose(table[k] - after[k], grads[k], rtol=0, atol=1e-5, err_msg=str(k))
  assert after[3].tobytes() == table[3].tobytes()  # no row, no gradient
  np.testing.assert_allclose(float(metrics['loss']), sum(losses_alone), rtol=1e-5)
  assert trainer.trace_count == 1 and single.trace_count == 1


def test_one_prompt_step_is_unchanged_by_zero_prompt_ids(tiny):
  config, frozen = tiny
  trainer = make_trainer(config, frozen)
  prompt = np.random.RandomState(1).uniform(-0.5, 0.5, (5, 32))
  batch = synthetic_batch(0)
  plain, plain_metrics = trainer.train_step(trainer.init_state(prompt), batch)
  with_ids, metrics = trainer.train_step(trainer.init_state(prompt),
                                         {**batch, 'prompt_ids': np.zeros(8, np.int32)})
  assert trainer.prompt(plain).shape == (5, 32)
  assert trainer.prompt(plain).tobytes() == trainer.prompt(with_ids).tobytes()
  assert {k: float(v) for k, v in plain_metrics.items()} == \
      {k: float(v) for k, v in metrics.items()}
  assert trainer.trace_count == 1  # the very same compiled step: K = 1 drops the ids


def test_table_step_costs_what_one_prompt_costs():
  """The table adds a gather and its scatter-add, not work per prompt: at the same batch a step
  over 8 prompts compiles to at most 1.02x the FLOPs of a single prompt's."""
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=2000)
  shapes = t5.param_shapes(config)  # abstract: nothing allocated
  features = {'encoder_input_tokens': (8, 32), 'decoder_input_tokens': (8, 8),
              'decoder_target_tokens': (8, 8)}
  one = _flops(make_trainer(config, shapes).lower_train_step(features).compile())
  table = _flops(make_trainer(config, shapes, num_prompts=8).lower_train_step(
      {**features, 'prompt_ids': (8,)}).compile())
  assert one > 0 and table <= 1.02 * one, table / one


def test_prompt_table_bad_input_is_named_before_compiling(tiny):
  config, frozen = tiny
  trainer = make_trainer(config, frozen, num_prompts=3)
  assert trainer.prompt_shape == (3, 5, 32)
  for shape in ((2, 5, 32), (5, 32)):
    with pytest.raises(ValueError, match=rf'Initial prompt table has shape '
                                         rf'{re.escape(str(shape))} but the model expects '
                                         r'\(3, 5, 32\) \(num_prompts, prompt length, d_model\)'):
      trainer.init_state(np.zeros(shape))
  state = trainer.init_state(np.zeros((3, 5, 32)))
  batch = synthetic_batch(0)
  with pytest.raises(ValueError, match=r'table of 3 prompts .*prompt_ids'):
    trainer.train_step(state, batch)
  bad = {**batch, 'prompt_ids': np.array([0, 1, 2, 3, 0, 1, 2, 0], np.int32)}
  for step in (trainer.train_step, trainer.eval_step):
    with pytest.raises(ValueError, match=r'prompt id 3 \(row 3\) is out of range: the model '
                                         r'holds 3 prompt\(s\)'):
      step(state, bad)
  one = make_trainer(config, frozen)
  with pytest.raises(ValueError, match=r'prompt id 1 \(row 0\).*holds 1 prompt\(s\)'):
    one.train_step(one.init_state(np.zeros((5, 32))), {**batch, 'prompt_ids': np.ones(8, int)})
  assert trainer.trace_count == 0 and one.trace_count == 0
