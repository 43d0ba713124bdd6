"""Deep (per-layer, P-tuning v2 style) prompts: PromptConfig.deep. Not the paper's method.

The parameter encoder/prompt/deep/prompt [L-1, P, D] and its axes; deep=False unchanged (logits
recorded before deep prompts existed); what each encoder layer sees at the prompt positions
(prefix and suffix, rows of different lengths); gradients; training, save/restore and resume;
numpy checkpoints, load_deep_prompt and repair; bad settings; gin/prompts/deep.gin.
"""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import repair as repair_lib
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5
from prompt_tuning.train import loop, optim, partitioning
from prompt_tuning.train import state as state_lib
from prompt_tuning.train.trainer import PromptTrainer
from prompt_tuning.testing import synthetic_batch
from train_fixtures import batches

P, D, LAYERS = 3, 32, 3  # deep prompts [LAYERS - 1, P, D]
CONFIG = t5.T5Config.preset('tiny', dtype='float32', vocab_size=256, num_encoder_layers=LAYERS)
# Real tokens, then pads; each row's last real token is its EOS (1).
ENC = np.array([[5, 6, 7, 8, 9, 1],   # full
                [5, 6, 1, 0, 0, 0],   # n = 3
                [1, 0, 0, 0, 0, 0]],  # EOS alone
               np.int32)
DEC = np.array([[0, 3, 4], [0, 5, 0], [0, 7, 8]], np.int32)
TGT = np.array([[3, 4, 1], [5, 1, 0], [7, 8, 1]], np.int32)  # DEC's targets (EOS, pad)
B, L = ENC.shape


def prompt_positions(placement, tokens=ENC):
  """Each row's prompt positions in the combined sequence, written plainly."""
  out = []
  for row in tokens:
    start = 0 if placement == 'prefix' else max(int(np.sum(row > 0)) - 1, 0)
    out.append(list(range(start, start + P)))
  return out


def deep_config(placement='prefix'):
  return prompt_lib.PromptConfig(P, placement, deep=True)


@pytest.fixture(scope='module')
def params():
  """{placement: deep model params} with distinct deep rows (and unlike the input prompt)."""
  out = {}
  for placement in prompt_lib.PLACEMENTS:
    p = t5.init_params(CONFIG, jax.random.PRNGKey(0), prompt=deep_config(placement))
    deep = 10.0 + np.arange((LAYERS - 1) * P * D, dtype=np.float32).reshape(LAYERS - 1, P, D) / 97
    out[placement] = prompt_lib.merge_params(prompt_lib.split_params(p)[0], prompt_lib.prompt_tree(
        np.asarray(prompt_lib.get_prompt(prompt_lib.split_params(p)[1])), deep))
  return out


def logits_of(params, placement, enc=ENC, dec=DEC, tgt=TGT):
  model = t5.EncoderDecoder(CONFIG, deep_config(placement))
  return np.asarray(jax.jit(lambda p: model.apply({'params': p}, enc, dec, tgt))(params))


# ----------------------------------------------------------------------------------------------
# The parameter.


def test_deep_parameter_path_shape_and_axes():
  config = deep_config()
  shapes = t5.param_shapes(CONFIG, config)
  node = shapes['encoder']['prompt']
  assert set(node) == {'prompt', 'deep'}
  assert node['prompt']['prompt'].shape == (P, D)
  assert node['deep']['prompt'].shape == (LAYERS - 1, P, D) == config.deep_shape(LAYERS, D)
  assert node['deep']['prompt'].dtype == jnp.float32
  axes = t5.logical_axes(CONFIG, config)['encoder']['prompt']
  assert tuple(axes['deep']['prompt']) == prompt_lib.DEEP_AXES == (
      'prompt_layers', 'prompt', 'prompt_embed')
  assert tuple(axes['prompt']['prompt']) == prompt_lib.PROMPT_AXES
  assert ('prompt_layers', None) in partitioning.PROMPT_RULES
  # Replicated on a mesh, like the input prompt.
  mesh = partitioning.make_mesh()
  sharding = partitioning.logical_to_sharding(axes, mesh,
                                              partitioning.standard_logical_axis_rules())
  assert sharding['deep']['prompt'].is_fully_replicated
  # deep=False: no second parameter; the rest of the tree is the same either way.
  plain = t5.param_shapes(CONFIG, prompt_lib.PromptConfig(P))
  assert set(plain['encoder']['prompt']) == {'prompt'}
  frozen_deep, _ = prompt_lib.split_params(shapes)
  frozen_plain, _ = prompt_lib.split_params(plain)
  assert jax.tree_util.tree_structure(frozen_deep) == jax.tree_util.tree_structure(frozen_plain)


