"""The training loop (prompt_tuning/train/loop.py): steps, metrics, saves, periodic hooks, resume,
the NaN guard, data that runs out and preemption, on one tiny trainer compiled once."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.models import t5
from prompt_tuning.train import loop, preemption
from prompt_tuning.train import state as state_lib
from prompt_tuning.testing import synthetic_batch
from train_fixtures import make_trainer

VOCAB = 64


@pytest.fixture(scope='module')
def trainer():
  """One trainer for the module: its train step compiles once (~4 s on a CPU)."""
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=VOCAB, d_model=8, d_ff=16,
                              num_heads=2, head_dim=4, num_encoder_layers=1,
                              num_decoder_layers=1, relpos_buckets=4, relpos_max_distance=8)
  rng = np.random.RandomState(0)
  frozen = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype),
                                  t5.param_shapes(config))
  return make_trainer(config, frozen)


def uniform_init(rng, shape):
  return jax.random.uniform(rng, shape, minval=-0.5, maxval=0.5)


class Data:
  """A batch factory that records where each iterator starts and which batches it hands out."""

  def __init__(self, limit=None, on_draw=None):
    self.starts, self.drawn = [], []
    self.limit, self.on_draw = limit, on_draw

  def __call__(self, position):
    self.starts.append(position)

    def gen(position):
      while self.limit is None or position < self.limit:
        if self.on_draw is not None:
          self.on_draw(position)
        self.drawn.append(position)
        yield synthetic_batch(position, batch=2, inputs=6, targets=3, vocab=VOCAB)
        position += 1
    return gen(position)


class Recorder:
  """on_metrics/before_save callbacks that keep what they saw, and when."""

  def __init__(self, model_dir):
    self.model_dir = model_dir
    self.metrics, self.saves, self.seen_at_save, self.committed_at_save = [], [], {}, {}

  def on_metrics(self, step, metrics):
    self.metrics.append((step, metrics))

  def before_save(self, step):
    self.saves.append(step)
    self.seen_at_save[step] = [s for s, _ in self.metrics]
    self.committed_at_save[step] = model_dir_lib.latest_step(self.model_dir)

  @property
  def steps(self):
    return [s for s, _ in self.metrics]


def hook(calls, model_dir):
  def fn(step, state):
    calls.append((step, int(state.step), model_dir_lib.latest_step(model_dir)))
  return fn


def run(trainer, model_dir, num_steps, data=None, recorder=None, **kw):
  data = data or Data()
  recorder = recorder or Recorder(model_dir)
  state = loop.train(trainer, data, model_dir, num_steps, prompt_init=uniform_init,
                     on_metrics=recorder.on_metrics, before_save=recorder.before_save, **kw)
  return state, data, recorder


def test_runs_n_steps_reports_every_step_and_saves_at_save_every(trainer, tmp_path):
  model_dir = str(tmp_path / 'run')
  before = []
  state, data, rec = run(trainer, model_dir, 5, save_every=2, keep=None, check_every=10,
                         before_write=lambda: before.append(os.path.exists(model_dir)))
  assert int(state.step) == 5
  assert before == [False]  # called once, before anything was written
  # Every step's metrics, once and in order, as Python floats.
  assert rec.steps == [1, 2, 3, 4, 5]
  for _, metrics in rec.metrics:
    assert {'loss', 'accuracy', 'prompt_norm'} <= set(metrics)
    assert all(type(v) is float and np.isfinite(v) for v in metrics.values()), metrics
  # Step 0 (the initial prompt), every 2nd step and the last; each after its metrics were given.
  assert rec.saves == [0, 2, 4, 5]
  assert rec.seen_at_save == {0: [], 2: [1, 2], 4: [1, 2, 3, 4], 5: [1, 2, 3, 4, 5]}
  # ... and before the step's commit: what it logged is durable when its commit names it.
  assert rec.committed_at_save == {0: None, 2: 0, 4: 2, 5: 4}
  assert model_dir_lib.committed_steps(model_dir) == [0, 2, 4, 5]
  assert model_dir_lib.numpy_steps(model_dir) == [0, 2, 4, 5]
  # Exactly one batch per step, from position 0.
  assert data.starts == [0] and data.drawn == [0, 1, 2, 3, 4]
  reader = state_lib.PromptCheckpointer(model_dir, keep=None, read_only=True)
  try:
    _, meta = reader.restore(trainer.abstract_state(), 4)
  finally:
    reader.close()
  assert meta == {'step': 4, 'data_position': 4}
  first, last = (np.load(model_dir_lib.numpy_prompt_path(model_dir, s)) for s in (0, 5))
  assert not np.array_equal(first, last)  # training moved the prompt
  with open(os.path.join(model_dir, 'run_info.json')) as f:
    info = json.load(f)
  assert (info['prompt_length'], info['d_model'], info['placement']) == (5, 8, 'prefix')


def test_periodic_hooks_run_after_the_save_of_their_steps_and_at_the_last(trainer, tmp_path):
  model_dir = str(tmp_path / 'run')
  every2, every3, never = [], [], []
  run(trainer, model_dir, 5, save_every=2, keep=None, periodic_at_start=True,
      periodic=[loop.Periodic(2, hook(every2, model_dir)), (3, hook(every3, model_dir))])
  # (hook's step, the state's step, the latest committed step when it ran)
  assert every2 == [(0, 0, 0), (2, 2, 2), (4, 4, 4), (5, 5, 5)]
  assert every3 == [(0, 0, 0), (3, 3, 2), (5, 5, 5)]  # step 3 is not a save step
  run(trainer, str(tmp_path / 'other'), 2, periodic=[(0, hook(never, model_dir))])
  assert never == []  # every = 0: never


def test_no_hook_at_start_unless_asked(trainer, tmp_path):
  calls = []
  run(trainer, str(tmp_path / 'run'), 2, periodic=[(1, hook(calls, str(tmp_path / 'run')))])
  assert [c[0] for c in calls] == [1, 2]


def test_resume_continues_the_step_count_and_the_data_position(trainer, tmp_path):
  model_dir = str(tmp_path / 'run')
  first = run(trainer, model_dir, 3, save_every=2, keep=None)[0]
  first_prompt = np.load(model_dir_lib.numpy_prompt_path(model_dir, 3))
  finished, unfinished = [], []
  done = {3}  # a previous process finished the hook of step 3 ...
  state, data, rec = run(trainer, model_dir, 6, save_every=2, keep=None, periodic=[
      loop.Periodic(3, hook(finished, model_dir), done.__contains__),
      loop.Periodic(3, hook(unfinished, model_dir), lambda step: False)])  # ... but not this one
  assert int(first.step) == 3 and int(state.step) == 6
  assert data.starts == [3] and data.drawn == [3, 4, 5]
  assert rec.steps == [4, 5, 6] and rec.saves == [4, 6]
  assert model_dir_lib.committed_steps(model_dir) == [0, 2, 3, 4, 6]
  assert [c[0] for c in finished] == [6]
  assert [c[0] for c in unfinished] == [3, 6]  # rerun at the resumed step, then as usual
  # Resumed from the saved prompt, not from a new initial one.
  np.testing.assert_array_equal(np.load(model_dir_lib.numpy_prompt_path(model_dir, 3)),
                                first_prompt)
  # A finished run asked for the same steps: no data, no step, no save.
  again = Data()
  state, _, rec = run(trainer, model_dir, 6, data=again, save_every=2, keep=None)
  assert int(state.step) == 6 and again.starts == [] and rec.steps == [] and rec.saves == []


class NonFiniteAt:
  """The tiny trainer, with one metric of one step's result made non-finite."""

  def __init__(self, trainer, step, key='loss', value=float('nan')):
    self._trainer, self._step, self._key, self._value = trainer, step, key, value

  def __getattr__(self, name):
    return getattr(self._trainer, name)

  def train_step(self, state, batch):
    state, metrics = self._trainer.train_step(state, batch)
    if int(state.step) == self._step:
      metrics = {**metrics, self._key: jnp.asarray(self._value, jnp.float32)}
    return state, metrics


