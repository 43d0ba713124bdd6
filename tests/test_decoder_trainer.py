"""Prompt-only training of decoder-only models (train/decoder_trainer.py): what changes, PEFT's
CAUSAL_LM prompt tuning step, compiled cost, prompt tables (and shared + task prompts), MODEL_DIR
resume, a (4, 2) mesh. Deep prompts: test_decoder_deep_prompt.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.models import decoder_config, decoder_only
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.train import loop, optim
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train.decoder_trainer import DecoderPromptTrainer
from prompt_tuning.train.trainer import LossConfig

P = 4
KEY = jax.random.PRNGKey(0)
MEAN = LossConfig(z_loss=0.0, loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')


@pytest.fixture(scope='module')
def tiny():
  config = decoder_config.DecoderConfig(dtype='float32')
  return config, decoder_only.init_params(config, jax.random.PRNGKey(1))


def make(config, frozen, optimizer=None, num_prompts=1, placement='prefix', **kw):
  return DecoderPromptTrainer(config, prompt_lib.PromptConfig(P, placement, num_prompts),
                              frozen, optimizer or optim.adafactor(), **kw)


def lm_batch(seed, batch=4, length=12, vocab=256):
  """A prefix-LM batch in SeqIO DecoderFeatureConverter(pack=False) form: BOS + inputs, then
  targets, right padded with 0; loss weights on the targets."""
  rng = np.random.RandomState(seed)
  targets = rng.randint(3, vocab, (batch, length)).astype(np.int32)
  targets[:, 0] = 1
  weights = np.zeros_like(targets)
  for row in range(batch):
    n_inputs, n = 2 + row % 3, length - row % 4
    weights[row, n_inputs:n] = 1
    targets[row, n:] = 0
  inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {'decoder_target_tokens': targets, 'decoder_input_tokens': inputs,
          'decoder_loss_weights': weights}


def prompt_of(shape, seed=0):
  return np.random.RandomState(seed).normal(0, 0.5, shape).astype(np.float32)


def test_only_the_prompt_changes(tiny):
  config, frozen = tiny
  before = jax.tree_util.tree_map(np.array, frozen)
  trainer = make(config, frozen)
  assert trainer.embedding().tobytes() == before['token_embedder']['embedding'].tobytes()
  state = trainer.init_state(prompt_of((P, 64)))
  prompt0 = trainer.prompt(state)
  for i in range(2):
    state, metrics = trainer.train_step(state, lm_batch(i))
  assert not np.array_equal(prompt0, trainer.prompt(state))
  assert set(state.params) == {'encoder'}  # the trainable tree: encoder/prompt/prompt/prompt
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before),
                          jax.tree_util.tree_leaves(trainer.frozen)):
    assert a.tobytes() == np.asarray(b).tobytes(), path
  leaves = jax.tree_util.tree_leaves(state.opt_state)
  assert leaves and all(x.size <= P * 64 for x in leaves), [x.shape for x in leaves]
  # Adafactor: step count, (1,) placeholders for its unused factors, the [P, D] statistic.
  assert all(x.shape in ((), (1,), (P,), (64,), (P, 64)) for x in leaves), [x.shape for x in leaves]
  assert np.isfinite(float(metrics['loss'])) and trainer.trace_count == 1
  info = trainer.run_info()
  assert info['architecture'] == 'decoder_only' and info['model_config']['family'] == 'llama'


def test_bad_configs_and_batches_are_refused_in_one_line(tiny):
  config, frozen = tiny
  with pytest.raises(ValueError, match=r"placement 'suffix' is not one a decoder-only model "
                                       r"takes; choose one of prefix, after_bos"):
    make(config, frozen, placement='suffix')
  with pytest.raises(ValueError, match=r"placement 'after_bos' is for decoder-only models"):
    prompt_lib.Prompt(prompt_lib.PromptConfig(P, 'after_bos')).init(
        KEY, jnp.ones((1, 3), jnp.int32), jnp.zeros((1, 3, 8)))
  trainer = make(config, frozen)
  state = trainer.init_state(prompt_of((P, 64)))
  batch = lm_batch(0)
  weighted_first = {**batch, 'decoder_loss_weights': np.ones_like(batch['decoder_loss_weights'])}
  with pytest.raises(ValueError, match='weighs the first token'):
    trainer.train_step(state, weighted_first)
  with pytest.raises(ValueError, match='not decoder_target_tokens shifted right'):
    trainer.train_step(state, {**batch, 'decoder_input_tokens': batch['decoder_target_tokens']})
  with pytest.raises(ValueError, match=r"missing feature\(s\) \['decoder_loss_weights'\]"):
    trainer.train_step(state, {'decoder_target_tokens': batch['decoder_target_tokens']})
  assert trainer.trace_count == 0


def test_a_target_window_scores_only_the_targets_with_the_same_step(tiny):
  """target_length T: logits at T positions per row, not L - 1; the same loss, metrics and
  prompt update as logits everywhere (a row whose window runs past the end counts each target
  once), fewer FLOPs; a batch whose targets span more than T positions is refused."""
  config, frozen = tiny
  batch = lm_batch(0, length=16)
  weights = np.zeros_like(batch['decoder_loss_weights'])
  weights[0, 3:8] = weights[1, 13:16] = weights[2, 9:15] = 1  # row 1's window is clipped
  batch['decoder_loss_weights'] = weights
  batch['decoder_target_tokens'][:, 9:] = np.maximum(batch['decoder_target_tokens'][:, 9:], 3)
  batch['decoder_input_tokens'][:, 1:] = batch['decoder_target_tokens'][:, :-1]
  runs = {}
  for name, target_length in (('all', None), ('window', 6)):
    trainer = make(config, frozen, optimizer=optax.sgd(1.0), target_length=target_length)
    features = {k: jnp.asarray(batch[k]) for k in ('decoder_target_tokens',
                                                  'decoder_loss_weights')}
    step = trainer.lower_train_step({k: v.shape for k, v in features.items()}).compile()
    state, metrics = step(trainer.init_state(prompt_of((P, 64))), trainer.frozen, features)
    runs[name] = (trainer.prompt(state), jax.device_get(metrics), step.cost_analysis()['flops'])
  np.testing.assert_allclose(runs['window'][0], runs['all'][0], rtol=1e-5, atol=1e-6)
  for key in ('loss', 'accuracy', 'z_loss', 'grad_norm'):
    np.testing.assert_allclose(runs['window'][1][key], runs['all'][1][key], rtol=1e-5)
  # The head's forward and input gradient (2 x 2 D V each) left at 4 rows x (15 - 6) positions.
  assert runs['all'][2] - runs['window'][2] > 0.9 * 4 * 9 * 4 * 64 * 256
  with pytest.raises(ValueError, match=r"row 2 span 6 positions, more than the trainer's "
                                       r"target_length 5 \(the targets feature length\)"):
    trainer = make(config, frozen, target_length=5)
    trainer.train_step(trainer.init_state(prompt_of((P, 64))), batch)


@pytest.mark.parametrize('family', ['llama2_untied_bias', 'gpt2'])
def test_one_step_equals_peft_causal_lm_prompt_tuning(family, tmp_path):
  """One SGD(1) step's update is minus PEFT's prompt gradient on the same model and batch:
  labels -100 except the target positions, transformers' mean loss."""
  peft = pytest.importorskip('peft')
  torch = pytest.importorskip('torch')
  from hf_decoder_reference import make_hf, saved_case
  _, config, params = saved_case(family, str(tmp_path))
  batch = lm_batch(5, length=14)
  prompt0 = prompt_of((P, config.d_model), seed=2)
  trainer = make(config, params, optimizer=optax.sgd(1.0), loss=MEAN)
  state, metrics = trainer.train_step(trainer.init_state(prompt0), batch)
  ours = prompt0 - trainer.prompt(state)

  peft_model = peft.get_peft_model(make_hf(family), peft.PromptTuningConfig(
      task_type='CAUSAL_LM', num_virtual_tokens=P))
  peft_model.eval()  # no dropout; gradients still flow
  table = peft_model.prompt_encoder['default'].embedding.weight
  with torch.no_grad():
    table.copy_(torch.tensor(prompt0))
  tokens = batch['decoder_target_tokens']
  labels = np.where(batch['decoder_loss_weights'] > 0, tokens, -100)
  real = np.cumsum(tokens[:, ::-1] != 0, axis=1)[:, ::-1] > 0  # up to each row's last token
  out = peft_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(real).long(),
                   labels=torch.tensor(labels, dtype=torch.long))
  out.loss.backward()
  ref = table.grad.numpy()
  assert abs(float(metrics['loss']) - out.loss.item()) < 1e-4 * out.loss.item()
  err = float(np.abs(ours - ref).max() / np.abs(ref).max())
  assert err < 1e-4, err


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def test_step_costs_at_most_twice_the_forward():
  """No weight gradient survives compilation: the step is the forward plus the backward to the
  prompt through the activations (~2x); keeping weight gradients costs ~3x."""
  config = decoder_config.DecoderConfig(dtype='float32', d_model=128, d_ff=256, head_dim=32,
                                        vocab_size=2000)
  shapes = decoder_only.param_shapes(config)
  frozen = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  trainer = make(config, shapes)
  features = {'decoder_target_tokens': (8, 33), 'decoder_loss_weights': (8, 33)}
  step = _flops(trainer.lower_train_step(features).compile())
  trainable = prompt_lib.prompt_tree(jnp.zeros((P, 128)))
  batch = {k: jnp.ones(s, jnp.int32) for k, s in features.items()}
  forward = lambda frozen, trainable, b: trainer.batch_loss(trainable, frozen, b, KEY, False)[0]
  fwd = _flops(jax.jit(forward).lower(frozen, trainable, batch).compile())
  all_grads = _flops(jax.jit(jax.grad(forward, argnums=(0, 1))).lower(
      frozen, trainable, batch).compile())
  assert step <= 2.1 * fwd, step / fwd
  assert all_grads >= 2.7 * fwd, all_grads / fwd


