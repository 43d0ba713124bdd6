"""Smoke test of benchmarks/: the tiny model through both benchmarks (JAX side only), the
analytic FLOPs formula against XLA's own count, and model vs prompt tuning's cost."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import inference
from benchmarks import train_step
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--size', 'tiny', '--batch', '2', '--inputs', '8', '--prompt', '4', '--targets', '4',
        '--warmup', '1', '--steps', '1', '--peak_n', '128']


def test_train_step_tiny():
  result = train_step.run(train_step.parse_args(TINY))
  ours = result['ours']
  assert ours['examples_per_s'] > 0 and ours['mfu'] > 0
  assert ours['memory']['compiled_total_bytes'] > 0
  assert 'peft' not in result
  assert train_step.table_row(result).startswith('| ')


def test_inference_greedy_tiny():
  result = inference.run(inference.parse_args(TINY + ['--tasks', 'greedy']))
  greedy = result['ours']['greedy']
  # EOS's logit is pinned to 0, so every row decodes its full length.
  assert greedy['rows_with_eos'] == 0 and greedy['generated_tokens'] == 2 * 4


def test_forward_flops_match_xla():
  """The analytic forward matmul FLOPs agree with XLA's count (which adds elementwise work)."""
  config = t5.T5Config.preset('tiny', dtype='float32', d_model=128, d_ff=256, vocab_size=512)
  prompt = prompt_lib.PromptConfig(4)
  model = t5.EncoderDecoder(config, prompt)
  enc = jax.ShapeDtypeStruct((2, 60), jnp.int32)
  dec = jax.ShapeDtypeStruct((2, 8), jnp.int32)
  forward = jax.jit(lambda p, e, d: model.apply({'params': p}, e, d, d))
  xla = forward.lower(t5.param_shapes(config, prompt), enc, dec).compile().cost_analysis()
  analytic = common.train_step_flops(config, 2, 64, 8)['forward']
  assert analytic <= xla['flops'] <= 1.1 * analytic


def test_real_data_tiny(tmp_path):
  """benchmarks/real_data.py on synthetic ragged examples: the .npz round trip, the batch
  orders, and our worker process (compile per bucket shape, timed steps). No TF, no PEFT."""
  import numpy as np

  from benchmarks import real_data

  rng = np.random.RandomState(0)
  lengths = [3, 12, 5, 16, 9, 2, 14, 7, 15, 11, 6, 10]
  inputs = [list(rng.randint(2, 500, size=n - 1)) + [1] for n in lengths]
  targets = [[5, 1] if i % 2 else [7, 8, 1] for i in range(len(lengths))]
  path = str(tmp_path / 'synthetic.npz')
  real_data.save_examples(path, inputs, targets, {'task': 'rte', 'split': 'synthetic',
                                                  'inputs_limit': 16, 'targets_limit': 4})
  got_inputs, got_targets, meta = real_data.load_examples(path)
  assert [list(x) for x in got_inputs] == inputs and [list(x) for x in got_targets] == targets
  assert meta['split'] == 'synthetic'

  modes = ['ours_default', 'ours_grouped', 'ours_fixed']
  epoch = real_data.epoch_batches(got_inputs, got_targets, 2, 3, 0, modes)
  for mode in modes:  # every example exactly once (12 = 2 windows of 3 batches of 2)
    assert sorted(np.concatenate(epoch[mode]).tolist()) == list(range(12))
  assert real_data.sample_positions(6, 2) == [1, 4]

  args = real_data.parse_args(
      ['--task', 'rte', '--data', path, '--size', 'tiny', '--batch', '2', '--inputs', '16',
       '--targets', '4', '--prompt', '3', '--steps', '2', '--fixed_steps', '1', '--repeats', '1',
       '--window', '3', '--modes', ','.join(modes),
       '--xla_flags=--xla_backend_optimization_level=0'])  # compiles 2x faster
  result = real_data.run_train(args)
  setup = result['setup']['ours']
  assert setup['distinct_shapes'] >= 2 and setup['compile_s_total'] > 0  # a bucket and 16x4
  fixed = result['modes']['ours_fixed']
  assert fixed['timed']['mean_input_width'] == 16 and fixed['examples_per_s'] > 0
  assert result['modes']['ours_default']['timed']['mean_input_width'] <= 16
  assert real_data.table_row(result).startswith('| ')
  assert '| ours_grouped |' in real_data.detail_rows(result)