@pytest.mark.parametrize('key,value', [('loss', float('nan')), ('prompt_norm', float('inf'))])
def test_non_finite_training_stops_without_saving(trainer, tmp_path, key, value):
  model_dir = str(tmp_path / 'run')
  rec = Recorder(model_dir)
  with pytest.raises(loop.TrainingDivergedError,
                     match=r'Non-finite training .* at step 3; stopped without saving. The last '
                           r'good checkpoint is step 2 in .*run'):
    run(NonFiniteAt(trainer, 3, key, value), model_dir, 6, recorder=rec, save_every=2,
        keep=None, check_every=1)
  assert model_dir_lib.committed_steps(model_dir) == [0, 2]
  assert model_dir_lib.numpy_steps(model_dir) == [0, 2]
  assert rec.steps == [1, 2]  # the diverged step is not reported as a result


def test_divergence_between_checks_is_caught_before_the_next_save(trainer, tmp_path):
  model_dir = str(tmp_path / 'run')
  with pytest.raises(loop.TrainingDivergedError, match=r'at step 3; .* last good checkpoint is '
                                                       r'step 0 '):
    run(NonFiniteAt(trainer, 3), model_dir, 8, save_every=4, keep=None, check_every=100)
  assert model_dir_lib.committed_steps(model_dir) == [0]
  assert model_dir_lib.numpy_steps(model_dir) == [0]


def test_data_that_runs_out_is_named(trainer, tmp_path):
  model_dir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=r'ran out at step 2 \(position 2\); it must repeat or '
                                       r'hold at least 4 batches'):
    run(trainer, model_dir, 4, data=Data(limit=2))
  assert model_dir_lib.committed_steps(model_dir) == [0]


def test_no_data_at_all_fails_before_any_write(trainer, tmp_path):
  model_dir = tmp_path / 'run'
  before = []
  with pytest.raises(ValueError, match=r'ran out at step 0 \(position 0\)'):
    run(trainer, str(model_dir), 4, data=Data(limit=0), before_write=lambda: before.append(1))
  assert before == [] and not model_dir.exists()


def test_sigint_saves_the_current_step_and_stops(trainer, tmp_path):
  model_dir = str(tmp_path / 'run')

  def interrupt(position):  # while the batch of step 3 is drawn (inside the loop's guard)
    if position == 2:
      os.kill(os.getpid(), signal.SIGINT)

  calls = []
  with pytest.raises(preemption.Preempted, match=r'stopped by SIGINT at step 3: saved .*run'):
    run(trainer, model_dir, 10, data=Data(on_draw=interrupt), save_every=5, keep=None,
        periodic=[(1, hook(calls, model_dir))])
  assert preemption.requested() is None  # the request does not outlive the run
  assert model_dir_lib.committed_steps(model_dir) == [0, 3]
  assert [c[0] for c in calls] == [1, 2]  # the stopped step's hook is left to the restart
  reader = state_lib.PromptCheckpointer(model_dir, read_only=True)
  try:
    _, meta = reader.restore(trainer.abstract_state())
  finally:
    reader.close()
  assert meta['data_position'] == 3