def test_table_rows_train_only_their_prompt(tiny):
  """A table of 3 prompts (+ one no row picks): each row's loss gradient reaches its own
  prompt alone, and a mixed step's update of prompt k is a single-prompt step on k's rows
  (summed loss, SGD(1): the update is minus the gradient)."""
  config, frozen = tiny
  table = prompt_of((4, P, 64), seed=4)
  batch = lm_batch(7, batch=6)
  ids = np.array([0, 1, 2, 0, 1, 2], np.int32)
  trainer = make(config, frozen, optimizer=optax.sgd(1.0), num_prompts=4)
  trainable = prompt_lib.prompt_tree(jnp.asarray(table))
  row_grad = jax.jit(jax.grad(lambda t, b: trainer.batch_loss(t, trainer.frozen, b, KEY,
                                                              False)[0]))
  for row in range(6):
    weights = np.zeros_like(batch['decoder_loss_weights'])
    weights[row] = batch['decoder_loss_weights'][row]
    g = np.asarray(prompt_lib.get_prompt(row_grad(
        trainable, {**batch, 'decoder_loss_weights': weights, 'prompt_ids': ids})))
    norms = np.linalg.norm(g.reshape(4, -1), axis=1)
    assert norms[ids[row]] > 1e-3 and np.all(np.delete(norms, ids[row]) == 0), (row, norms)

  state, metrics = trainer.train_step(trainer.init_state(table), {**batch, 'prompt_ids': ids})
  after = trainer.prompt(state)
  single = make(config, frozen, optimizer=optax.sgd(1.0))
  losses_alone = []
  for k in range(3):
    rows = ids == k
    alone, m = single.train_step(single.init_state(table[k]),
                                 {f: v[rows] for f, v in batch.items()})
    losses_alone.append(float(m['loss']))
    np.testing.assert_allclose(table[k] - after[k], table[k] - single.prompt(alone), rtol=0,
                               atol=1e-5, err_msg=str(k))
  assert after[3].tobytes() == table[3].tobytes()
  np.testing.assert_allclose(float(metrics['loss']), sum(losses_alone), rtol=1e-5)


