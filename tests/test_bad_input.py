"""Bad input through the CLI: one line naming the file/flag/value, exit 2, nothing written.

Each case runs `prompt-tuning <command>` (cli.main, in this process for speed; two cases also in a
fresh process, where stderr is checked whole) and checks the exit code, that stderr is exactly
one line naming what is wrong, and that MODEL_DIR is absent or byte-identical afterwards.
"""

import dataclasses
import os
import shutil
from typing import Callable, Optional

import gin
import numpy as np
import pytest

from cli_helpers import rte_env, rte_train_args, run_cli
from prompt_tuning import cli
from prompt_tuning.testing import FIXTURE

FAST = dict(TRAIN_STEPS=2, EVAL_PERIOD=0)


@dataclasses.dataclass
class Case:
  argv: list
  expect: list            # fragments the error line must contain
  model_dir: Optional[str] = None
  env: dict = dataclasses.field(default_factory=dict)
  code: int = 2


class Ctx:
  """What the cases build on: paths, the shared files, a finished run to damage copies of."""

  def __init__(self, shared, tmp, done):
    self.shared, self.tmp, self.done = shared, tmp, done
    self.model_dir = str(tmp / 'model')

  def train(self, extra=(), model_dir=None, **macros):
    return rte_train_args(self.shared, model_dir or self.model_dir, **{**FAST, **macros}) + list(
        extra)

  def data_copy(self, edit: Callable[[list], list]) -> str:
    """A copy of the RTE files whose train.jsonl lines went through `edit`."""
    root = self.tmp / 'data'
    shutil.copytree(self.shared('data', 'superglue', 'RTE'), root / 'superglue' / 'RTE')
    train = root / 'superglue' / 'RTE' / 'train.jsonl'
    train.write_text(''.join(edit(train.read_text().splitlines(keepends=True))))
    return str(root)

  def done_copy(self) -> str:
    path = str(self.tmp / 'done')
    shutil.copytree(self.done, path)
    return path

  def checkpoint_copy(self) -> str:
    path = str(self.tmp / 'checkpoint_3')
    shutil.copytree(self.shared(*FIXTURE), path)
    return path


def _cut_line_7(lines):
  lines[6] = lines[6][:40] + '\n'
  return lines


def _drop_field_line_7(lines):
  lines[6] = lines[6].replace('"hypothesis"', '"hypothesys"')
  return lines


def _prompt_file(ctx, content) -> str:
  path = ctx.tmp / 'prompt.npy'
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    np.save(path, content)
  return str(path)


def _from_file(ctx, path):
  return ctx.train(['--gin_file=prompts/from_file.gin', f'--gin.PROMPT_FILE={path}'])


