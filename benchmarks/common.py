"""Pieces shared by the benchmarks: arguments, synthetic weights and prompts (batches:
prompt_tuning.testing.synthetic_batch), analytic model FLOPs, the measured matmul peak, timing,
machine description, and JSON / markdown reporting.

jax and torch are imported inside functions: the PEFT side runs in a child process that must not
start a JAX backend (on a GPU, JAX would preallocate most of the card's memory).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import numpy as np

from prompt_tuning.data.vocab import EOS_ID, PAD_ID  # noqa: F401  (common.PAD_ID, common.EOS_ID)

SIZES = ('tiny', 'small', 'base', 'large', 'xl', 'xxl')


# ----------------------------------------------------------------------------------------------
# Arguments.


def add_common_args(parser: argparse.ArgumentParser) -> None:
  """The shape, numerics and comparison flags both benchmarks take."""
  parser.add_argument('--size', choices=SIZES, default='small', help='T5 1.1 size (random weights)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--inputs', type=int, default=128, help='encoder input tokens L')
  parser.add_argument('--prompt', type=int, default=20, help='prompt length P')
  parser.add_argument('--targets', type=int, default=8, help='decoder target tokens T')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default=None,
                      help='activation dtype; default float32 on CPU, bfloat16 on accelerators')
  parser.add_argument('--frozen_dtype', choices=('float32', 'bfloat16'), default='float32',
                      help='storage dtype of the frozen weights (PromptTrainer(frozen_dtype=...))')
  from prompt_tuning.models import layers  # no JAX backend starts at import
  parser.add_argument('--cross_attention_fold', choices=layers.FOLD_MODES,
                      default='auto', help="our T5Config.cross_attention_fold ('never': T5X's "
                                           "key/value projection)")
  parser.add_argument('--attention_impl', choices=layers.ATTENTION_IMPLS,
                      default='einsum', help='our T5Config.attention_impl')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  parser.add_argument('--steps', type=int, default=5, help='timed steps')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--peak_n', type=int, default=None,
                      help='side of the square matmul that measures the peak (default: 2048 on '
                           'CPU, 8192 on accelerators)')
  parser.add_argument('--xla_flags', default='',
                      help='appended to XLA_FLAGS before JAX starts (e.g. CPU dot backends)')
  parser.add_argument('--no_library_xla_flags', action='store_true',
                      help="ours: without the CLI's XLA:CPU flags (prompt_tuning/xla_cpu.py)")
  parser.add_argument('--json', default=None, help='also write the result JSON here')
  parser.add_argument('--peft', action='store_true',
                      help='also run HF PEFT prompt tuning (torch) on the same batches')
  parser.add_argument('--torch_compile', action='store_true', help='PEFT side: torch.compile')
  parser.add_argument('--peft_device', default=None,
                      help="PEFT side's torch device (default: cuda when available, else cpu)")


def setup_backend(args: argparse.Namespace) -> str:
  """Sets what must be set before JAX starts its backend; returns the activation dtype."""
  if args.xla_flags:
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
  if not getattr(args, 'no_library_xla_flags', False):
    from prompt_tuning.train import xla_cpu
    xla_cpu.apply()  # what `prompt-tuning train` runs with
  if getattr(args, 'peft', False):
    # The PEFT child runs while this process exists: JAX must not preallocate the GPU.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax
  if args.dtype is not None:
    return args.dtype
  return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'


def model_config(args: argparse.Namespace, dtype: str, remat: str = 'none'):
  from prompt_tuning.models import t5
  return t5.T5Config.preset(args.size, dtype=dtype, remat_policy=remat,
                            cross_attention_fold=getattr(args, 'cross_attention_fold', 'auto'),
                            attention_impl=getattr(args, 'attention_impl', 'einsum'))


def hf_dims(config) -> dict:
  """What the PEFT side needs to build transformers' T5 with the same dimensions."""
  return dict(vocab_size=config.vocab_size, d_model=config.d_model, d_ff=config.d_ff,
              num_heads=config.num_heads, head_dim=config.head_dim,
              num_encoder_layers=config.num_encoder_layers,
              num_decoder_layers=config.num_decoder_layers,
              relpos_buckets=config.relpos_buckets, relpos_max_distance=config.relpos_max_distance,
              layer_norm_epsilon=config.layer_norm_epsilon)