def test_deep_init_leaves_every_other_parameter_as_without_it():
  deep = t5.init_params(CONFIG, jax.random.PRNGKey(1), prompt=deep_config('suffix'))
  plain = t5.init_params(CONFIG, jax.random.PRNGKey(1), prompt=prompt_lib.PromptConfig(P, 'suffix'))
  del deep['encoder']['prompt']['deep']
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(deep),
                          jax.tree_util.tree_leaves(plain)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path


# Logits [:, :, :2] of the deep=False model below, recorded (float32, CPU) with the code before
# deep prompts existed. A difference means deep=False changed the model. (Its compiled HLO was
# checked identical as well.) After a jax/XLA upgrade alone they may need recording again.
_BEFORE = {
    'prefix': ['0x1.81116cp+0', '-0x1.15e7bap-1', '0x1.1f7d4p-1', '-0x1.2a2496p-4',
               '0x1.1810f2p-1', '0x1.d9f192p-1', '0x1.c80894p+0', '-0x1.18194p+0',
               '0x1.138b0ep+0', '-0x1.5cc38cp+0', '0x1.c80894p+0', '-0x1.18194p+0',
               '0x1.3006cap+0', '-0x1.aecee6p-3', '0x1.af0808p+0', '-0x1.1c2dc6p+1',
               '-0x1.8674dcp-5', '-0x1.a4c612p+0'],
    'suffix': ['0x1.843a86p+0', '-0x1.2da26cp-1', '0x1.38202ap-1', '-0x1.257b8p-3',
               '0x1.ffdc96p-2', '0x1.cbae18p-1', '0x1.c34224p+0', '-0x1.205d9ap+0',
               '0x1.04f332p+0', '-0x1.712106p+0', '0x1.c34224p+0', '-0x1.205d9ap+0',
               '0x1.3006cap+0', '-0x1.aecee6p-3', '0x1.af0808p+0', '-0x1.1c2dc6p+1',
               '-0x1.8674dcp-5', '-0x1.a4c612p+0'],
}


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_deep_false_logits_are_bit_identical_to_before(placement):
  config = prompt_lib.PromptConfig(P, placement, deep=False)
  params = t5.init_params(CONFIG, jax.random.PRNGKey(0), prompt=config)
  model = t5.EncoderDecoder(CONFIG, config)
  logits = np.asarray(jax.jit(lambda p: model.apply({'params': p}, ENC, DEC, DEC))(params))
  expected = np.array([float.fromhex(v) for v in _BEFORE[placement]], np.float32)
  got = logits[:, :, :2].reshape(-1)
  assert got.tobytes() == expected.tobytes(), np.max(np.abs(got - expected))


# ----------------------------------------------------------------------------------------------
# What each layer sees.


def test_replace_prompt_positions_against_a_plain_reference():
  rng = np.random.RandomState(0)
  x = rng.normal(size=(B, L + P, D)).astype(np.float32)
  value = rng.normal(size=(P, D)).astype(np.float32)
  tokens = np.concatenate([ENC, np.zeros((1, L), np.int32)])  # and a fully padded row
  x = np.concatenate([x, rng.normal(size=(1, L + P, D)).astype(np.float32)])
  for placement in prompt_lib.PLACEMENTS:
    config = prompt_lib.PromptConfig(P, placement)
    out = np.asarray(prompt_lib.replace_prompt_positions(jnp.asarray(x), jnp.asarray(tokens),
                                                         jnp.asarray(value), config))
    for b, slots in enumerate(prompt_positions(placement, tokens)):
      expected = x[b].copy()
      expected[slots] = value
      np.testing.assert_array_equal(out[b], expected, err_msg=f'{placement} row {b}')
  # The slots are where the placement put the input prompt, in every row.
  for placement in prompt_lib.PLACEMENTS:
    combined = prompt_lib.PromptConfig(P, placement).module(jnp.float32, 'p').apply(
        {'params': {'prompt': {'prompt': value}}}, jnp.asarray(tokens),
        jnp.asarray(x[:, :L]))
    replaced = prompt_lib.replace_prompt_positions(jnp.asarray(x), jnp.asarray(tokens),
                                                   jnp.asarray(value),
                                                   prompt_lib.PromptConfig(P, placement))
    for b, slots in enumerate(prompt_positions(placement, tokens)):
      np.testing.assert_array_equal(np.asarray(combined)[b, slots], value)
      np.testing.assert_array_equal(np.asarray(replaced)[b, slots], value)