def _truncated_orbax(ctx):
  model_dir = ctx.done_copy()
  state = os.path.join(model_dir, 'checkpoints', '2', 'state')
  blobs = [os.path.join(d, f) for d, _, files in os.walk(state) for f in files
           if os.sep + 'd' + os.sep in os.path.join(d, f) + os.sep or d.endswith(os.sep + 'd')]
  for blob in blobs:
    with open(blob, 'r+b') as f:
      f.truncate(max(1, os.path.getsize(blob) // 3))
  return Case(ctx.train(model_dir=model_dir, TRAIN_STEPS=4),
              ['checkpoints/2', 'cannot restore step 2', 'damaged'], model_dir)


def _other_prompt_length(ctx):
  model_dir = ctx.done_copy()
  return Case(ctx.train(model_dir=model_dir, PROMPT_LENGTH=7),
              ['holds a different prompt-tuning run', 'prompt_length: saved 5, requested 7',
               'nothing was changed'], model_dir)


def _bad_run_info(ctx):
  model_dir = ctx.done_copy()
  with open(os.path.join(model_dir, 'run_info.json'), 'w') as f:
    f.write('{"prompt_length": 5,')
  return Case(ctx.train(model_dir=model_dir), ['run_info.json', 'not a readable run'], model_dir)


def _model_dir_is_file(ctx):
  (ctx.tmp / 'afile').write_text('x')
  return Case(ctx.train(model_dir=str(ctx.tmp / 'afile')), ['afile is a file'],
              str(ctx.tmp / 'afile'))


def _model_dir_under_file(ctx):
  (ctx.tmp / 'afile').write_text('x')
  return Case(ctx.train(model_dir=str(ctx.tmp / 'afile' / 'run')), ['afile is a file'],
              str(ctx.tmp / 'afile'))


def _model_dir_not_writable(ctx):
  try:  # /sys refuses new directories even to root; elsewhere, no such place to try
    os.rmdir(__import__('tempfile').mkdtemp(dir='/sys'))
    pytest.skip('/sys is writable here, so there is no read-only place to test with')
  except OSError:
    pass
  return Case(ctx.train(model_dir='/sys/prompt_tuning_run'), ['/sys/prompt_tuning_run',
                                                              'cannot write'])


def _gin_typo_file(ctx):
  bad = ctx.tmp / 'typo.gin'
  bad.write_text("include 'runs/prompt_finetune.gin'\n\nruns.train.batch_sizee = 8\n")
  return Case(['train', f'--gin_file={bad}'], ['typo.gin', 'batch_sizee', 'line 3'])


def _hf_int_weight(ctx):
  from safetensors.numpy import load_file, save_file
  hf = ctx.tmp / 'hf'
  assert cli.main(['convert', f'--input={ctx.checkpoint_copy()}', f'--output={hf}',
                   '--to=hf']) == 0
  tensors = load_file(hf / 'model.safetensors')
  tensors['encoder.final_layer_norm.weight'] = np.ones(4, np.int32)
  save_file(tensors, hf / 'model.safetensors')
  return Case(['convert', f'--input={hf}', f'--output={ctx.tmp / "out"}', '--to=t5x'],
              ['model.safetensors', 'encoder.final_layer_norm.weight', 'int32'],
              str(ctx.tmp / 'out'))


def _vocabulary_not_a_model(ctx):
  bad = ctx.tmp / 'bad.model'
  bad.write_bytes(b'not a sentencepiece model')
  return Case(ctx.train(), ['bad.model', 'PROMPT_TUNING_VOCAB'],
              env={'PROMPT_TUNING_VOCAB': str(bad)})


def _chunkless_checkpoint(ctx) -> str:
  ckpt = ctx.checkpoint_copy()
  os.remove(os.path.join(ckpt, 'target.encoder.layers_0.attention.query.kernel', '0.0'))
  return ckpt


def _base_with_missing_chunk(ctx):
  return Case(ctx.train(INITIAL_CHECKPOINT_PATH=f"'{_chunkless_checkpoint(ctx)}'"),
              ['INITIAL_CHECKPOINT_PATH', 'query/kernel', 'missing'])


def _missing_chunk(ctx):
  return Case(['convert', f'--input={_chunkless_checkpoint(ctx)}', f'--output={ctx.tmp / "out"}',
               '--to=hf'],
              ["'encoder/layers_0/attention/query/kernel'", 'missing', '0.0'],
              str(ctx.tmp / 'out'))


CASES = {
    'negative TRAIN_STEPS': lambda c: Case(c.train(TRAIN_STEPS=-5), ['TRAIN_STEPS = -5']),
    'TRAIN_STEPS not a number': lambda c: Case(c.train(['--gin.TRAIN_STEPS=abc']),
                                               ["TRAIN_STEPS = 'abc'", 'integer']),
    'BATCH_SIZE 0': lambda c: Case(c.train(BATCH_SIZE=0), ['BATCH_SIZE = 0']),
    'negative EVAL_PERIOD': lambda c: Case(c.train(EVAL_PERIOD=-1), ['EVAL_PERIOD = -1']),
    'KEEP_CHECKPOINTS 0': lambda c: Case(c.train(KEEP_CHECKPOINTS=0), ['KEEP_CHECKPOINTS = 0']),
    'SAVE_PERIOD 0': lambda c: Case(c.train(SAVE_PERIOD=0), ['SAVE_PERIOD = 0']),
    'EVAL_METHODS typo': lambda c: Case(c.train(EVAL_METHODS="('generte',)"),
                                        ['EVAL_METHODS', 'generte', 'rank']),
    'TASK_FEATURE_LENGTHS without targets': lambda c: Case(
        c.train(TASK_FEATURE_LENGTHS="{'inputs': 64}"), ['TASK_FEATURE_LENGTHS', "'targets'"]),
    'PROMPT_LENGTH 0': lambda c: Case(c.train(PROMPT_LENGTH=0), ['PROMPT_LENGTH', 'got 0']),
    'LENGTH_BUCKETS not increasing': lambda c: Case(
        c.train(LENGTH_BUCKETS='[64, 32]'), ['LENGTH_BUCKETS = [64, 32]', 'strictly increasing']),
    'LENGTH_BUCKETS below the length': lambda c: Case(
        c.train(LENGTH_BUCKETS='[16, 32]'),
        ['LENGTH_BUCKETS', "largest bucket (32) is below TASK_FEATURE_LENGTHS['inputs'] = 64"]),
    'GROUP_BY_LENGTH negative': lambda c: Case(c.train(GROUP_BY_LENGTH=-2),
                                               ['GROUP_BY_LENGTH = -2']),
    'MESH_SHAPE too big': lambda c: Case(c.train(MESH_SHAPE='(4, 1)'), ['MESH_SHAPE (4, 1)']),
    'misspelled macro': lambda c: Case(c.train(['--gin.PROMPT_LENGHT=7']),
                                       ['--gin.PROMPT_LENGHT', 'did you mean PROMPT_LENGTH']),
    'unknown task': lambda c: Case(c.train(MIXTURE_OR_TASK_NAME="'super_glue_rtee'"),
                                   ['super_glue_rtee', 'super_glue_rte']),
    'missing gin file': lambda c: Case(['train', '--gin_file=nope/missing.gin'],
                                       ["gin file 'nope/missing.gin' not found"]),
    'gin typo in a file': _gin_typo_file,
    'missing base checkpoint': lambda c: Case(
        c.train(INITIAL_CHECKPOINT_PATH=f"'{c.tmp / 'lm100k'}'"),
        ['INITIAL_CHECKPOINT_PATH', 'lm100k', 'no such file']),
    'base checkpoint of another width': lambda c: Case(
        c.train(['--gin.t5.T5Config.d_model=8']), ['INITIAL_CHECKPOINT_PATH',
                                                   'checkpoint_3/checkpoint', 'config expects']),
    'base checkpoint with a missing chunk': _base_with_missing_chunk,
    'prompt file of another shape': lambda c: Case(
        _from_file(c, _prompt_file(c, np.zeros((5, 16), np.float32))),
        ['prompt.npy', '(5, 16)', '(5, 4)']),
    'prompt file missing': lambda c: Case(_from_file(c, c.tmp / 'none.npy'), ['none.npy']),
    'prompt file not a prompt': lambda c: Case(_from_file(c, _prompt_file(c, b'garbage' * 9)),
                                               ['prompt.npy']),
    'train row missing a field': lambda c: Case(
        c.train(), ['train.jsonl:7', 'hypothesis'],
        env={'PROMPT_TUNING_DATA_DIR': c.data_copy(_drop_field_line_7)}),
    'train line cut mid-JSON': lambda c: Case(
        c.train(), ['train.jsonl:7', 'JSON'],
        env={'PROMPT_TUNING_DATA_DIR': c.data_copy(_cut_line_7)}),
    'data dir missing': lambda c: Case(c.train(), ['PROMPT_TUNING_DATA_DIR', 'nodata'],
                                       env={'PROMPT_TUNING_DATA_DIR': str(c.tmp / 'nodata')}),
    'vocabulary missing': lambda c: Case(c.train(), ['PROMPT_TUNING_VOCAB', 'none.model'],
                                         env={'PROMPT_TUNING_VOCAB': str(c.tmp / 'none.model')}),
    'vocabulary not a model': _vocabulary_not_a_model,
    'MODEL_DIR is a file': _model_dir_is_file,
    'MODEL_DIR under a file': _model_dir_under_file,
    'MODEL_DIR not writable': _model_dir_not_writable,
    'resume with another PROMPT_LENGTH': _other_prompt_length,
    'damaged run_info.json': _bad_run_info,
    'truncated orbax checkpoint': _truncated_orbax,
    'export of a missing MODEL_DIR': lambda c: Case(
        ['export', f'--model_dir={c.tmp / "nodir"}', '--format=npy', f'--output={c.tmp / "o"}'],
        ['nodir', 'no such directory'], str(c.tmp / 'o')),
    'export of a step that is not there': lambda c: Case(
        ['export', f'--model_dir={c.done}', '--format=npy', f'--output={c.tmp / "o"}',
         '--step=99'], ['no prompt for step 99', 'available: [0, 2]'], str(c.tmp / 'o')),
    'convert a checkpoint with a missing chunk': _missing_chunk,
    'convert an HF weight stored as int32': _hf_int_weight,
}


@pytest.fixture(scope='module')
def done(shared, tmp_path_factory):
  """A finished 2-step run (prompt length 5) whose copies the cases damage."""
  path = tmp_path_factory.mktemp('done') / 'run'
  os.environ.update(rte_env(shared))
  gin.clear_config()
  assert cli.main(rte_train_args(shared, path, TRAIN_STEPS=2, EVAL_PERIOD=0)) == 0
  gin.clear_config()
  return str(path)


def _snapshot(path):
  if path is None or not os.path.exists(path):
    return None
  if os.path.isfile(path):
    return open(path, 'rb').read()
  return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), 'rb').read()
          for d, _, files in os.walk(path) for f in files}


