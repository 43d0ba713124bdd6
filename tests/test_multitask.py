"""Multi-task prompt tuning (#12 item 2): one prompt per task of a mixture in one table.

The data pipeline tags rows with their task's prompt; a row's gradient reaches its task's prompt
alone and equals a single-task run's; runs.train trains, evaluates per task, exports each prompt
and resumes exactly; eval/infer read a multi-task MODEL_DIR; shared + task prompts combine.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import checkpoints, runs
from prompt_tuning.prompts import export, init as prompt_init
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.data import pipeline
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig, combine_shared, prompt_tree, merge_params
from prompt_tuning.train import optim
from prompt_tuning.train.trainer import PromptTrainer
from prompt_tuning.testing import synthetic_batch

import train_fixtures

MIXTURE = 'quickstart_mixture'
LENGTHS = {'inputs': 16, 'targets': 4}
CONFIG = t5.T5Config(vocab_size=384, d_model=16, d_ff=32, num_heads=2, head_dim=8,
                     num_encoder_layers=1, num_decoder_layers=1, dtype='float32')


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  directory = tmp_path_factory.mktemp('base')
  params = t5.init_params(CONFIG, jax.random.PRNGKey(0))
  checkpoints.save_t5x(str(directory), params, 0, overwrite=True)
  return str(directory / 'checkpoint_0'), params


def _train(model_dir, base_path, steps, **kw):
  settings = dict(model_dir=str(model_dir), mixture_or_task_name=MIXTURE,
                  task_feature_lengths=LENGTHS, batch_size=8, train_steps=steps,
                  initial_checkpoint_path=base_path, model=CONFIG, prompt=PromptConfig(3),
                  eval_period=0, random_seed=1, prompt_per_task=True, group_by_length=0,
                  save_period=2,
                  prompt_init=functools.partial(prompt_init.initializer_by_name, 'random_uniform'))
  settings.update(kw)
  return runs.train(**settings)


def test_batches_tag_each_row_with_its_tasks_prompt():
  names = pipeline.prompt_names(MIXTURE)
  assert names == sorted(names) and len(names) == 4
  stream = pipeline.get_batches(MIXTURE, 'train', LENGTHS, 16, seed=3, prompt_per_task=True)
  seen = set()
  for _ in range(3):
    batch = next(stream)
    for tokens, k in zip(batch['encoder_input_tokens'], batch['prompt_ids']):
      text = bytes(int(t) - 3 for t in tokens if t > 2).decode()
      assert text.startswith(names[k].split('_')[1] + ':'), (text, names[k])
      seen.add(int(k))
  assert len(seen) >= 3  # the mixture's rates (equal) mix tasks within batches
  resumed = next(pipeline.get_batches(MIXTURE, 'train', LENGTHS, 16, seed=3,
                                      prompt_per_task=True, start_position=2))
  assert all(np.array_equal(resumed[k], batch[k]) for k in batch)


def test_per_task_gradients_equal_single_task_runs(base):
  """A 3-task table's gradient for prompt k == a one-prompt model's gradient on task k's rows
  (same examples, same prompt values)."""
  _, frozen = base
  rng = np.random.RandomState(0)
  table = rng.normal(size=(3, 4, CONFIG.d_model)).astype(np.float32)
  batch = synthetic_batch(0, batch=6, vocab=CONFIG.vocab_size)
  ids = np.array([2, 0, 1, 0, 2, 2], np.int32)
  multi = train_fixtures.make_trainer(CONFIG, frozen, prompt_length=4, num_prompts=3)
  state = multi.init_state(table)
  grads = jax.jit(jax.grad(lambda p: multi.batch_loss(p, multi.frozen, {**batch, 'prompt_ids': ids},
                                                 jax.random.PRNGKey(0), False)[0]))(state.params)
  table_grad = np.asarray(grads['encoder']['prompt']['prompt']['prompt'])
  single = train_fixtures.make_trainer(CONFIG, frozen, prompt_length=4)
  for k in range(3):
    rows = {key: value[ids == k] for key, value in batch.items()}
    one = single.init_state(table[k])
    grad = jax.jit(jax.grad(lambda p, rows=rows: single.batch_loss(
        p, single.frozen, rows, jax.random.PRNGKey(0), False)[0]))(one.params)
    np.testing.assert_allclose(table_grad[k], grad['encoder']['prompt']['prompt']['prompt'],
                               atol=1e-5, rtol=0)
    assert np.abs(table_grad[k]).max() > 1e-4  # a real gradient, not two zeros


@pytest.fixture(scope='module')
def multi_run(base, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('multi')
  summary = _train(tmp / 'run', base[0], 4, eval_period=4, eval_max_examples=8,
                   eval_methods=('generate', 'rank'), eval_at_start=False)
  return tmp / 'run', summary


def test_multi_task_run_evaluates_per_task_and_exports_each_prompt(multi_run):
  model_dir, summary = multi_run
  names = pipeline.prompt_names(MIXTURE)
  info = json.loads((model_dir / 'run_info.json').read_text())
  assert info['prompt_names'] == names and info['num_prompts'] == 4
  final = summary['final_eval']
  for name in names:
    for method in ('generate', 'rank'):
      assert 0 <= final[f'{method}/{name}/accuracy'] <= 100
  mean = np.mean([final[f'generate/{n}/accuracy'] for n in names])
  assert final['generate/accuracy'] == pytest.approx(mean)
  table, step = model_dir_lib.load_prompt(str(model_dir))
  assert step == 4 and table.shape == (4, 3, CONFIG.d_model)
  exports = model_dir / 'export'
  np.testing.assert_array_equal(np.load(exports / 'table.npy'), table)
  assert json.loads((exports / 'prompt_names.json').read_text()) == names
  for k, name in enumerate(names):
    np.testing.assert_array_equal(np.load(exports / 'prompts' / f'{name}.npy'), table[k])
    peft = json.loads((exports / 'peft' / name / 'adapter_config.json').read_text())
    assert peft['num_virtual_tokens'] == 3
  # `prompt-tuning export --prompt_name`: one task's prompt; without it, the table (npy only).
  out = export.export(str(model_dir), 'npy', str(model_dir / 'one.npy'), prompt_name=names[1])
  np.testing.assert_array_equal(np.load(out), table[1])
  with pytest.raises(ValueError, match='pass --prompt_name'):
    export.export(str(model_dir), 'peft', str(model_dir / 'p'))
  with pytest.raises(ValueError, match="no prompt of that name; its prompts are"):
    export.export(str(model_dir), 'npy', str(model_dir / 'x.npy'), prompt_name='rte')


def test_multi_task_run_resumes_exactly(multi_run, base, tmp_path):
  model_dir, _ = multi_run
  _train(tmp_path / 'run', base[0], 2, eval_period=4, eval_max_examples=8,
         eval_methods=('generate', 'rank'), eval_at_start=False)
  _train(tmp_path / 'run', base[0], 4, eval_period=4, eval_max_examples=8,
         eval_methods=('generate', 'rank'), eval_at_start=False)
  np.testing.assert_array_equal(model_dir_lib.load_prompt(str(tmp_path / 'run'))[0],
                                model_dir_lib.load_prompt(str(model_dir))[0])


def test_eval_reads_a_multi_task_model_dir(multi_run, base):
  """One task of the run: its own prompt; the mixture: each task's rows with their prompt —
  the same predictions either way."""
  model_dir, summary = multi_run
  names = pipeline.prompt_names(MIXTURE)
  common = dict(model_dir=str(model_dir), task_feature_lengths=LENGTHS,
                initial_checkpoint_path=base[0], model=CONFIG, max_examples=8,
                methods=('generate',), output_dir=str(model_dir / 'eval_out'))
  mixed = runs.evaluate(mixture_or_task_name=MIXTURE, **common)
  assert mixed['generate/accuracy'] == summary['final_eval']['generate/accuracy']
  alone = runs.evaluate(mixture_or_task_name=names[2], **common)
  assert alone['generate/accuracy'] == mixed[f'generate/{names[2]}/accuracy']


@pytest.mark.parametrize('mode', ['add', 'concat'])
def test_shared_prompt_is_the_effective_table(mode, base):
  """A shared + task model gives exactly what a plain table of the combined prompts gives."""
  _, frozen = base
  rng = np.random.RandomState(1)
  table = rng.normal(size=(2, 3, CONFIG.d_model)).astype(np.float32)
  shared = rng.normal(size=(3, CONFIG.d_model)).astype(np.float32)
  config = PromptConfig(3, num_prompts=2, shared=mode)
  assert config.combined_length == (6 if mode == 'concat' else 3)
  batch = synthetic_batch(0, batch=4, vocab=CONFIG.vocab_size)
  ids = np.array([1, 0, 0, 1], np.int32)
  tree = prompt_tree(table)
  tree['encoder']['prompt']['shared'] = {'prompt': shared}
  args = (batch['encoder_input_tokens'], batch['decoder_input_tokens'],
          batch['decoder_target_tokens'])
  logits = t5.EncoderDecoder(CONFIG, config).apply({'params': merge_params(frozen, tree)},
                                                   *args, prompt_ids=ids)
  effective = combine_shared(shared, table, mode)
  reader = t5.EncoderDecoder(CONFIG, config.reader())
  expected = reader.apply({'params': merge_params(frozen, prompt_tree(effective))}, *args,
                          prompt_ids=ids)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=0)
  # Trains: the shared prompt gets the gradient of every row, each task prompt its own rows'.
  trainer = PromptTrainer(CONFIG, config, frozen, optim.adafactor())
  state = trainer.init_state(table, shared_PxD=shared)
  state, _ = trainer.train_step(state, {**batch, 'prompt_ids': ids})
  assert not np.array_equal(np.asarray(state.params['encoder']['prompt']['shared']['prompt']),
                            shared)
  np.testing.assert_allclose(trainer.prompt(state), combine_shared(
      np.asarray(state.params['encoder']['prompt']['shared']['prompt']),
      np.asarray(state.params['encoder']['prompt']['prompt']['prompt']), mode), rtol=1e-6)
  assert jnp.asarray(trainer.prompt(state)).shape == (2, config.combined_length, CONFIG.d_model)


def test_shared_prompt_run_saves_combined_prompts(base, tmp_path):
  _train(tmp_path / 'run', base[0], 2, prompt=PromptConfig(3, shared='concat'), eval_period=0)
  table, _ = model_dir_lib.load_prompt(str(tmp_path / 'run'))
  assert table.shape == (4, 6, CONFIG.d_model)
  # The orbax step (raw shared + task parameters) reads back as the same combined table.
  np.testing.assert_array_equal(model_dir_lib.read_orbax_prompt(str(tmp_path / 'run'), 2), table)


@pytest.mark.parametrize('kw, message', [
    (dict(mixture_or_task_name='quickstart_max'), 'is a single task'),
    (dict(prompt=PromptConfig(3, num_prompts=3)), 'has 4 tasks'),
    (dict(prompt_per_task=False, prompt=PromptConfig(3, num_prompts=2)), 'PROMPT_PER_TASK'),
    (dict(prompt_per_task=False, prompt=PromptConfig(3, shared='add')), 'PROMPT_PER_TASK'),
])
def test_bad_multi_task_settings_write_nothing(kw, message, base, tmp_path):
  with pytest.raises(ValueError, match=message):
    _train(tmp_path / 'run', base[0], 2, **kw)
  assert not (tmp_path / 'run').exists()


def test_a_multi_task_model_dir_is_a_prompt_library(multi_run, tmp_path):
  from prompt_tuning.prompts import files as prompt_files
  from prompt_tuning.prompts.library import LibraryError, load_library
  model_dir, _ = multi_run
  names = pipeline.prompt_names(MIXTURE)
  table, _ = model_dir_lib.load_prompt(str(model_dir))
  library = load_library(str(model_dir), d_model=CONFIG.d_model)
  assert list(library) == names
  np.testing.assert_array_equal(library[names[3]].value, table[3])
  # In a folder beside other prompts: the run's prompts keep their task names.
  folder = tmp_path / 'lib'
  folder.mkdir()
  (folder / 'run').symlink_to(model_dir)
  prompt_files.write_npy(str(folder / 'extra.npy'), table[0] * 2)
  assert sorted(load_library(str(folder))) == sorted(names + ['extra'])
  prompt_files.write_npy(str(folder / f'{names[0]}.npy'), table[0])
  with pytest.raises(LibraryError, match=f"'{names[0]}' appears twice"):
    load_library(str(folder))


def test_a_prompt_table_step_costs_what_one_prompt_costs():
  """Compiled FLOPs of the train step with K = 8 prompts <= 1.02x K = 1 at the same batch
  (benchmarks/table_flops.py measures T5 1.1 small)."""
  from benchmarks.table_flops import step_flops
  one = step_flops(CONFIG, PromptConfig(5), 8, 16, 4)
  table = step_flops(CONFIG, PromptConfig(5, num_prompts=8), 8, 16, 4)
  assert one > 0 and table <= 1.02 * one, (table, one)


def test_ensemble_members_train_as_their_own_runs(base):
  """PROMPT_ENSEMBLE: a batch tiled once per member (member n's rows ask prompt n) updates
  each member exactly as a one-prompt run on that batch would (Adafactor per prompt)."""
  from prompt_tuning.train import settings
  _, frozen = base
  table = np.random.RandomState(2).normal(size=(3, 4, CONFIG.d_model)).astype(np.float32)
  batch = synthetic_batch(1, batch=4, vocab=CONFIG.vocab_size)
  tiled = next(settings.per_member(iter([batch]), 3))
  assert tiled['encoder_input_tokens'].shape[0] == 12
  assert tiled['prompt_ids'].tolist() == [0] * 4 + [1] * 4 + [2] * 4
  ensemble = train_fixtures.make_trainer(CONFIG, frozen, prompt_length=4, num_prompts=3)
  state, _ = ensemble.train_step(ensemble.init_state(table), tiled)
  single = train_fixtures.make_trainer(CONFIG, frozen, prompt_length=4)
  for k in range(3):
    alone, _ = single.train_step(single.init_state(table[k]), batch)
    np.testing.assert_allclose(ensemble.prompt(state)[k], single.prompt(alone), atol=1e-6,
                               rtol=0)
  assert not np.allclose(ensemble.prompt(state), table)


def test_ensemble_run_evaluates_members_and_ensemble(base, tmp_path):
  summary = _train(tmp_path / 'run', base[0], 2, mixture_or_task_name='quickstart_max_taskless',
                   prompt_per_task=False, prompt_ensemble=3, eval_period=2, eval_max_examples=8,
                   eval_methods=('generate', 'rank'), eval_at_start=False)
  final = summary['final_eval']
  for method in ('generate', 'rank'):
    members = [final[f'{method}/member{n}/accuracy'] for n in range(3)]
    assert final[f'{method}/member_mean/accuracy'] == pytest.approx(np.mean(members))
    assert 0 <= final[f'{method}/ensemble/accuracy'] <= 100
  assert summary['best']['metric'] == 'generate/ensemble/accuracy'
  assert json.loads((tmp_path / 'run' / 'export' / 'prompt_names.json').read_text()) == [
      'member0', 'member1', 'member2']
  # Evaluated again from its MODEL_DIR (ENSEMBLE_PROMPTS): the same numbers.
  again = runs.evaluate(model_dir=None, mixture_or_task_name='quickstart_max_taskless',
                        task_feature_lengths=LENGTHS, initial_checkpoint_path=base[0],
                        model=CONFIG, prompt=PromptConfig(3), max_examples=8,
                        methods=('generate', 'rank'), output_dir=str(tmp_path / 'ev'),
                        ensemble_prompts=str(tmp_path / 'run'))
  assert again['generate/ensemble'] == {k.split('/')[-1]: v for k, v in final.items()
                                        if k.startswith('generate/ensemble/')}