def test_shared_and_task_prompts_train_as_their_effective_table(tiny):
  """A shared + task table (PromptConfig.shared; 'concat', whose length differs from the
  parameters'; 'add' is the same path, combine_shared tested with T5): a mixed-task batch's loss
  is the sum of each task's rows scored with its effective prompt alone (a single-prompt model);
  a step moves the shared prompt and every task's, and `prompt` reads the combined table."""
  config, frozen = tiny
  mode = 'concat'
  table, shared = prompt_of((2, P, 64), seed=5), prompt_of((P, 64), seed=6)
  batch = lm_batch(8, batch=6)
  ids = np.array([1, 0, 0, 1, 1, 0], np.int32)
  trainer = DecoderPromptTrainer(config, prompt_lib.PromptConfig(P, 'after_bos', 2, mode),
                                 frozen, optim.adafactor())
  state = trainer.init_state(table, shared_PxD=shared)
  effective = prompt_lib.combine_shared(shared, table, mode)
  np.testing.assert_array_equal(trainer.prompt(state), effective)
  single = make(config, frozen, placement='after_bos')
  alone_loss = jax.jit(lambda prompt, b: single.batch_loss(prompt_lib.prompt_tree(prompt),
                                                           single.frozen, b, KEY, False)[0])
  alone = 0.0
  for k in range(2):
    weights = np.where((ids == k)[:, None], batch['decoder_loss_weights'], 0)
    alone += float(alone_loss(effective[k], {**batch, 'decoder_loss_weights': weights}))
  state, metrics = trainer.train_step(state, {**batch, 'prompt_ids': ids})
  np.testing.assert_allclose(float(metrics['loss']), alone, rtol=1e-5)
  node = jax.device_get(state.params['encoder']['prompt'])
  assert not np.array_equal(node['shared']['prompt'], shared)
  assert all(not np.array_equal(node['prompt']['prompt'][k], table[k]) for k in range(2))
  np.testing.assert_allclose(trainer.prompt(state), prompt_lib.combine_shared(
      node['shared']['prompt'], node['prompt']['prompt'], mode), rtol=1e-6)
  assert trainer.prompt(state).shape == (2, 2 * P, 64)
  assert trainer.run_info()['prompt_shared'] == mode
  with pytest.raises(ValueError, match=r"shared = 'add' .* needs num_prompts >= 2"):
    DecoderPromptTrainer(config, prompt_lib.PromptConfig(P, shared='add'), frozen,
                         optim.adafactor())