@pytest.mark.parametrize('name', list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(name, shared, done, tmp_path, capsys,
                                                  monkeypatch):
  for key, value in rte_env(shared).items():
    monkeypatch.setenv(key, value)
  ctx = Ctx(shared, tmp_path, done)
  case = CASES[name](ctx)
  for key, value in case.env.items():
    monkeypatch.setenv(key, value)
  watched = case.model_dir or ctx.model_dir
  before = _snapshot(watched)
  capsys.readouterr()
  gin.clear_config()
  try:
    code = cli.main(case.argv)
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert code == case.code, err
  assert len(lines) == 1, err
  assert lines[0].startswith(f'prompt-tuning {case.argv[0]}: error: '), err
  for fragment in case.expect:
    assert fragment in lines[0], (fragment, lines[0])
  assert _snapshot(watched) == before, 'MODEL_DIR changed'


def test_at_least_thirty_cases():
  assert len(CASES) >= 30


def test_train_steps_zero_states_it_and_writes_nothing(shared, tmp_path, capsys, monkeypatch):
  for key, value in rte_env(shared).items():
    monkeypatch.setenv(key, value)
  gin.clear_config()
  try:
    assert cli.main(rte_train_args(shared, tmp_path / 'm', TRAIN_STEPS=0)) == 0
  finally:
    gin.clear_config()
  assert 'TRAIN_STEPS = 0: nothing to train' in capsys.readouterr().out
  assert not (tmp_path / 'm').exists()


def _wrong_prompt_file(tmp_path):
  np.save(tmp_path / 'p.npy', np.zeros((5, 16), np.float32))
  return ['--gin_file=prompts/from_file.gin', f'--gin.PROMPT_FILE={tmp_path / "p.npy"}',
          '--gin.EVAL_PERIOD=2']  # its evaluator warns of truncated inputs before the error


@pytest.mark.parametrize('flags, expect, env', [
    (lambda _: ['--gin.PROMPT_LENGHT=7'], 'did you mean PROMPT_LENGTH', {}),
    (_wrong_prompt_file, '(5, 16)', {}),
    (lambda _: ['--gin.BATCH_SIZE=3'],
     "BATCH_SIZE=3 does not split over 2 devices on the mesh's data axis",
     {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})])
def test_in_a_fresh_process_stderr_is_that_one_line(shared, tmp_path, flags, expect, env):
  """No TensorFlow/XLA start-up notices, no held-back warnings, no gin trailer: one line."""
  args = rte_train_args(shared, tmp_path / 'm', **FAST) + flags(tmp_path)
  proc = run_cli(args, rte_env(shared, **env), str(tmp_path), check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
  assert proc.stderr.startswith('prompt-tuning train: error: ') and expect in proc.stderr
  assert not (tmp_path / 'm').exists()