def layer_inputs(params, placement):
  """The hidden states entering each encoder layer [L][B, L + P, D], and each layer's output."""
  inputs, outputs = {}, {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, t5.EncoderLayer) and context.method_name == '__call__':
      i = int(context.module.name.split('_')[-1])
      inputs[i], outputs[i] = np.asarray(args[0]), np.asarray(out)
    return out

  model = t5.EncoderDecoder(CONFIG, deep_config(placement))
  with nn.intercept_methods(record):
    model.apply({'params': params}, ENC, method=model.encode)
  return [inputs[i] for i in range(LAYERS)], [outputs[i] for i in range(LAYERS)]


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_each_layer_after_the_first_sees_its_deep_prompt_at_the_prompt_positions(params,
                                                                                 placement):
  p = params[placement]
  deep = np.asarray(p['encoder']['prompt']['deep']['prompt'])
  prompt = np.asarray(p['encoder']['prompt']['prompt']['prompt'])
  inputs, outputs = layer_inputs(p, placement)
  for b, slots in enumerate(prompt_positions(placement)):
    others = [j for j in range(L + P) if j not in slots]
    np.testing.assert_array_equal(inputs[0][b, slots], prompt)  # layer 0: the input prompt
    for i in range(1, LAYERS):
      np.testing.assert_array_equal(inputs[i][b, slots], deep[i - 1], err_msg=f'layer {i}')
      # Every other position (real tokens and padding) is the previous layer's output.
      np.testing.assert_array_equal(inputs[i][b, others], outputs[i - 1][b, others])
      assert not np.allclose(outputs[i - 1][b, slots], deep[i - 1])  # a real replacement


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_every_deep_row_matters_and_rows_do_not_see_each_others_padding(params, placement):
  p = params[placement]
  base = logits_of(p, placement)
  for i in range(LAYERS - 1):
    changed = jax.tree_util.tree_map(np.array, p)
    changed['encoder']['prompt']['deep']['prompt'][i] += 1.0
    assert not np.allclose(logits_of(changed, placement), base, atol=1e-4), f'deep[{i}]'
  for b in range(B):  # each row alone, with no more padding than it needs
    n = max(int(np.sum(ENC[b] > 0)), 1)
    alone = logits_of(p, placement, ENC[b:b + 1, :n], DEC[b:b + 1], TGT[b:b + 1])
    real = TGT[b] > 0  # (a pad target's query attends to nothing real)
    np.testing.assert_allclose(alone[0][real], base[b][real], rtol=1e-5, atol=1e-5,
                               err_msg=f'row {b}')


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_gradient_reaches_every_deep_row(params, placement):
  frozen, trainable = prompt_lib.split_params(params[placement])
  model = t5.EncoderDecoder(CONFIG, deep_config(placement))

  def loss(t):
    return jnp.sum(model.apply({'params': prompt_lib.merge_params(frozen, t)}, ENC, DEC,
                               TGT) ** 2)

  grads = jax.jit(jax.grad(loss))(trainable)
  deep_grad = np.asarray(prompt_lib.get_deep_prompt(grads))
  assert deep_grad.shape == (LAYERS - 1, P, D) and np.isfinite(deep_grad).all()
  for i in range(LAYERS - 1):
    assert np.abs(deep_grad[i]).max() > 0, i
  assert np.abs(np.asarray(prompt_lib.get_prompt(grads))).max() > 0


# ----------------------------------------------------------------------------------------------
# Training, checkpoints, MODEL_DIR.


@pytest.fixture(scope='module')
def frozen():
  return prompt_lib.split_params(t5.init_params(CONFIG, prompt=deep_config()))[0]


def deep_trainer(frozen, deep=True):
  return PromptTrainer(CONFIG, prompt_lib.PromptConfig(P, deep=deep), frozen, optim.adafactor())


