"""Kills at exact moments (SIGKILL via PROMPT_TUNING_FAULT) and a SIGTERM, through the CLI.

One uninterrupted run and one run cut at every point below and restarted each time must leave
the same files; between kills every reader returns exactly the committed step it names.
"""

import os

import numpy as np
import pytest

from cli_helpers import rte_env, rte_train_args, run_cli
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.prompts import export

STEPS = dict(TRAIN_STEPS=8, SAVE_PERIOD=2, EVAL_PERIOD=4)
# (fault, what the kill cuts) in the order the restarted run reaches them.
CUTS = [
    ('after_save@0', 'between the first save and the evaluation at start'),
    ('orbax_commit@2', "inside orbax's save of step 2, before its commit"),
    ('mid_eval@4', "inside the evaluation of step 4: predictions written, record not"),
    ('sigterm@5', 'SIGTERM after step 5: save and exit 0'),
    ('numpy_written@6', 'between the numpy prompt of step 6 and its orbax save'),
    ('after_save@8', 'between the final save and the final evaluation'),
]
COMPARED = ('numpy_checkpoints', 'export', 'best', 'metrics.jsonl', 'inference_eval')


def _files(root, names=COMPARED):
  out = {}
  for name in names:
    path = os.path.join(root, name)
    if os.path.isfile(path):
      out[name] = open(path, 'rb').read()
    for dirpath, _, files in os.walk(path):
      for f in files:
        p = os.path.join(dirpath, f)
        out[os.path.relpath(p, root)] = open(p, 'rb').read()
  return out


def _scalars(directory, tag):
  """{step: value} of `tag` as a reader of the events files sees it after restarts: files in
  the order written, a later file's value of a step replacing an earlier one's."""
  import tensorflow as tf
  values = {}
  # events.out.tfevents.<seconds>.<host>.<pid>.<writer count>: processes by time, then writers.
  for name in sorted(os.listdir(directory),
                     key=lambda n: (int(n.split('.')[3]), int(n.split('.')[-1]))):
    try:
      for event in tf.compat.v1.train.summary_iterator(str(directory / name)):
        for v in event.summary.value:
          if v.tag == tag:
            values[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField('tensor') \
                else v.simple_value
    except tf.errors.DataLossError:
      pass
  return values


def _temporaries(root):
  return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files
          if '.tmp-' in n or 'orbax-checkpoint-tmp' in n]


def _scalar_steps(directory, tag):
  """Steps with a `tag` scalar in the event files (a record a kill cut short ends a file)."""
  import tensorflow as tf
  steps = set()
  for name in os.listdir(directory):
    try:
      for event in tf.compat.v1.train.summary_iterator(str(directory / name)):
        steps |= {event.step for v in event.summary.value if v.tag == tag}
    except tf.errors.DataLossError:
      pass
  return steps


@pytest.fixture(scope='module')
def env(shared):
  return rte_env(shared)  # the runs share the session's compilation cache (conftest)


def test_kills_and_sigterm_then_restart_leave_the_uninterrupted_files(shared, env, tmp_path):
  straight, cut = tmp_path / 'straight', tmp_path / 'cut'
  run_cli(rte_train_args(shared, straight, **STEPS), env, str(tmp_path))

  for fault, moment in CUTS:
    proc = run_cli(rte_train_args(shared, cut, **STEPS), {**env, 'PROMPT_TUNING_FAULT': fault},
                   str(tmp_path), check=False)
    if fault.startswith('sigterm'):
      assert proc.returncode == 0, (moment, proc.stderr[-3000:])
      assert 'stopped by SIGTERM at step 5' in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
      assert model_dir_lib.latest_step(str(cut)) == 5
    else:
      assert proc.returncode == -9, (moment, proc.returncode, proc.stderr[-3000:])
    # Readable after every kill, and exactly the step it names.
    committed = model_dir_lib.latest_step(str(cut))
    value, step = model_dir_lib.load_prompt(str(cut))
    assert step == committed, moment
    if step != 5:  # the uninterrupted run never saves step 5
      expected = np.load(model_dir_lib.numpy_prompt_path(str(straight), step))
      assert value.tobytes() == expected.tobytes(), moment
    for older in model_dir_lib.prompt_steps(str(cut)):
      assert older <= committed
    exported = export.export(str(cut), 'npy', str(tmp_path / f'export-{fault}.npy'))
    assert np.load(exported).tobytes() == value.tobytes(), moment
    if fault == 'after_save@8':  # TensorBoard was flushed with the save the kill followed
      assert set(range(1, 9)) <= _scalar_steps(cut / 'train', 'loss'), moment

  run_cli(rte_train_args(shared, cut, **STEPS), env, str(tmp_path))
  assert _temporaries(cut) == []
  a, b = _files(straight), _files(cut)
  extra = sorted(set(b) - set(a))
  # The SIGTERM save of step 5 is the only file the uninterrupted run does not have.
  assert extra == ['numpy_checkpoints/checkpoint_5/encoder.prompt.prompt.prompt'], extra
  assert sorted(a) == sorted(set(b) - set(extra))
  differ = [name for name in a if a[name] != b[name]]
  assert not differ, differ
  assert model_dir_lib.committed_steps(str(cut)) == [8]  # KEEP_CHECKPOINTS = 1
  assert sorted(model_dir_lib.numpy_steps(str(cut))) == [0, 2, 4, 5, 6, 8]
  assert b['metrics.jsonl'].count(b'"kind": "eval"') == 3  # steps 0, 4, 8, each once
  # Every step's train scalars survive the kills (a committed step's events are durable before
  # its commit; redone steps are written again), with the uninterrupted run's values.
  for tag in ('loss', 'accuracy'):
    assert sorted(_scalars(cut / 'train', tag)) == list(range(1, 9)), tag
    assert _scalars(cut / 'train', tag) == _scalars(straight / 'train', tag), tag