def test_tuning_cost_tiny(tmp_path):
  """benchmarks/tuning_cost.py on the tiny preset, both methods: the JSON's fields, and model
  tuning's optimizer state and kept checkpoint (orbax state, readable copy) outweigh a prompt's."""
  import json
  import re

  from benchmarks import tuning_cost

  path = tmp_path / 'cost.json'
  tuning_cost.main(['--sizes', 'tiny', '--batch', '2', '--inputs', '8', '--prompt', '4',
                    '--targets', '4', '--warmup', '1', '--steps', '1', '--checkpoint_steps', '1',
                    '--json', str(path)])
  result = json.loads(path.read_text())
  assert result['benchmark'] == 'tuning_cost'
  assert {'cpu_model', 'cpu_cores', 'jax', 'load_average_before'} <= set(result['machine'])
  tiny = result['sizes']['tiny']
  prompt, model, ratio = tiny['prompt'], tiny['model'], tiny['ratio_model_over_prompt']
  for m in (prompt, model):
    assert m['timing']['step_s_median'] > 0 and m['examples_per_s'] > 0
    assert m['memory']['compiled_total_bytes'] > 0 and m['optimizer_state_bytes'] > 0
    assert m['model_flops_per_step'] > 0
    c = m['checkpoint']
    assert c['step'] == 1 and c['committed_steps'] == [1]
    assert c['orbax_bytes'] > 0 and c['copy_bytes'] > 0
    assert c['total_bytes'] == c['orbax_bytes'] + c['copy_bytes']
  assert prompt['trainable_params'] == 4 * 32  # P x d_model
  assert model['trainable_params'] == tiny['model_params']
  assert prompt['checkpoint']['copy_dir'] == 'numpy_checkpoints/checkpoint_1'
  assert model['checkpoint']['copy_dir'] == 'checkpoint_1'
  assert model['encoder_tokens'] == 8 and prompt['encoder_tokens'] == 8 + 4
  # What model tuning costs beyond a prompt: every weight's optimizer statistics, the whole
  # model in both the orbax state and the T5X copy.
  assert model['optimizer_state_bytes'] > 100 * prompt['optimizer_state_bytes']
  assert model['checkpoint']['orbax_bytes'] > 100 * prompt['checkpoint']['orbax_bytes']
  assert model['checkpoint']['copy_bytes'] > 4 * model['trainable_params']  # float32 weights
  assert model['checkpoint']['copy_bytes'] > 100 * prompt['checkpoint']['copy_bytes']
  assert ratio['optimizer_state_bytes'] > 100 and ratio['checkpoint_total_bytes'] > 100
  assert ratio['trainable_params'] == model['trainable_params'] / (4 * 32)
  rows = tuning_cost.table_row(result).splitlines()
  assert len(rows) == 3 and all(r.startswith('| ') for r in rows) and 'model / prompt' in rows[2]

  # The optimizer the benchmark gives model tuning is still gin/runs/model_tuning.gin's.
  with open(os.path.join(REPO, 'gin', 'runs', 'model_tuning.gin')) as f:
    gin = f.read()
  settings = dict(re.findall(r'^\s*(\w+) = (\S+)$', gin, re.M))
  expected = tuning_cost.MODEL_TUNING_ADAFACTOR
  assert float(settings['LEARNING_RATE']) == expected['learning_rate']
  for key in ('factored', 'multiply_by_parameter_scale', 'weight_decay'):
    assert settings[key] == str(expected[key])


def test_tuning_cost_imports_no_tensorflow_seqio_or_gin():
  """The GPU machine has none of them: importing the benchmark must not need them."""
  code = ('import sys, benchmarks.tuning_cost\n'
          'print(sorted({m.split(".")[0] for m in sys.modules} & '
          '{"tensorflow", "seqio", "gin", "tensorflow_datasets", "torch"}))')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, 'PYTHONPATH': REPO}, check=True).stdout
  assert out.strip() == '[]', out


def test_causal_lm_real_data_tiny(tmp_path):
  """benchmarks/causal_lm_real_data.py on synthetic rows at toy size: the library's grouped and
  plain streams for ours, the same plain batches dynamically padded for PEFT CAUSAL_LM, both
  workers, the ratios and the table row. No TF."""
  import numpy as np

  from benchmarks import causal_lm_real_data as clm
  from benchmarks import real_data

  rng = np.random.RandomState(0)
  # Rows of 9 to 16 tokens: one bucket (16), one compile.
  prefixes = [[1] + list(rng.randint(3, 90, size=n)) for n in (6, 12, 7, 11, 9, 8, 10, 7)]
  targets = [[5, 2] if i % 2 else [7, 8, 2] for i in range(len(prefixes))]
  path = str(tmp_path / 'rows.npz')
  real_data.save_examples(path, prefixes, targets, {
      'task': 'rte', 'split': 'synthetic', 'num_examples': 8, 'inputs_limit': 16,
      'targets_limit': 4, 'vocab_size': 100, 'bos_id': 1, 'eos_id': 2, 'pad_id': 0})
  args = clm.parse_args(
      ['--data', path, '--batch', '2', '--inputs', '16', '--targets', '4', '--prompt', '3',
       '--d_model', '16', '--layers', '1', '--heads', '2', '--kv_heads', '1', '--d_ff', '32',
       '--steps', '2', '--repeats', '1', '--window', '2', '--warm_runs', '0',
       '--modes', 'ours_grouped,ours_default,peft_dynamic', '--parallel_setup',
       '--xla_flags=--xla_backend_optimization_level=0'])
  result = clm.run(args)
  modes = result['modes']
  # ours_default and peft_dynamic time the very same examples; PEFT pads to the longest row,
  # ours to its bucket; grouping pads the epoch less.
  same = ('examples', 'real_tokens', 'batches')
  assert [modes['ours_default']['timed'][k] for k in same] == [
      modes['peft_dynamic']['timed'][k] for k in same]
  assert modes['peft_dynamic']['epoch']['mean_width'] <= modes['ours_default']['epoch'][
      'mean_width']
  assert modes['ours_grouped']['epoch']['padding_fraction'] <= modes['ours_default']['epoch'][
      'padding_fraction']
  assert all(m['examples_per_s'] > 0 for m in modes.values())
  assert set(result['ratios']) == {'ours_grouped/peft_dynamic', 'ours_default/peft_dynamic'}
  assert result['setup']['peft']['trainable_params'] == 3 * 16
  assert result['setup']['ours']['distinct_shapes'] == 1
  assert {'load_average_before', 'load_average_after'} <= set(result['machine'])
  assert clm.table_row(result).startswith('| ')