def test_init_state_defaults_checks_and_reads_the_deep_prompts(frozen):
  trainer = deep_trainer(frozen)
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (P, D)).astype(np.float32)
  state = trainer.init_state(prompt)
  assert trainer.deep_shape == (LAYERS - 1, P, D)
  np.testing.assert_array_equal(trainer.deep_prompt(state), np.stack([prompt] * (LAYERS - 1)))
  np.testing.assert_array_equal(trainer.prompt(state), prompt)  # the input prompt only
  assert np.asarray(prompt_lib.get_prompt(state.params)).shape == (P, D)
  given = np.arange((LAYERS - 1) * P * D, dtype=np.float32).reshape(LAYERS - 1, P, D)
  state = trainer.init_state(prompt, deep_LxPxD=given)
  assert trainer.deep_prompt(state).dtype == np.float32
  np.testing.assert_array_equal(trainer.deep_prompt(state), given)
  with pytest.raises(ValueError, match=r'Initial deep prompts have shape \(3, 3, 32\) but the '
                                       r'model expects \(2, 3, 32\) \(encoder layers - 1'):
    trainer.init_state(prompt, deep_LxPxD=np.zeros((3, P, D)))
  plain = deep_trainer(frozen, deep=False)
  assert plain.deep_shape is None and plain.deep_prompt(plain.init_state(prompt)) is None
  with pytest.raises(ValueError, match=r'deep prompts were given but the model has none'):
    plain.init_state(prompt, deep_LxPxD=given)


def test_two_steps_save_restore_resume_bit_exactly(frozen, tmp_path):
  trainer = deep_trainer(frozen)
  prompt = np.random.RandomState(1).uniform(-0.5, 0.5, (P, D)).astype(np.float32)
  state = trainer.init_state(prompt, seed=3)
  deep0 = trainer.deep_prompt(state)
  for i in range(2):
    state, _ = trainer.train_step(state, synthetic_batch(i))
  deep2 = trainer.deep_prompt(state)
  assert not np.array_equal(deep2, deep0)  # the deep prompts trained,
  assert not np.array_equal(deep2[0], deep2[1])  # each layer's its own way
  model_dir = str(tmp_path / 'run')
  ckpt = state_lib.PromptCheckpointer(model_dir)
  try:
    assert ckpt.save(state, data_position=2) == 2
  finally:
    ckpt.close()
  straight = state
  for i in (2, 3):
    straight, _ = trainer.train_step(straight, synthetic_batch(i))

  fresh = deep_trainer(frozen)
  reader = state_lib.PromptCheckpointer(model_dir, read_only=True)
  try:
    resumed, meta = reader.restore(fresh.abstract_state())
  finally:
    reader.close()
  assert meta['data_position'] == 2
  assert fresh.deep_prompt(resumed).tobytes() == deep2.tobytes()
  for i in (2, 3):
    resumed, _ = fresh.train_step(resumed, synthetic_batch(i))
  assert fresh.deep_prompt(resumed).tobytes() == trainer.deep_prompt(straight).tobytes()
  assert fresh.prompt(resumed).tobytes() == trainer.prompt(straight).tobytes()
  # The step's numpy checkpoint holds both arrays, float32.
  saved = np.load(model_dir_lib.numpy_deep_path(model_dir, 2))
  assert saved.dtype == np.float32 and saved.tobytes() == deep2.tobytes()
  assert os.path.basename(model_dir_lib.numpy_deep_path(model_dir, 2)) == (
      'encoder.prompt.deep.prompt')
  assert np.load(model_dir_lib.numpy_prompt_path(model_dir, 2)).shape == (P, D)


def _save(trainer, model_dir, step, seed):
  rng = np.random.RandomState(seed)
  state = trainer.init_state(rng.uniform(-0.5, 0.5, (P, D)), step=step,
                             deep_LxPxD=rng.uniform(-0.5, 0.5, trainer.deep_shape))
  ckpt = state_lib.PromptCheckpointer(model_dir, keep=None)
  try:
    ckpt.save(state, data_position=step)
  finally:
    ckpt.close()
  return trainer.prompt(state), trainer.deep_prompt(state)