# ----------------------------------------------------------------------------------------------
# Synthetic data. Batches are prompt_tuning.testing.synthetic_batch(..., padding=False): full-length
# rows (no padding), so both sides do exactly the same work.


def save_batch(arrays: dict, directory: str) -> str:
  # The PEFT child reads the very same arrays rather than regenerating them.
  path = os.path.join(directory, 'batch.npz')
  np.savez(path, **arrays)
  return path


def random_frozen_params(config, prompt_config, dtype: str, seed: int) -> dict:
  """Random frozen weights in `dtype`, leaf by leaf (xxl never holds a float32 copy of its 11B
  weights). On CPU numpy draws them (far faster than JAX's generators there); on accelerators
  they are drawn on the device, one small program per distinct shape.

  Scales keep activations finite: kernels N(0, 1/fan_in), embedding N(0, 1), norms 1.
  """
  import jax
  from prompt_tuning.models import prompt as prompt_lib
  from prompt_tuning.models import t5

  frozen_shapes, _ = prompt_lib.split_params(t5.param_shapes(config, prompt_config))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(frozen_shapes)
  on_cpu = jax.default_backend() == 'cpu'
  rng = np.random.default_rng(seed)
  np_dtype = jax.numpy.dtype(dtype)  # bfloat16 too (ml_dtypes)

  def leaf(path, shape, key):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'scale':
      return jax.device_put(np.ones(shape.shape, np_dtype))
    std = 1.0 if name == 'embedding' else 0.1 if name == 'rel_embedding' else shape.shape[0] ** -0.5
    if on_cpu:
      values = rng.standard_normal(shape.shape, np.float32) * np.float32(std)
      return jax.device_put(values.astype(np_dtype))
    return _device_normal(shape.shape, std, dtype)(key)

  keys = [None] * len(leaves) if on_cpu else jax.random.split(
      jax.random.key(seed, impl='rbg'), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [leaf(p, s, k) for (p, s), k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def _device_normal(shape: tuple, std: float, dtype: str):
  import jax
  import jax.numpy as jnp
  return jax.jit(lambda key: (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype))


def random_prompt(length: int, d_model: int, seed: int) -> np.ndarray:
  return np.random.RandomState(seed + 1).uniform(-0.5, 0.5, (length, d_model)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Model FLOPs.


def matmul_flops(config, batch: int, enc_len: int, dec_len: int) -> tuple[int, int]:
  """Forward matmul FLOPs (2 per multiply-add) of one teacher-forced pass, split into
  (weight matmuls, attention matmuls). enc_len counts the prompt: N = L + P.

  Per encoder layer and example: q, k, v, o over N tokens 8*N*D*I, gated MLP 6*N*D*F,
  scores + weighted sum 4*N*N*I. Per decoder layer: self q, k, v, o 8*T*D*I, cross q, o 4*T*D*I,
  cross k, v over the encoded input 4*N*D*I, MLP 6*T*D*F, self attention 4*T*T*I, cross
  attention 4*T*N*I. Logits 2*T*D*V. I = heads * head_dim. Norms, softmax, GELU and the
  embedding gather are left out (not matmuls).
  """
  d, f, v = config.d_model, config.d_ff, config.vocab_size
  inner = config.num_heads * config.head_dim
  n, t = enc_len, dec_len
  enc_w = config.num_encoder_layers * (8 * n * d * inner + 6 * n * d * f)
  enc_a = config.num_encoder_layers * (4 * n * n * inner)
  dec_w = config.num_decoder_layers * (12 * t * d * inner + 4 * n * d * inner + 6 * t * d * f)
  dec_w += 2 * t * d * v
  dec_a = config.num_decoder_layers * (4 * t * t * inner + 4 * t * n * inner)
  return batch * (enc_w + dec_w), batch * (enc_a + dec_a)


def train_step_flops(config, batch: int, enc_len: int, dec_len: int,
                     weight_grads: bool = False) -> dict:
  """Model FLOPs of one train step: forward + activation gradients, and weight gradients with
  `weight_grads` (model tuning; a prompt-only step has none).

  Backward of x @ W (W frozen) needs only dx = dy @ W^T: as many FLOPs as the forward; a trained
  W adds dW = x^T @ dy, as many again. Backward of an attention matmul (both operands are
  activations) needs both operand gradients: twice its forward. So train = 2 * weight + 3 *
  attention (prompt tuning), 3 * weight + 3 * attention (model tuning). Rematerialised
  recomputation is not counted (the usual MFU convention), so remat lowers MFU rather than
  raising it.
  """
  weight, attention = matmul_flops(config, batch, enc_len, dec_len)
  return {'forward': weight + attention,
          'train': (3 if weight_grads else 2) * weight + 3 * attention,
          'forward_weight_matmuls': weight, 'forward_attention_matmuls': attention}


# ----------------------------------------------------------------------------------------------
# The device: its measured matmul peak and a description.


def default_peak_n() -> int:
  import jax
  return 2048 if jax.default_backend() == 'cpu' else 8192


def measure_matmul_peak(dtype: str, n: Optional[int] = None, rounds: int = 5) -> dict:
  """Best FLOP/s of a jitted n x n x n matmul on the default JAX device, in `dtype`."""
  import jax
  import jax.numpy as jnp
  on_cpu = jax.default_backend() == 'cpu'
  n = n or default_peak_n()
  per_round = 2 if on_cpu else 20  # Dispatches queue up on an accelerator; time them together.
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float('inf')
  for _ in range(rounds):
    start = time.perf_counter()
    outs = [matmul(a, b) for _ in range(per_round)]
    jax.block_until_ready(outs)
    best = min(best, (time.perf_counter() - start) / per_round)
  return {'n': n, 'dtype': dtype, 'seconds': best, 'flops_per_s': 2 * n ** 3 / best}


def cpu_model() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        return line.split(':', 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or 'unknown'


def machine_info() -> dict:
  import jax
  device = jax.devices()[0]
  return {'backend': jax.default_backend(), 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'cpu_model': cpu_model(),
          'cpu_cores': len(os.sched_getaffinity(0)), 'os_platform': platform.platform(),
          'python': platform.python_version(), 'jax': jax.__version__,
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def describe(info: dict) -> str:
  if info['backend'] == 'cpu':
    return f"{info['cpu_model']} ({info['cpu_cores']} cores)"
  return f"{info['device_kind']} x{info['device_count']}"


# ----------------------------------------------------------------------------------------------
# Timing and memory.


def time_calls(fn: Callable[[], Any], sync: Callable[[Any], Any], warmup: int,
               steps: int) -> dict:
  """Calls fn warmup + steps times, each synced; the first call and the timed ones reported,
  with how busy other processes kept the CPU during the timed calls."""
  times = []
  first = None
  for i in range(warmup + steps):
    if i == warmup:
      snapshot = cpu_snapshot()
    start = time.perf_counter()
    sync(fn())
    elapsed = time.perf_counter() - start
    first = elapsed if first is None else first
    if i >= warmup:
      times.append(elapsed)
  return {'first_call_s': first, 'step_s_median': statistics.median(times),
          'step_s_mean': statistics.fmean(times), 'step_s_min': min(times), 'timed_steps': steps,
          'step_s_all': times, 'contention': other_cpu_use(snapshot)}


def cpu_snapshot() -> tuple[float, float, float, float]:
  """(wall, busy CPU seconds of the whole machine, steal seconds, this process's and its
  finished children's CPU seconds)."""
  with open('/proc/stat') as f:
    ticks = [int(x) for x in f.readline().split()[1:9]]
  hz = os.sysconf('SC_CLK_TCK')
  busy = (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / hz  # user nice sys irq softirq
  own = sum(getattr(resource.getrusage(who), field)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for field in ('ru_utime', 'ru_stime'))
  return time.monotonic(), busy, ticks[7] / hz, own


def other_cpu_use(start: tuple[float, float, float, float]) -> dict:
  """How many cores other processes (and the hypervisor's steal) kept busy since `start`.

  A shared machine skews CPU timings; this puts a number on it beside every result.
  """
  end = cpu_snapshot()
  wall = end[0] - start[0]
  others = max(0.0, (end[1] - start[1]) - (end[3] - start[3]))
  return {'other_processes_cores': others / wall, 'steal_cores': (end[2] - start[2]) / wall,
          'wall_s': wall}


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB.


def executed_flops(compiled) -> Optional[float]:
  """FLOPs XLA counts in the compiled program (its cost analysis), where the backend says."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it.
    return None
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def jax_memory(compiled=None) -> dict:
  """The device's peak bytes in use where it reports them (GPU/TPU), the compiled program's
  planned bytes otherwise (arguments + outputs - aliased + temporaries), and host peak RSS."""
  import jax
  out = {'peak_rss_bytes': peak_rss_bytes()}
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    out['device_peak_bytes_in_use'] = int(stats['peak_bytes_in_use'])
  if compiled is not None:
    m = compiled.memory_analysis()
    if m is not None:
      out['compiled'] = {k: int(getattr(m, k)) for k in (
          'argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
          'temp_size_in_bytes')}
      out['compiled_total_bytes'] = (m.argument_size_in_bytes + m.output_size_in_bytes
                                     - m.alias_size_in_bytes + m.temp_size_in_bytes)
  return out


# ----------------------------------------------------------------------------------------------
# The PEFT side runs in a child process.


def run_peft_child(task: str, spec: dict, arrays: dict) -> dict:
  """Runs benchmarks.peft_side for `task` on the same arrays; returns its JSON result.

  A separate process keeps torch's and JAX's memory apart (JAX preallocates on a GPU) and gives
  each its own peak memory. It runs before this process touches the JAX backend.
  """
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    spec = {**spec, 'batch_file': save_batch(arrays, tmp)}
    spec_file, result_file = os.path.join(tmp, 'spec.json'), os.path.join(tmp, 'result.json')
    with open(spec_file, 'w') as f:
      json.dump(spec, f)
    cmd = [sys.executable, '-m', 'benchmarks.peft_side', task, spec_file, result_file]
    path = os.pathsep.join(p for p in (repo, os.environ.get('PYTHONPATH')) if p)
    proc = subprocess.run(cmd, cwd=repo, env={**os.environ, 'PYTHONPATH': path},
                          preexec_fn=_die_with_parent)
    if proc.returncode != 0:
      return {'error': f'PEFT side exited with {proc.returncode} (its stderr is above)'}
    with open(result_file) as f:
      return json.load(f)


def _die_with_parent() -> None:
  """In the child: end when the parent does (e.g. killed by a timeout), freeing the GPU."""
  try:
    import ctypes
    import signal
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except OSError:
    pass


# ----------------------------------------------------------------------------------------------
# Reporting.


def write_json(result: dict, path: Optional[str]) -> None:
  """Prints the result as JSON and, given a path, writes it there too."""
  text = json.dumps(result, indent=2, sort_keys=False)
  print(text)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text + '\n')


def emit(result: dict, path: Optional[str], table_header: str, table_row: str) -> None:
  write_json(result, path)
  print(table_header)
  print(table_row)


def main(argv, parse_args, run, table_header: str, table_row) -> None:
  """A benchmark's command line: parse, run, write the JSON and print its table row."""
  args = parse_args(argv)
  result = run(args)
  emit(result, args.json, table_header, table_row(result))


def fmt(x: Optional[float], digits: int = 2) -> str:
  return '—' if x is None else f'{x:.{digits}f}'