def test_model_dir_resume_is_bit_identical(tiny, tmp_path):
  config, frozen = tiny

  def batches(position):
    while True:
      yield lm_batch(100 + position)
      position += 1

  def run(model_dir, steps):
    return loop.train(make(config, frozen, placement='after_bos'), batches, str(model_dir),
                      steps, prompt_init=prompt_init.random_uniform(0.5), seed=3, save_every=2,
                      keep=2)

  straight = run(tmp_path / 'straight', 4)
  run(tmp_path / 'resumed', 2)
  resumed = run(tmp_path / 'resumed', 4)
  a, b = (np.asarray(prompt_lib.get_prompt(s.params)) for s in (straight, resumed))
  assert a.tobytes() == b.tobytes() and int(resumed.step) == 4
  saved, step = model_dir_lib.load_prompt(str(tmp_path / 'resumed'))
  assert step == 4 and saved.dtype == np.float32 and saved.tobytes() == b.tobytes()
  info = model_dir_lib.read_run_info(str(tmp_path / 'resumed'))
  assert info['placement'] == 'after_bos' and info['architecture'] == 'decoder_only'
  # A T5 run's run_info (no "architecture") cannot resume it, nor it a T5 run's.
  t5_info = {k: v for k, v in info.items() if k != 'architecture'}
  with pytest.raises(model_dir_lib.RunMismatchError,
                     match="architecture: saved 'decoder_only', requested 'encoder_decoder'"):
    model_dir_lib.check_run_info(str(tmp_path / 'resumed'), t5_info, write=False)


def test_mesh_step_equals_one_device(eight_devices):
  result = eight_devices('decoder_train_mesh_worker.py')
  assert result['prompt_gap'] < 1e-5, result
  assert result['loss_gap'] < 1e-5, result
  assert result['embedding_shard'] == [128, 64], result  # vocab split over 'model'