def test_load_deep_prompt_reads_only_committed_steps_and_falls_back_to_orbax(frozen, tmp_path):
  trainer = deep_trainer(frozen)
  model_dir = str(tmp_path)
  _, deep1 = _save(trainer, model_dir, 1, seed=1)
  prompt2, deep2 = _save(trainer, model_dir, 2, seed=2)
  # A save a kill cut short after its numpy files: step 3 is not committed.
  model_dir_lib.write_numpy_prompt(model_dir, 3, np.zeros((P, D)), np.zeros(trainer.deep_shape))
  assert model_dir_lib.load_deep_prompt(model_dir).tobytes() == deep2.tobytes()
  assert model_dir_lib.load_deep_prompt(model_dir, 1).tobytes() == deep1.tobytes()
  prompt, step = model_dir_lib.load_prompt(model_dir)
  assert step == 2 and prompt.tobytes() == prompt2.tobytes()  # the input prompt alone
  with pytest.raises(model_dir_lib.ModelDirError, match=r'no prompt for step 3; available: '
                                                        r'\[1, 2\]'):
    model_dir_lib.load_deep_prompt(model_dir, 3)
  # Without its numpy folder, the committed orbax step answers.
  shutil.rmtree(os.path.dirname(model_dir_lib.numpy_deep_path(model_dir, 2)))
  deep = model_dir_lib.load_deep_prompt(model_dir, 2)
  assert deep.dtype == np.float32 and deep.tobytes() == deep2.tobytes()


def test_non_deep_runs_have_no_deep_prompt(frozen, tmp_path):
  plain = deep_trainer(frozen, deep=False)
  model_dir = str(tmp_path)
  state = plain.init_state(np.ones((P, D)), step=4)
  ckpt = state_lib.PromptCheckpointer(model_dir)
  try:
    ckpt.save(state, data_position=0)
  finally:
    ckpt.close()
  assert not os.path.exists(model_dir_lib.numpy_deep_path(model_dir, 4))
  assert model_dir_lib.load_deep_prompt(model_dir) is None
  shutil.rmtree(os.path.dirname(model_dir_lib.numpy_prompt_path(model_dir, 4)))
  assert model_dir_lib.load_deep_prompt(model_dir, 4) is None  # read from orbax: none there


def test_repair_rewrites_a_missing_deep_file(frozen, tmp_path):
  trainer = deep_trainer(frozen)
  model_dir = str(tmp_path)
  model_dir_lib.check_run_info(model_dir, loop.run_info(trainer))
  prompt1, deep1 = _save(trainer, model_dir, 1, seed=1)
  prompt2, deep2 = _save(trainer, model_dir, 2, seed=2)
  os.remove(model_dir_lib.numpy_deep_path(model_dir, 1))  # the prompt file stays
  shutil.rmtree(os.path.dirname(model_dir_lib.numpy_prompt_path(model_dir, 2)))  # both gone
  assert repair_lib.repair(model_dir) == 2
  for step, prompt, deep in ((1, prompt1, deep1), (2, prompt2, deep2)):
    assert np.load(model_dir_lib.numpy_deep_path(model_dir, step)).tobytes() == deep.tobytes()
    assert np.load(model_dir_lib.numpy_prompt_path(model_dir, step)).tobytes() == prompt.tobytes()


def test_a_deep_model_dir_refuses_a_run_without_deep_prompts(frozen, tmp_path):
  model_dir = str(tmp_path)
  model_dir_lib.check_run_info(model_dir, loop.run_info(deep_trainer(frozen)))
  plain = loop.run_info(deep_trainer(frozen, deep=False))
  with pytest.raises(model_dir_lib.RunMismatchError,
                     match=r'deep: saved True, requested False'):
    model_dir_lib.check_run_info(model_dir, plain)
  # A run_info.json written before deep prompts existed is a run without them.
  old = {k: v for k, v in plain.items() if k != 'deep'}
  other = str(tmp_path / 'old')
  model_dir_lib.check_run_info(other, old)
  model_dir_lib.check_run_info(other, plain)
  with pytest.raises(model_dir_lib.RunMismatchError, match=r'deep: saved False, requested True'):
    model_dir_lib.check_run_info(other, loop.run_info(deep_trainer(frozen)))


