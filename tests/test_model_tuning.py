"""Model tuning (train/model_tuning.py): the update against transformers + torch, resume after a
kill, meshes, a subtree, MODEL_DIR's T5X checkpoints and the launcher."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import torch

from cli_helpers import rte_env, rte_train_args, run_cli
from hf_reference import make_hf_t5, max_rel_err, padded_batch
from prompt_tuning import checkpoints, cli, runs
from prompt_tuning.checkpoints.common import flatten
from prompt_tuning.inference.runner import PromptedModel
from prompt_tuning.testing import FIXTURE, FIXTURE_BINDINGS, synthetic_batch
from prompt_tuning.train import loop, model_tuning, optim
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import repair as repair_lib
from prompt_tuning.train.trainer import LossConfig
from train_fixtures import batches

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN_LOSS = LossConfig(z_loss=0.0, loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')


def _batch_of(enc, dec_in, tgt):
  return {'encoder_input_tokens': enc.astype(np.int32),
          'decoder_input_tokens': dec_in.astype(np.int32),
          'decoder_target_tokens': tgt.astype(np.int32)}


def test_one_step_matches_transformers_full_fine_tuning(tmp_path):
  """One SGD step on every weight: our update equals torch's on transformers' T5 (same weights,
  same batch, mean token loss) within 1e-5 relative, for every parameter."""
  hf = make_hf_t5(seed=3)
  before_dir, after_dir = str(tmp_path / 'before'), str(tmp_path / 'after')
  hf.save_pretrained(before_dir)
  enc, dec_in, tgt = padded_batch(hf.config.vocab_size, batch=3, enc_len=12, dec_len=7)
  hf.train()  # dropout 0: the same forward as eval
  out = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
           decoder_input_ids=torch.tensor(dec_in),
           decoder_attention_mask=torch.tensor(tgt > 0).long(),
           labels=torch.tensor(np.where(tgt > 0, tgt, -100)))
  out.loss.backward()
  with torch.no_grad():
    for p in hf.parameters():
      p -= 1.0 * p.grad
  hf.save_pretrained(after_dir)

  config, params = checkpoints.load_params(before_dir)
  _, expected = checkpoints.load_params(after_dir)
  trainer = model_tuning.ModelTrainer(config.replace(dtype='float32', dropout_rate=0.0), params,
                                      optax.sgd(1.0), loss=MEAN_LOSS)
  state, metrics = trainer.train_step(trainer.init_state(), _batch_of(enc, dec_in, tgt))
  assert float(metrics['loss']) == pytest.approx(out.loss.item(), rel=1e-5)
  ours, ref, start = flatten(jax.device_get(state.params)), flatten(expected), flatten(params)
  assert ours.keys() == ref.keys()
  errors = {k: max_rel_err(ours[k] - start[k], ref[k] - start[k]) for k in ours
            if np.any(ref[k] != start[k])}
  assert len(errors) > 20  # every weight moved, not a few
  assert max(errors.values()) < 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def _adafactor():
  return optim.make_optimizer('adafactor', 1e-3, factored=True, multiply_by_parameter_scale=True,
                              weight_decay=0.0)


def test_a_subtree_trains_alone_and_a_bad_name_is_one_line(tiny):
  config, params = tiny
  trainer = model_tuning.ModelTrainer(config, params, _adafactor(), trainable='decoder')
  state, _ = trainer.train_step(trainer.init_state(), synthetic_batch(0))
  full = flatten(trainer.full_params(state))
  start = flatten(params)
  changed = {k for k in full if not np.array_equal(np.asarray(full[k]), start[k])}
  assert changed and all(k.startswith('decoder/') for k in changed)
  assert set(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x: x.dtype, state.params))) == {np.dtype('float32')}
  with pytest.raises(ValueError, match=r"^TRAINABLE = 'decodr': the model has no parameter "
                     r"subtree 'decodr'; its top-level subtrees are \['decoder', 'encoder', "
                     r"'token_embedder'\]"):
    model_tuning.ModelTrainer(config, params, _adafactor(), trainable='decodr')


def test_optimizer_state_takes_each_weights_sharding():
  """A factored statistic [rows] of a weight [rows, cols] sharded (None, 'model') is replicated;
  of a weight sharded ('model', None) it is split like the rows."""
  from jax.sharding import NamedSharding, PartitionSpec
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('data', 'model'))
  params = {'a': jax.ShapeDtypeStruct((256, 128), np.float32)}
  shardings = {'a': NamedSharding(mesh, PartitionSpec('model', None))}
  opt = optax.adafactor(1e-3, factored=True, min_dim_size_to_factor=128)
  shapes = jax.eval_shape(opt.init, params)
  picked = model_tuning.opt_state_shardings(shapes, params, shardings,
                                            NamedSharding(mesh, PartitionSpec()))
  by_shape = {tuple(x.shape): s.spec for s, x in zip(jax.tree_util.tree_leaves(picked),
                                                     jax.tree_util.tree_leaves(shapes))}
  assert by_shape[(256,)] == PartitionSpec('model')  # the statistic over the rows
  assert by_shape[(128,)] == PartitionSpec(None)  # over the columns
  assert by_shape[()] == PartitionSpec()  # the step count


def _run(trainer, model_dir, steps, save_every=2):
  return loop.train(trainer, lambda p: batches(p), str(model_dir), steps, prompt_init=None,
                    save_every=save_every, keep=1)


def test_resume_after_a_kill_is_exact_and_model_dir_holds_t5x_checkpoints(tiny, tmp_path):
  config, params = tiny
  straight = _run(model_tuning.ModelTrainer(config, params, _adafactor()), tmp_path / 'a', 4)

  # Killed (SIGKILL) after step 3 ran, before it was saved: the restart resumes from step 2.
  script = (
      'import sys; sys.path.insert(0, %r)\n'
      'from prompt_tuning.models import t5\n'
      'from prompt_tuning.train import loop, model_tuning, optim\n'
      'from train_fixtures import batches\n'
      'config = t5.T5Config.preset("tiny", dtype="float32")\n'
      'tx = optim.make_optimizer("adafactor", 1e-3, factored=True, '
      'multiply_by_parameter_scale=True, weight_decay=0.0)\n'
      'trainer = model_tuning.ModelTrainer(config, t5.init_params(config), tx)\n'
      'loop.train(trainer, lambda p: batches(p), %r, 4, prompt_init=None, save_every=2, '
      'keep=1)\n') % (HERE, str(tmp_path / 'b'))
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        env={**os.environ, 'PROMPT_TUNING_FAULT': 'step@3'}, timeout=300)
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert model_dir_lib.committed_steps(str(tmp_path / 'b')) == [2]
  resumed = _run(model_tuning.ModelTrainer(config, params, _adafactor()), tmp_path / 'b', 4)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(straight)),
                  jax.tree_util.tree_leaves(jax.device_get(resumed))):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()

  # The kept step's whole model is a T5X checkpoint; older steps' copies follow orbax's keep=1.
  run = str(tmp_path / 'b')
  assert model_dir_lib.committed_steps(run) == [4]
  assert sorted(n for n in os.listdir(run) if n.startswith('checkpoint_')) == ['checkpoint_4']
  _, saved = checkpoints.load_params(os.path.join(run, 'checkpoint_4'))
  trained = flatten(jax.device_get(resumed.params))
  assert all(np.array_equal(saved_value, trained[k])
             for k, saved_value in flatten(saved).items())
  info = json.load(open(os.path.join(run, 'run_info.json')))
  assert info['tuning'] == 'model' and info['trainable'] == 'all'


def test_readers_take_committed_steps_only_and_repair_removes_the_rest(tiny, tmp_path):
  config, params = tiny
  run = str(tmp_path / 'run')
  _run(model_tuning.ModelTrainer(config, params, _adafactor()), run, 2)
  # What a kill can leave: a later step's copy (written before its commit), a cut temporary and
  # a replaced copy's old folder.
  checkpoints.save_t5x(run, params, 4)
  os.makedirs(os.path.join(run, 'checkpoint_6.tmp-123'))
  os.makedirs(os.path.join(run, 'checkpoint_2.old-5'))
  model, step, ids = PromptedModel.from_run(None, config, model_dir=run)
  assert step == 2 and ids is None and model.module.prompt is None
  with pytest.raises(model_dir_lib.ModelDirError, match='no model checkpoint for step 4'):
    PromptedModel.from_run(None, config, model_dir=run, step=4)
  assert repair_lib.repair(run, keep=1) == 2
  assert sorted(n for n in os.listdir(run) if n.startswith('checkpoint_')) == ['checkpoint_2']
  # A model-tuning MODEL_DIR has no prompt to export or inspect: one line saying what it has.
  with pytest.raises(model_dir_lib.ModelDirError, match='is a model-tuning run: it has no '
                     'prompt'):
    model_dir_lib.load_prompt(run)


def test_meshes_agree_with_one_device(eight_devices):
  """A (4, 2) mesh gives one device's losses and weights; weights and their Adafactor
  statistics are really split over 'model'."""
  out = eight_devices('model_tuning_worker.py')
  ref = out['1x1']
  for name in ('4x2',):
    np.testing.assert_allclose(out[name]['losses'], ref['losses'], rtol=1e-5, err_msg=name)
    for key, value in ref['weights'].items():
      np.testing.assert_allclose(out[name]['weights'][key], value, atol=2e-5, err_msg=key)
  assert out['4x2']['embedding_shard'] == [512 // 2, 128]
  assert out['4x2']['vocab_statistic_shard'] == [512 // 2]  # the embedding's, factored
  assert out['1x1']['embedding_shard'] == [512, 128]


# -- through the command line: the paper preset + runs/model_tuning.gin on the T5X fixture -------


@pytest.fixture(scope='module')
def rte_model_run(shared, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('model_tuning')
  model_dir = tmp / 'model'
  args = rte_train_args(shared, model_dir, BATCH_SIZE=4)
  args.insert(2, '--gin_file=runs/model_tuning.gin')  # after the preset, before the bindings
  proc = run_cli(args, rte_env(shared), str(tmp))
  return model_dir, tmp, proc


def test_train_command_model_tunes_and_eval_reads_its_checkpoint(rte_model_run, shared):
  model_dir, tmp, proc = rte_model_run
  assert 'Model tuning of super_glue_rte_local finished (3 steps)' in proc.stdout
  config = (model_dir / 'config.gin').read_text()
  assert "TRAINABLE = 'all'" in config and 'LEARNING_RATE = 0.001' in config
  assert not (model_dir / 'numpy_checkpoints').exists()
  summary = json.loads((model_dir / 'summary.json').read_text())
  assert summary['tuning'] == 'model'
  assert summary['exports'] == {'t5x': str(model_dir / 'checkpoint_3')}
  records = [json.loads(line) for line in (model_dir / 'metrics.jsonl').open()]
  assert [r['step'] for r in records if r['kind'] == 'eval'] == [0, 3]
  assert all('param_norm' in r for r in records if r['kind'] == 'train')
  # The trained weights differ from the base checkpoint's; the T5X copy loads as a base model.
  _, base = checkpoints.load_params(shared(*FIXTURE))
  _, tuned = checkpoints.load_params(str(model_dir / 'checkpoint_3'))
  assert not np.array_equal(flatten(base)['decoder/logits_dense/kernel'],
                            flatten(tuned)['decoder/logits_dense/kernel'])

  bindings = FIXTURE_BINDINGS + [
      f"MODEL_DIR = '{model_dir}'", "INITIAL_CHECKPOINT_PATH = None",
      "MIXTURE_OR_TASK_NAME = 'super_glue_rte_local'", 'EVAL_MAX_EXAMPLES = 8',
      "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}"]
  args = ['eval', '--gin_file=runs/prompt_eval.gin', '--gin_file=models/t5_1_1_prompt.gin',
          '--gin_file=models/sizes/small.gin'] + [f'--gin_bindings={b}' for b in bindings]
  evaluated = run_cli(args, rte_env(shared), str(tmp))
  result = json.loads(evaluated.stdout[evaluated.stdout.index('{'):])
  final = [r for r in records if r['kind'] == 'eval'][-1]
  assert result['step'] == 3
  assert result['rank/accuracy'] == pytest.approx(final['rank/accuracy'])



def test_export_of_a_model_tuning_dir_is_one_line(rte_model_run, capsys):
  model_dir, tmp, _ = rte_model_run
  code = cli.main(['export', f'--model_dir={model_dir}', '--format=npy',
                   f'--output={tmp / "p.npy"}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and 'is a model-tuning run: it has no prompt' in err[0]
  assert not (tmp / 'p.npy').exists()


def test_a_mixture_is_model_tuned_as_one_multi_task_model(shared, tmp_path):
  args = rte_train_args(shared, tmp_path / 'model', BATCH_SIZE=8,
                        MIXTURE_OR_TASK_NAME="'quickstart_mixture'",
                        TASK_FEATURE_LENGTHS="{'inputs': 16, 'targets': 4}",
                        EVAL_METHODS="('generate',)")
  args.insert(2, '--gin_file=runs/model_tuning.gin')
  run_cli(args, rte_env(shared), str(tmp_path))
  summary = json.loads((tmp_path / 'model' / 'summary.json').read_text())
  final = summary['final_eval']
  assert 'generate/average' in final and any('quickstart_max' in k for k in final), final



def test_prompt_tables_are_refused_before_anything_is_loaded(tmp_path):
  for table in ({'prompt_per_task': True}, {'prompt_ensemble': 2}):
    with pytest.raises(ValueError, match=r"^TRAINABLE = 'all' tunes the model, which has no "
                       r"prompts: set PROMPT_PER_TASK = False and PROMPT_ENSEMBLE = 1"):
      runs.train(model_dir=str(tmp_path / 'run'), mixture_or_task_name='quickstart_mixture',
                 task_feature_lengths={'inputs': 16, 'targets': 4}, batch_size=8,
                 train_steps=2, initial_checkpoint_path=str(tmp_path / 'none'),
                 trainable='all', **table)
  assert not (tmp_path / 'run').exists()