def test_loop_resume_with_deep_prompts_is_bit_identical(frozen, tmp_path):
  init = lambda rng, shape: np.asarray(jax.random.uniform(rng, shape, minval=-0.5, maxval=0.5))

  def run(model_dir, steps):
    return loop.train(deep_trainer(frozen), lambda pos: batches(pos), str(model_dir), steps,
                      prompt_init=init, seed=3, save_every=1, keep=1)

  straight = run(tmp_path / 'straight', 2)
  run(tmp_path / 'resumed', 1)
  resumed = run(tmp_path / 'resumed', 2)
  a = prompt_lib.get_deep_prompt(straight.params)
  b = prompt_lib.get_deep_prompt(resumed.params)
  assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  assert model_dir_lib.load_deep_prompt(str(tmp_path / 'resumed')).tobytes() == (
      np.asarray(b).tobytes())


# ----------------------------------------------------------------------------------------------
# Settings.


def test_bad_deep_settings_are_refused():
  with pytest.raises(ValueError, match='deep prompts take one prompt; num_prompts must be 1'):
    prompt_lib.PromptConfig(P, num_prompts=2, deep=True)
  with pytest.raises(ValueError, match=r"PromptConfig.deep must be True or False, got 'yes'"):
    prompt_lib.PromptConfig(P, deep='yes')  # type: ignore[arg-type]
  one_layer = CONFIG.replace(num_encoder_layers=1)
  with pytest.raises(ValueError, match=r'need at least 2 encoder layers .* has 1'):
    t5.param_shapes(one_layer, deep_config())
  assert prompt_lib.PromptConfig(P).deep is False


def test_deep_gin_turns_deep_prompts_on():
  import gin
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.clear_config()
  try:
    for order in (('models/t5_1_1_prompt.gin', 'prompts/deep.gin'),
                  ('prompts/deep.gin', 'models/t5_1_1_prompt.gin')):
      gin.clear_config()
      gin.parse_config_files_and_bindings([os.path.join(repo, 'gin', f) for f in order], [])
      config = gin.get_configurable(prompt_lib.PromptConfig)()
      assert config.deep is True and config.length == 100, order
  finally:
    gin.clear_config()


def test_deep_run_exports_and_evaluates_from_its_model_dir(tmp_path):
  """runs.train with deep prompts: export/deep_prompt.npy, `export --format=npy` writes both
  arrays (PEFT refuses by name), and eval from the MODEL_DIR uses the deep prompts (same
  metrics as the run's own final evaluation)."""
  import functools

  from prompt_tuning import checkpoints, runs
  from prompt_tuning.prompts import export, init as prompt_init
  config = t5.T5Config(vocab_size=384, d_model=16, d_ff=32, num_heads=2, head_dim=8,
                       num_encoder_layers=2, num_decoder_layers=1, dtype='float32')
  checkpoints.save_t5x(str(tmp_path / 'base'), t5.init_params(config, jax.random.PRNGKey(0)), 0)
  base = str(tmp_path / 'base' / 'checkpoint_0')
  lengths = {'inputs': 16, 'targets': 4}
  model_dir = tmp_path / 'run'
  summary = runs.train(
      model_dir=str(model_dir), mixture_or_task_name='quickstart_max_taskless',
      task_feature_lengths=lengths, batch_size=8, train_steps=2, initial_checkpoint_path=base,
      model=config, prompt=prompt_lib.PromptConfig(3, deep=True), eval_period=2,
      eval_max_examples=8,
      eval_at_start=False, group_by_length=0,
      prompt_init=functools.partial(prompt_init.initializer_by_name, 'random_uniform'))
  deep = model_dir_lib.load_deep_prompt(str(model_dir))
  assert deep.shape == (1, 3, 16)
  np.testing.assert_array_equal(np.load(model_dir / 'export' / 'deep_prompt.npy'), deep)
  assert not (model_dir / 'export' / 'peft').exists()
  out = export.export(str(model_dir), 'npy', str(tmp_path / 'p.npy'))
  np.testing.assert_array_equal(np.load(tmp_path / 'p.deep.npy'), deep)
  np.testing.assert_array_equal(np.load(out), model_dir_lib.load_prompt(str(model_dir))[0])
  with pytest.raises(ValueError, match='deep .*--format=peft cannot hold'):
    export.export(str(model_dir), 'peft', str(tmp_path / 'peft'))
  metrics = runs.evaluate(model_dir=str(model_dir), mixture_or_task_name='quickstart_max_taskless',
                          task_feature_lengths=lengths, initial_checkpoint_path=base,
                          model=config, max_examples=8, output_dir=str(tmp_path / 'ev'))
  assert metrics['generate/accuracy'] == summary['final_eval']['generate/accuracy']
