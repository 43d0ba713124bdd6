"""Real-data benchmarks: train throughput per batching mode (ours beside HF PEFT) and eval time
with fixed-shape vs length-bucketed batches (ours).

  # train throughput on RTE train, batch 32 (tokenizes first, in a child process with TF/SeqIO)
  python -m benchmarks.real_data --task rte --batch 32 --steps 8 --json out/real_rte_b32.json
  # tokenize once, on a machine with TensorFlow/SeqIO; time elsewhere (e.g. a GPU machine)
  python -m benchmarks.real_data --task rte --prepare_only --out benchmarks/data/rte_train.npz
  python -m benchmarks.real_data --task rte --data benchmarks/data/rte_train.npz --batch 32
  # eval: Evaluator on the validation split, buckets None (fixed shape) vs 'auto' (ours only)
  python -m benchmarks.real_data --task rte --eval --json out/real_eval_rte.json

Data. The task's split (RTE: train; BoolQ and SST-2: validation, the only split in shared/) is
tokenized once by this project's SeqIO task (`pipeline.get_eval_examples`: the training
preprocessors, inputs truncated to --inputs with EOS kept), shuffled with --seed and saved as
an .npz (concatenated ids + offsets, in the shuffled order). The timing processes read that file
and never import TensorFlow. Batches are consecutive runs of --batch examples of that order;
both sides see the same examples in the same order (the grouped modes reorder them, each the way
its own library does).

Modes (one row each; the first two lines are the comparisons):
  ours_default  consecutive batches, each trimmed to its length bucket (batching.trim, 'auto';
                GROUP_BY_LENGTH = 0)
  peft_dynamic  the same batches padded to their longest row (DataCollatorForSeq2Seq's padding;
                labels padded with -100)
  ours_grouped  batching.group_in_windows (windows of --window batches sorted by length, seeded
                batch order), then trim (GROUP_BY_LENGTH = 32, the library's default)
  peft_grouped  the order of transformers' Trainer with group_by_length=True
                (`trainer_pt_utils.get_length_grouped_indices`, torch generator seeded with
                --seed; full batches), then dynamic padding
  ours_fixed    padded to --inputs / --targets (the fixed shape), for reference

Timing. Each side runs in its own long-lived worker process (ours: JAX; PEFT: torch), so the
parent can interleave them: per repeat, the modes alternate ours, PEFT, ours, PEFT (the side that
starts alternates between repeats), while the other worker waits idle. Every step is synced.
Each mode times --steps of its epoch's batches (--fixed_steps for ours_fixed, timed in the first
--fixed_repeats repeats only), stratified by length: the epoch's batches sorted by their longest
input, then every (steps)-th quantile, timed in the mode's own order. A few consecutive batches
would not do: a grouped order is sorted inside each window or mega-batch (HF even puts the
longest example first on purpose), so its first batches are not typical, and the two grouped
modes would time different lengths. Ours compiles every distinct batch shape of its timed
batches before timing (count and seconds reported) and runs each shape --warm_runs times
untimed (a shape's first run is slower); PEFT runs one untimed warmup step. Per mode, the best
repeat (least total time) gives examples/s, real (non-pad) tokens/s (inputs + targets, prompt
excluded), padded tokens/s (batch x (input + target width)) and the padding fraction; the JSON
adds every step time, the contention, and the padding of the whole epoch under that mode
(exact, no timing).

Eval (--eval). Evaluator(task, 'validation', ...) with buckets None vs 'auto' (same model, same
random prompt): greedy generate and rank. Every distinct batch shape is called once first (its
compile and first run); then each way and method makes one timed pass (interleaved; best of
--eval_repeats), every batch call timed. compile_s = each shape's first call minus its steady
batch time. The predictions of the two ways must be identical (rank: the scores are compared
too). 'before' (unless --no_eval_before): the fixed way once more, in a child process without
the library's XLA:CPU flags (prompt_tuning/xla_cpu.py) — eval as it ran before this change; the
speedup 'vs before' is its seconds over auto's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np

if __package__ in (None, ''):  # `python benchmarks/real_data.py` as well as `-m`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

# --task -> (SeqIO task, the split used as the training stream, why).
TASKS = {
    'rte': ('super_glue_rte_local', 'train', 'RTE train (2490 examples)'),
    'boolq': ('super_glue_boolq_local', 'validation',
              'BoolQ validation used as the training stream (shared/ has no BoolQ train split)'),
    'sst2': ('glue_sst2_local', 'validation',
             'SST-2 validation used as the training stream (shared/ has no SST-2 train split)'),
}
EVAL_SPLIT = 'validation'
MODES = ('ours_default', 'peft_dynamic', 'ours_grouped', 'peft_grouped', 'ours_fixed')
SIDE = {m: m.split('_')[0] for m in MODES}
# (ours mode, PEFT mode) pairs whose examples/s ratio is reported.
RATIOS = (('ours_default', 'peft_dynamic'), ('ours_grouped', 'peft_grouped'),
          ('ours_grouped', 'peft_dynamic'))
LABEL_PAD = -100  # what DataCollatorForSeq2Seq pads labels with


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--task', choices=sorted(TASKS), default='rte')
  parser.add_argument('--size', choices=common.SIZES, default='small',
                      help='T5 1.1 size (random weights)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--inputs', type=int, default=512,
                      help='input truncation length and the fixed shape (paper preset 512)')
  parser.add_argument('--targets', type=int, default=8, help='target truncation length')
  parser.add_argument('--prompt', type=int, default=100, help='prompt length P')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default=None,
                      help='activations; default float32 on CPU, bfloat16 on accelerators')
  parser.add_argument('--frozen_dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--steps', type=int, default=8, help='timed batches per mode')
  parser.add_argument('--fixed_steps', type=int, default=2,
                      help='timed batches of ours_fixed (one shape: few suffice)')
  parser.add_argument('--repeats', type=int, default=2, help='interleaved repeats; best taken')
  parser.add_argument('--fixed_repeats', type=int, default=1,
                      help='repeats that time ours_fixed (a reference only; one shape)')
  parser.add_argument('--warm_runs', type=int, default=1,
                      help='untimed runs of each compiled shape of ours before timing')
  parser.add_argument('--window', type=int, default=32,
                      help='ours_grouped: batches per window (capped at the batches an epoch has)')
  parser.add_argument('--modes', default=','.join(MODES),
                      help=f'comma-separated subset of {",".join(MODES)}')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--learning_rate', type=float, default=0.3)
  parser.add_argument('--data', default=None, help='read the tokenized .npz (no TF needed)')
  parser.add_argument('--prepare_only', action='store_true',
                      help='tokenize and write the .npz to --out, then stop (needs TF/SeqIO)')
  parser.add_argument('--out', default=None, help='where --prepare_only writes the .npz')
  parser.add_argument('--eval', action='store_true',
                      help='eval comparison (fixed vs bucketed) on the validation split instead')
  parser.add_argument('--eval_batch', type=int, default=32)
  parser.add_argument('--eval_methods', default='generate,rank')
  parser.add_argument('--eval_max_examples', type=int, default=None,
                      help='first N validation examples only (default: all)')
  parser.add_argument('--eval_repeats', type=int, default=1)
  parser.add_argument('--eval_ways', default='fixed,auto',
                      help='fixed (buckets None) and/or auto (the library default)')
  parser.add_argument('--no_eval_before', action='store_true',
                      help="skip the 'before' way: fixed shape in a child process without the "
                           "library's XLA:CPU flags, i.e. eval as it was before buckets")
  parser.add_argument('--peft_device', default=None,
                      help="PEFT side's torch device (default: cuda when available, else cpu)")
  parser.add_argument('--xla_flags', default='', help='appended to XLA_FLAGS (ours)')
  parser.add_argument('--no_library_xla_flags', action='store_true',
                      help="ours: without the CLI's XLA:CPU flags (prompt_tuning/xla_cpu.py)")
  parser.add_argument('--json', default=None, help='also write the result JSON here')
  parser.add_argument('--worker', choices=('ours', 'peft'), default=None, help=argparse.SUPPRESS)
  parser.add_argument('--spec', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.prepare_only and not args.out:
    parser.error('--prepare_only needs --out FILE.npz')
  unknown = set(args.modes.split(',')) - set(MODES)
  if unknown:
    parser.error(f'unknown mode(s) {sorted(unknown)}; choose from {",".join(MODES)}')
  return args


def feature_lengths(args: argparse.Namespace) -> dict[str, int]:
  return {'inputs': args.inputs, 'targets': args.targets}


# ----------------------------------------------------------------------------------------------
# Data: tokenize once (TensorFlow), save, load (NumPy only).


def prepare(task_key: str, inputs: int, targets: int, seed: int, out: str) -> dict:
  """Tokenizes the task's training-stream split with our SeqIO task, shuffles it with `seed`
  and writes the .npz; returns its metadata. Needs TensorFlow/SeqIO."""
  from prompt_tuning.data import pipeline, tasks

  name, split, note = TASKS[task_key]
  # Targets are not truncated here: the longest must fit --targets (checked below).
  examples, truncated = pipeline.get_eval_examples(name, split, {'inputs': inputs,
                                                                 'targets': 1 << 20})
  longest_target = max(len(e['targets']) for e in examples)
  if longest_target > targets:
    raise SystemExit(f'{name}:{split} has targets of {longest_target} tokens (with EOS) but '
                     f'--targets is {targets}; raise --targets.')
  order = np.random.default_rng(seed).permutation(len(examples))
  rows = [examples[i] for i in order]
  vocab = os.environ.get(tasks.VOCAB_ENV)
  meta = {'task': task_key, 'seqio_task': name, 'split': split, 'note': note,
          'num_examples': len(rows), 'inputs_limit': inputs, 'targets_limit': targets,
          'num_inputs_truncated': truncated, 'longest_target': longest_target,
          'target_texts': sorted({str(e['targets_pretokenized']) for e in examples}),
          'shuffle_seed': seed, 'vocabulary': vocab,
          'vocabulary_sha256': _sha256(vocab) if vocab and os.path.isfile(vocab) else None}
  save_examples(out, [e['inputs'] for e in rows], [e['targets'] for e in rows], meta,
                source_index=order)
  return meta


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def save_examples(path: str, inputs: list, targets: list, meta: dict,
                  source_index: Optional[np.ndarray] = None) -> None:
  """Concatenated ids (uint16 while the vocabulary fits) + offsets, and the metadata as JSON."""
  def pack(rows):
    ids = np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else np.zeros(0)
    dtype = np.uint16 if ids.size == 0 or ids.max() < 1 << 16 else np.int32
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return ids.astype(dtype), offsets

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  inputs_ids, inputs_offsets = pack(inputs)
  targets_ids, targets_offsets = pack(targets)
  extra = {} if source_index is None else {'source_index': np.asarray(source_index, np.int32)}
  np.savez_compressed(path, inputs_ids=inputs_ids, inputs_offsets=inputs_offsets,
                      targets_ids=targets_ids, targets_offsets=targets_offsets,
                      meta=np.array(json.dumps(meta)), **extra)


def load_examples(path: str) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
  with np.load(path) as f:
    meta = json.loads(str(f['meta']))

    def unpack(name):
      ids, offsets = f[f'{name}_ids'].astype(np.int32), f[f'{name}_offsets']
      return [ids[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return unpack('inputs'), unpack('targets'), meta


def t5x_batch(inputs: list, targets: list, indices, widths: tuple[int, int]) -> dict:
  """The T5X batch the pipeline yields for these examples, right-padded to `widths`."""
  n = len(indices)
  enc = np.zeros((n, widths[0]), np.int32)
  tgt = np.zeros((n, widths[1]), np.int32)
  for row, i in enumerate(indices):
    enc[row, :len(inputs[i])] = inputs[i]
    tgt[row, :len(targets[i])] = targets[i]
  dec_in = np.concatenate([np.zeros((n, 1), np.int32), tgt[:, :-1]], axis=1)
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in,
          'decoder_target_tokens': tgt, 'decoder_loss_weights': (tgt > 0).astype(np.int32)}


# ----------------------------------------------------------------------------------------------
# Batch orders and their padding (NumPy; the HF order needs torch + transformers).


def epoch_batches(inputs: list, targets: list, batch: int, window: int, seed: int,
                  modes: list[str]) -> dict[str, list[np.ndarray]]:
  """Each mode's full batches of one epoch, as index arrays into the (shuffled) examples."""
  from prompt_tuning.data import batching

  n = len(inputs)
  consecutive = list(np.arange(n // batch * batch).reshape(-1, batch))
  out = {}
  for mode in modes:
    if mode in ('ours_default', 'peft_dynamic', 'ours_fixed'):
      out[mode] = consecutive
    elif mode == 'ours_grouped':
      out[mode] = [b['index'] for b in batching.group_in_windows(
          _windows(inputs, targets, batch * window), batch, window, seed)]
    elif mode == 'peft_grouped':
      import torch
      from transformers.trainer_pt_utils import get_length_grouped_indices
      order = get_length_grouped_indices([len(x) for x in inputs], batch,
                                         generator=torch.Generator().manual_seed(seed))
      order = np.asarray(order[:n // batch * batch])  # the last partial batch is left out
      out[mode] = list(order.reshape(-1, batch))
  return out


def _windows(inputs: list, targets: list, size: int):
  """Consecutive runs of `size` examples as the one big batch group_in_windows sorts (padded
  to the run's longest rows; 'index' says which examples)."""
  for start in range(0, len(inputs) // size * size, size):
    idx = np.arange(start, start + size)
    big = t5x_batch(inputs, targets, idx, (max(len(inputs[i]) for i in idx),
                                           max(len(targets[i]) for i in idx)))
    yield {'encoder_input_tokens': big['encoder_input_tokens'],
           'decoder_target_tokens': big['decoder_target_tokens'], 'index': idx}


def sample_positions(num_batches: int, steps: int) -> list[int]:
  """A systematic sample of `steps` of `num_batches` positions, one in the middle of each
  1/steps."""
  if steps >= num_batches:
    return list(range(num_batches))
  return sorted({int((i + 0.5) * num_batches / steps) for i in range(steps)})


def length_stratified(batches: list, inputs: list, steps: int) -> list:
  """`steps` of `batches`, stratified by length: the batches sorted by their longest input,
  then a systematic sample of that order (so the sample's lengths are the epoch's quantiles,
  whatever order the mode puts them in); returned in the mode's own (epoch) order."""
  longest = [max(len(inputs[i]) for i in idx) for idx in batches]
  return [batches[k] for k in stratified_positions(longest, steps)]


def stratified_positions(longest: list[int], steps: int) -> list[int]:
  """Which `steps` of the batches whose longest rows are `longest` `length_stratified` picks
  (their positions, in epoch order)."""
  by_length = sorted(range(len(longest)), key=lambda k: (longest[k], k))
  return sorted(by_length[p] for p in sample_positions(len(longest), steps))


def batch_shape(mode: str, inputs: list, targets: list, idx, buckets: dict,
                limits: tuple[int, int]) -> tuple[int, int]:
  """(input width, target width) that `mode` pads this batch to."""
  from prompt_tuning.data import batching

  longest = (max(len(inputs[i]) for i in idx), max(len(targets[i]) for i in idx))
  if mode == 'ours_fixed':
    return limits
  if SIDE[mode] == 'ours':
    return (batching.bucket_for(longest[0], buckets['inputs']),
            batching.bucket_for(longest[1], buckets['targets']))
  return longest  # dynamic padding: the longest row


def padding_stats(mode: str, inputs: list, targets: list, batches: list, buckets: dict,
                  limits: tuple[int, int], prompt: int) -> dict:
  examples = real = padded = real_inputs = padded_inputs = 0
  shapes = set()
  for idx in batches:
    width = batch_shape(mode, inputs, targets, idx, buckets, limits)
    shapes.add(width)
    examples += len(idx)
    real_inputs += sum(len(inputs[i]) for i in idx)
    real += sum(len(inputs[i]) + len(targets[i]) for i in idx)
    padded_inputs += len(idx) * width[0]
    padded += len(idx) * (width[0] + width[1])
  return {'batches': len(batches), 'examples': examples, 'real_tokens': real,
          'padded_tokens': padded, 'padding_fraction': 1 - real / padded if padded else None,
          'input_padding_fraction': 1 - real_inputs / padded_inputs if padded_inputs else None,
          'mean_input_width': padded_inputs / examples if examples else None,
          'computed_positions_with_prompt': padded + examples * prompt,
          'distinct_shapes': len(shapes)}


# ----------------------------------------------------------------------------------------------
# Workers: one long-lived process per side, driven over stdin/stdout (one JSON line each way).


class Worker:
  """A side's process: `call(cmd)` sends one command and waits for its one-line reply."""

  def __init__(self, side: str, spec: dict, directory: str, module: str = 'benchmarks.real_data'):
    spec_file = os.path.join(directory, f'{side}_spec.json')
    with open(spec_file, 'w') as f:
      json.dump(spec, f)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (repo, os.environ.get('PYTHONPATH')) if p)
    env = {**os.environ, 'PYTHONPATH': path}
    if side == 'ours':  # torch shares the device: JAX must not take most of its memory
      env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
      if spec.get('xla_flags'):
        env['XLA_FLAGS'] = f"{env.get('XLA_FLAGS', '')} {spec['xla_flags']}".strip()
    self.side = side
    self.proc = subprocess.Popen(
        [sys.executable, '-m', module, '--worker', side, '--spec', spec_file],
        cwd=repo, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=common._die_with_parent)  # noqa: SLF001

  def call(self, cmd: str, **kwargs) -> dict:
    self.send(cmd, **kwargs)
    return self.reply(cmd)

  def send(self, cmd: str, **kwargs) -> None:
    """Sends a command without waiting (`reply` collects its answer): workers run at once."""
    self.proc.stdin.write(json.dumps({'cmd': cmd, **kwargs}) + '\n')
    self.proc.stdin.flush()

  def reply(self, cmd: str) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait()
      raise RuntimeError(f'the {self.side} worker exited with {code} during {cmd!r} '
                         f'(its stderr is above)')
    reply = json.loads(line)
    if 'error' in reply:
      raise RuntimeError(f'{self.side} worker, {cmd!r}: {reply["error"]}')
    return reply

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.call('quit')
      except (RuntimeError, BrokenPipeError, OSError):
        pass
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()


def worker_main(side: str, spec_file: str, impls: Optional[dict] = None) -> None:
  """The worker loop: replies go to the original stdout; everything else printed goes to
  stderr (libraries may print). `impls`: side -> the class that serves it (default: this
  benchmark's OursWorker and PeftWorker)."""
  reply_to = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)
  with open(spec_file) as f:
    spec = json.load(f)
  if side == 'ours' and spec.get('library_xla_flags', True):
    from prompt_tuning.train import xla_cpu
    xla_cpu.apply()  # before JAX starts, as `prompt-tuning train` does
  impls = impls or {'ours': OursWorker, 'peft': PeftWorker}
  impl = impls[side](spec)
  for line in sys.stdin:
    msg = json.loads(line)
    if msg['cmd'] == 'quit':
      break
    try:
      out = getattr(impl, msg['cmd'])(**{k: v for k, v in msg.items() if k != 'cmd'})
    except Exception as e:  # noqa: BLE001 - reported to the parent, which stops
      import traceback
      traceback.print_exc()
      out = {'error': f'{type(e).__name__}: {e}'}
    reply_to.write(json.dumps(out) + '\n')
    reply_to.flush()


def timed_steps(step, batches: list, sync) -> dict:
  times = []
  snapshot = common.cpu_snapshot()
  for batch in batches:
    start = time.perf_counter()
    sync(step(batch))
    times.append(time.perf_counter() - start)
  return {'step_s': times, 'total_s': sum(times), 'contention': common.other_cpu_use(snapshot)}


class OursWorker:
  """PromptTrainer's compiled step, one executable per batch shape."""

  def __init__(self, spec: dict):
    import jax
    self.spec = spec
    self.dtype = spec['dtype'] or ('float32' if jax.default_backend() == 'cpu' else 'bfloat16')

  def setup(self) -> dict:
    import jax
    from prompt_tuning.data import batching
    from prompt_tuning.models import prompt as prompt_lib
    from prompt_tuning.models import t5
    from prompt_tuning.train import optim, partitioning
    from prompt_tuning.train.trainer import PromptTrainer

    spec = self.spec
    started = time.perf_counter()
    config = t5.T5Config.preset(spec['size'], dtype=self.dtype)
    prompt_config = prompt_lib.PromptConfig(spec['prompt'])
    frozen = common.random_frozen_params(config, prompt_config, spec['frozen_dtype'],
                                         spec['seed'])
    self.trainer = PromptTrainer(config, prompt_config, frozen,
                                 optim.adafactor(spec['learning_rate']),
                                 frozen_dtype=spec['frozen_dtype'])
    del frozen
    self.state = self.trainer.init_state(
        common.random_prompt(spec['prompt'], config.d_model, spec['seed']))
    model_s = time.perf_counter() - started

    inputs, targets, _ = load_examples(spec['data'])
    limits = (spec['inputs'], spec['targets'])
    buckets = batching.resolve('auto', {'inputs': limits[0], 'targets': limits[1]})
    self.batches, shapes = {}, {}
    for mode, index_lists in spec['timed'].items():
      arrays = []
      for idx in index_lists:
        full = t5x_batch(inputs, targets, idx, limits)
        trimmed = full if mode == 'ours_fixed' else batching.trim(full, buckets)
        shape = (trimmed['encoder_input_tokens'].shape[1],
                 trimmed['decoder_target_tokens'].shape[1])
        shapes.setdefault(shape, {k: v.shape for k, v in trimmed.items()})
        arrays.append((shape, partitioning.global_batch(trimmed, self.trainer.mesh)))
      self.batches[mode] = arrays

    self.compiled, compile_s = {}, {}
    for shape, batch_shapes in sorted(shapes.items()):
      start = time.perf_counter()
      self.compiled[shape] = self.trainer.lower_train_step(batch_shapes).compile()
      compile_s[f'{shape[0]}x{shape[1]}'] = time.perf_counter() - start
    warm_s = {}  # each shape's first run(s), untimed in the results
    one_of = {shape: batch for arrays in self.batches.values() for shape, batch in arrays}
    for shape, batch in sorted(one_of.items()):
      for _ in range(self.spec['warm_runs']):
        start = time.perf_counter()
        jax.block_until_ready(self._step((shape, batch)))
        warm_s.setdefault(f'{shape[0]}x{shape[1]}', []).append(time.perf_counter() - start)
    return {'dtype': self.dtype, 'machine': common.machine_info(), 'model_setup_s': model_s,
            'distinct_shapes': len(self.compiled),
            'shapes_per_mode': {m: sorted({f'{s[0]}x{s[1]}' for s, _ in a})
                                for m, a in self.batches.items()},
            'compile_s_total': sum(compile_s.values()), 'compile_s': compile_s,
            'warm_run_s': warm_s}

  def _step(self, item):
    shape, batch = item
    self.state, metrics = self.compiled[shape](self.state, self.trainer.frozen, batch)
    return metrics

  def run(self, mode: str) -> dict:
    import jax
    return timed_steps(self._step, self.batches[mode], jax.block_until_ready)

  def finish(self) -> dict:
    return {'memory': common.jax_memory()}


class PeftWorker:
  """HF PEFT prompt tuning (benchmarks.peft_side's model and Adafactor), dynamic padding."""

  def __init__(self, spec: dict):
    from benchmarks import peft_side
    self.spec = spec
    self.device = peft_side.device_of(spec)
    self.dtype = spec['dtype'] or ('float32' if self.device.type == 'cpu' else 'bfloat16')

  def setup(self) -> dict:
    import torch
    from benchmarks import peft_side

    spec = {**self.spec, 'dtype': self.dtype}
    self.spec = spec
    started = time.perf_counter()
    self.model = peft_side.peft_model(spec, self.device)
    self.model.train()  # dropout is 0
    trainable = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = peft_side.optimizer(spec, trainable)
    model_s = time.perf_counter() - started
    inputs, targets, _ = load_examples(spec['data'])

    def collate(idx):  # DataCollatorForSeq2Seq: pad to the longest row; labels with -100
      width = (max(len(inputs[i]) for i in idx), max(len(targets[i]) for i in idx))
      ids = np.zeros((len(idx), width[0]), np.int64)
      mask = np.zeros_like(ids)
      labels = np.full((len(idx), width[1]), LABEL_PAD, np.int64)
      for row, i in enumerate(idx):
        ids[row, :len(inputs[i])] = inputs[i]
        mask[row, :len(inputs[i])] = 1
        labels[row, :len(targets[i])] = targets[i]
      return {k: torch.from_numpy(v).to(self.device)
              for k, v in (('input_ids', ids), ('attention_mask', mask), ('labels', labels))}

    self.batches = {mode: [collate(idx) for idx in index_lists]
                    for mode, index_lists in spec['timed'].items()}
    self.wait = peft_side.sync(self.device)
    first = next(iter(self.batches.values()))[0]
    start = time.perf_counter()
    self.wait(self._step(first))
    warmup_s = time.perf_counter() - start
    import peft
    import transformers
    return {'dtype': self.dtype, 'device': str(self.device), 'model_setup_s': model_s,
            'warmup_step_s': warmup_s, 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'transformers': transformers.__version__,
            'peft': peft.__version__, 'trainable_params': sum(p.numel() for p in trainable)}

  def _step(self, batch):
    from benchmarks import peft_side
    with peft_side.autocast(self.spec, self.device):
      loss = self.model(**batch).loss
    loss.backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return loss.detach()

  def run(self, mode: str) -> dict:
    return timed_steps(self._step, self.batches[mode], self.wait)

  def finish(self) -> dict:
    from benchmarks import peft_side
    return {'memory': peft_side.memory(self.device)}


# ----------------------------------------------------------------------------------------------
# The train benchmark (parent: NumPy, plus torch/transformers for HF's grouped order).


def rates(stats: dict, total_s: float) -> dict:
  return {'examples_per_s': stats['examples'] / total_s,
          'real_tokens_per_s': stats['real_tokens'] / total_s,
          'padded_tokens_per_s': stats['padded_tokens'] / total_s,
          'seconds': total_s}


def run_train(args: argparse.Namespace) -> dict:
  from prompt_tuning.data import batching

  started = common.cpu_snapshot()
  modes = [m for m in MODES if m in args.modes.split(',')]
  with tempfile.TemporaryDirectory() as tmp:
    data = args.data
    if data is None:  # tokenize in a child: this process stays free of TensorFlow
      data = os.path.join(tmp, 'data.npz')
      start = time.perf_counter()
      subprocess.run([sys.executable, '-m', 'benchmarks.real_data', '--task', args.task,
                      '--inputs', str(args.inputs), '--targets', str(args.targets),
                      '--seed', str(args.seed), '--prepare_only', '--out', data],
                     check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      prepare_s = time.perf_counter() - start
    else:
      prepare_s = None
    inputs, targets, meta = load_examples(data)
    if (meta['inputs_limit'], meta['targets_limit']) != (args.inputs, args.targets):
      raise SystemExit(f"{data} was prepared for inputs {meta['inputs_limit']}, targets "
                       f"{meta['targets_limit']}; this run asks {args.inputs}, {args.targets}.")
    if meta['task'] != args.task:
      raise SystemExit(f"{data} holds task {meta['task']!r}, not {args.task!r}.")
    window = max(1, min(args.window, len(inputs) // args.batch))
    epoch = epoch_batches(inputs, targets, args.batch, window, args.seed, modes)
    limits = (args.inputs, args.targets)
    buckets = batching.resolve('auto', feature_lengths(args))
    timed, per_mode = {}, {}
    for mode in modes:
      steps = args.fixed_steps if mode == 'ours_fixed' else args.steps
      chosen = length_stratified(epoch[mode], inputs, steps)
      timed[mode] = [idx.tolist() for idx in chosen]
      per_mode[mode] = {
          'side': SIDE[mode], 'timed': padding_stats(mode, inputs, targets, chosen, buckets,
                                                     limits, args.prompt),
          'epoch': padding_stats(mode, inputs, targets, epoch[mode], buckets, limits,
                                 args.prompt)}

    spec = {'data': data, 'size': args.size, 'prompt': args.prompt, 'inputs': args.inputs,
            'targets': args.targets, 'dtype': args.dtype, 'frozen_dtype': args.frozen_dtype,
            'seed': args.seed, 'learning_rate': args.learning_rate, 'optimizer': 'adafactor',
            'warm_runs': args.warm_runs, 'xla_flags': args.xla_flags,
            'library_xla_flags': not args.no_library_xla_flags,
            'device': args.peft_device}
    sides = sorted({SIDE[m] for m in modes}, reverse=True)  # peft first: it starts first
    workers = {}
    try:
      setup = {}
      for side in sides:  # one at a time: the other is not started or idle
        side_spec = {**spec, 'timed': {m: timed[m] for m in modes if SIDE[m] == side}}
        if side == 'peft':
          from prompt_tuning.models import t5  # the dims only; no JAX backend starts
          side_spec['dims'] = common.hf_dims(t5.T5Config.preset(args.size))
        workers[side] = Worker(side, side_spec, tmp)
        setup[side] = workers[side].call('setup')
      runs = {m: [] for m in modes}
      for repeat in range(args.repeats):
        order = modes if repeat % 2 == 0 else swap_pairs(modes)
        for mode in order:
          if mode == 'ours_fixed' and repeat >= args.fixed_repeats:
            continue
          print(f'[real_data] repeat {repeat + 1}/{args.repeats}: {mode}', file=sys.stderr,
                flush=True)
          runs[mode].append(workers[SIDE[mode]].call('run', mode=mode))
      finish = {side: w.call('finish') for side, w in workers.items()}
    finally:
      for w in workers.values():
        w.close()

  for mode in modes:
    best = min(runs[mode], key=lambda r: r['total_s'])
    per_mode[mode].update(rates(per_mode[mode]['timed'], best['total_s']))
    per_mode[mode]['repeats'] = runs[mode]
    per_mode[mode]['best_repeat'] = runs[mode].index(best)
  ratios = {}
  for ours, peft in RATIOS:
    if ours in per_mode and peft in per_mode:
      ratios[f'{ours}/{peft}'] = {
          'examples_per_s': per_mode[ours]['examples_per_s'] / per_mode[peft]['examples_per_s'],
          'real_tokens_per_s': (per_mode[ours]['real_tokens_per_s']
                                / per_mode[peft]['real_tokens_per_s'])}
  dtypes = {side: s['dtype'] for side, s in setup.items()}
  machine = setup['ours']['machine'] if 'ours' in setup else {}
  machine['cpu_contention'] = common.other_cpu_use(started)
  lengths = np.array([len(x) for x in inputs])
  return {
      'benchmark': 'real_data', 'machine': machine,
      'config': {'task': args.task, 'size': args.size, 'batch': args.batch,
                 'inputs': args.inputs, 'targets': args.targets, 'prompt': args.prompt,
                 'dtype': dtypes, 'frozen_dtype': args.frozen_dtype, 'optimizer': 'adafactor',
                 'steps': args.steps, 'fixed_steps': args.fixed_steps, 'repeats': args.repeats,
                 'fixed_repeats': min(args.fixed_repeats, args.repeats),
                 'warm_runs': args.warm_runs, 'window': window, 'seed': args.seed,
                 'buckets': {k: list(v) for k, v in buckets.items()}},
      'data': {**meta, 'file': os.path.abspath(args.data) if args.data else None,
               'prepare_s': prepare_s,
               'input_length': {'mean': float(lengths.mean()), 'median': float(np.median(lengths)),
                                'p90': float(np.percentile(lengths, 90)),
                                'max': int(lengths.max())}},
      'setup': setup, 'finish': finish, 'modes': per_mode, 'ratios': ratios}


def swap_pairs(modes: list[str]) -> list[str]:
  """ours, peft, ours, peft -> peft, ours, peft, ours (the other side starts this repeat); a
  mode's side is its name's first word."""
  out = list(modes)
  for i in range(0, len(out) - 1, 2):
    if out[i].split('_')[0] != out[i + 1].split('_')[0]:
      out[i], out[i + 1] = out[i + 1], out[i]
  return out


# ----------------------------------------------------------------------------------------------
# The eval benchmark (ours only; Evaluator needs SeqIO to tokenize, so TF is loaded here).


def _eval_batches(ev):
  """The batches an Evaluator runs (the runner's, at its batch size and buckets)."""
  from prompt_tuning.inference import runner
  return runner.batches(ev.inputs, ev.batch_size,
                        buckets=None if ev.buckets is None else ev.buckets['inputs'])


def run_eval(args: argparse.Namespace) -> dict:
  started = common.cpu_snapshot()
  users_xla_flags = os.environ.get('XLA_FLAGS')  # for the 'before' child
  if args.xla_flags:
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
  if not args.no_library_xla_flags:
    from prompt_tuning.train import xla_cpu
    xla_cpu.apply()
  import jax
  from prompt_tuning.data import batching
  from prompt_tuning.inference import decoding, evaluation, runner
  from prompt_tuning.models import prompt as prompt_lib
  from prompt_tuning.models import t5

  dtype = args.dtype or ('float32' if jax.default_backend() == 'cpu' else 'bfloat16')
  name = TASKS[args.task][0]
  lengths = feature_lengths(args)
  methods = tuple(args.eval_methods.split(','))
  ways = {way: None if way == 'fixed' else batching.resolve('auto', lengths)
          for way in args.eval_ways.split(',')}
  evaluators = {way: evaluation.Evaluator(name, EVAL_SPLIT, lengths, methods=methods,
                                          batch_size=args.eval_batch, buckets=buckets,
                                          max_examples=args.eval_max_examples)
                for way, buckets in ways.items()}
  config = t5.T5Config.preset(args.size, dtype=dtype)
  prompt_config = prompt_lib.PromptConfig(args.prompt)
  model = t5.EncoderDecoder(config, prompt_config)
  frozen = common.random_frozen_params(config, prompt_config, args.frozen_dtype, args.seed)
  prompt = common.random_prompt(args.prompt, config.d_model, args.seed)
  params = prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(prompt))
  runner_model = runner.PromptedModel.of(model, params)

  # What the Evaluator calls per batch, wrapped to time each call (synced: the results come
  # back to the host) and to keep rank's scores: its labels alone say little when a random
  # model prefers one label everywhere.
  score_candidates, calls = decoding.score_candidates, []

  def timed_scores(model_, params_, rows, candidates, prompt_ids=None):
    start = time.perf_counter()
    out = np.asarray(score_candidates(model_, params_, rows, candidates, prompt_ids=prompt_ids))
    calls.append((rows.shape[1], time.perf_counter() - start, out))
    return out

  class TimedDecoding:
    def __init__(self, config_):
      self.config = config_

    def generate(self, model_, params_, rows, length, prompt_ids=None):
      start = time.perf_counter()
      out = self.config.generate(model_, params_, rows, length, prompt_ids=prompt_ids)
      calls.append((rows.shape[1], time.perf_counter() - start, None))
      return out

  for ev in evaluators.values():
    ev.decoding_config = TimedDecoding(ev.decoding_config)

  def one_batch(way: str, method: str, rows) -> float:
    ev, start = evaluators[way], time.perf_counter()
    if method == 'generate':
      ev.decoding_config.config.generate(model, params, rows, ev.target_length)
    else:
      np.asarray(score_candidates(model, params, rows, ev.label_targets))
    return time.perf_counter() - start

  # Before timing: every distinct shape once (its compile and first run).
  result_ways = {}
  for way, ev in evaluators.items():
    batches = [(i, rows) for i, rows, _ in _eval_batches(ev)]  # the shapes the Evaluator runs
    widths = sorted({rows.shape[1] for _, rows in batches})
    first_of = {rows.shape[1]: rows for _, rows in reversed(batches)}
    info = {'batches': len(batches), 'distinct_shapes': len(widths), 'widths': widths,
            'batches_per_width': {w: sum(r.shape[1] == w for _, r in batches) for w in widths},
            'computed_input_positions': int(sum(rows.size for _, rows in batches)),
            'real_input_tokens': int(sum(len(e['inputs']) for e in ev.examples)),
            'label_targets_width': (int(ev.label_targets.shape[1])
                                    if hasattr(ev, 'label_targets') else None)}
    for method in methods:
      info[method] = {'first_call_s': {w: one_batch(way, method, first_of[w]) for w in widths}}
    result_ways[way] = info

  decoding.score_candidates = timed_scores
  predictions, scores = {}, {}
  try:
    for _ in range(args.eval_repeats):
      for method in methods:
        for way in ways:
          ev = evaluators[way]
          calls.clear()
          snapshot = common.cpu_snapshot()
          start = time.perf_counter()
          preds = ev.generate(runner_model) if method == 'generate' else ev.rank(runner_model)
          seconds = time.perf_counter() - start
          timing = result_ways[way][method]
          timing.setdefault('seconds_all', []).append(seconds)
          timing.setdefault('contention', []).append(common.other_cpu_use(snapshot))
          if seconds <= min(timing['seconds_all']):
            timing['seconds'] = seconds
            timing['batch_s'] = [[w, t] for w, t, _ in calls]
          predictions[(way, method)] = preds
          if method == 'rank':
            per_example = np.zeros((len(ev.examples), len(ev.info.labels)), np.float64)
            for (indices, _, _), (_, _, batch_scores) in zip(_eval_batches(ev), calls):
              per_example[indices] = batch_scores[:len(indices)]
            scores[way] = per_example
          print(f'[real_data eval] {method} {way}: {seconds:.1f} s', file=sys.stderr, flush=True)
  finally:
    decoding.score_candidates = score_candidates

  for info in result_ways.values():
    for method in methods:
      timing = info[method]
      steady = {w: float(np.median([t for width, t in timing['batch_s'] if width == w]))
                for w in info['widths']}
      timing['steady_batch_s'] = steady
      # Compile (and first-run) time: each shape's first call minus its steady batch time.
      timing['compile_s'] = sum(max(0.0, timing['first_call_s'][w] - steady[w])
                                for w in info['widths'])

  comparison = {}
  for method in methods if set(ways) == {'fixed', 'auto'} else ():
    fixed, auto = predictions[('fixed', method)], predictions[('auto', method)]
    mismatched = [i for i, (a, b) in enumerate(zip(fixed, auto)) if a != b]
    seconds = {way: result_ways[way][method]['seconds'] for way in ways}
    comparison[method] = {
        'speedup': seconds['fixed'] / seconds['auto'],
        'examples_per_s_fixed': len(fixed) / seconds['fixed'],
        'examples_per_s_auto': len(auto) / seconds['auto'],
        'speedup_with_compile': ((seconds['fixed'] + result_ways['fixed'][method]['compile_s'])
                                 / (seconds['auto'] + result_ways['auto'][method]['compile_s'])),
        'predictions_identical': not mismatched and len(fixed) == len(auto),
        'mismatched': len(mismatched), 'mismatched_examples': mismatched[:20],
        'distinct_predictions': len(set(fixed))}
    if method == 'rank':
      diff = np.abs(scores['fixed'] - scores['auto'])
      top2 = np.sort(scores['fixed'], axis=1)[:, -2:]
      comparison[method].update(
          score_max_abs_diff=float(diff.max()),
          score_max_rel_diff=float((diff / np.maximum(np.abs(scores['fixed']), 1e-30)).max()),
          min_label_margin=float((top2[:, 1] - top2[:, 0]).min()))
  before = None
  if not args.no_eval_before and 'auto' in ways:
    before = _eval_before(args, users_xla_flags)
    for method in methods:
      seconds, compile_s = before['ways']['fixed'][method]['seconds'], before['ways']['fixed'][
          method]['compile_s']
      auto, auto_info = predictions[('auto', method)], result_ways['auto'][method]
      comparison[method].update(
          speedup_vs_before=seconds / auto_info['seconds'],
          speedup_vs_before_with_compile=(seconds + compile_s) / (
              auto_info['seconds'] + auto_info['compile_s']),
          mismatched_vs_before=sum(a != str(b) for a, b in zip(before['predictions'][method],
                                                                auto)))
  machine = common.machine_info()
  machine['cpu_contention'] = common.other_cpu_use(started)
  ex = next(iter(evaluators.values())).examples
  return {'benchmark': 'real_data_eval', 'machine': machine,
          'config': {'task': args.task, 'seqio_task': name, 'split': EVAL_SPLIT,
                     'size': args.size, 'inputs': args.inputs, 'targets': args.targets,
                     'prompt': args.prompt, 'batch': args.eval_batch, 'dtype': dtype,
                     'frozen_dtype': args.frozen_dtype, 'methods': list(methods),
                     'decoding': 'greedy', 'repeats': args.eval_repeats,
                     'buckets_auto': ({k: list(v) for k, v in ways['auto'].items()}
                                      if ways.get('auto') else None)},
          'data': {'examples': len(ex), 'max_examples': args.eval_max_examples,
                   'num_truncated': next(iter(evaluators.values())).num_truncated},
          'ways': result_ways, 'comparison': comparison,
          'predictions': {m: [str(p) for p in predictions[(way, m)]] for way in ways
                          for m in methods} if len(ways) == 1 else None,
          'before': before and {k: before[k] for k in ('machine', 'ways')}}


def _eval_before(args: argparse.Namespace, users_xla_flags: Optional[str]) -> dict:
  """The fixed way in a child process without the library's XLA:CPU flags."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'before.json')
    argv = [sys.executable, '-m', 'benchmarks.real_data', '--eval', '--task', args.task,
            '--eval_ways', 'fixed', '--no_library_xla_flags', '--no_eval_before', '--json', out,
            '--size', args.size, '--inputs', str(args.inputs), '--targets', str(args.targets),
            '--prompt', str(args.prompt), '--eval_batch', str(args.eval_batch),
            '--eval_methods', args.eval_methods, '--eval_repeats', str(args.eval_repeats),
            '--seed', str(args.seed), '--frozen_dtype', args.frozen_dtype]
    for flag, value in (('--dtype', args.dtype), ('--eval_max_examples', args.eval_max_examples),
                        ('--xla_flags', args.xla_flags)):
      if value:
        argv += [flag, str(value)]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    if users_xla_flags is not None:
      env['XLA_FLAGS'] = users_xla_flags
    subprocess.run(argv, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
      result = json.load(f)
  # Each prediction in the order the Evaluator returns them (one list per method).
  result['predictions'] = {m: result['predictions'][m] for m in result['config']['methods']}
  return result


# ----------------------------------------------------------------------------------------------
# Reporting.

TABLE_HEADER = ('| machine | task (split) | size | B | ours default ex/s | PEFT dynamic ex/s '
                '| ours grouped ex/s | PEFT grouped ex/s | ours fixed ex/s | default / dynamic '
                '| grouped / group_by_length | grouped / dynamic |\n'
                '|---|---|---|---|---|---|---|---|---|---|---|---|')


def table_row(result: dict) -> str:
  """One row per run: each mode's examples/s and the three ours / PEFT ratios."""
  c, d, modes = result['config'], result['data'], result['modes']
  machine = common.describe(result['machine']) if 'backend' in result['machine'] else '—'
  cells = [common.fmt(modes.get(m, {}).get('examples_per_s')) for m in MODES]
  ratios = [common.fmt(result['ratios'].get(f'{o}/{p}', {}).get('examples_per_s'))
            for o, p in RATIOS]
  return (f"| {machine} | {c['task']} ({d['split']}) | {c['size']} | {c['batch']} | "
          + ' | '.join(cells) + ' | ' + ' | '.join(f'**{r}**' for r in ratios) + ' |')


DETAIL_HEADER = ('| task | B | mode | ex/s | real tok/s | padded tok/s | padding (inputs) '
                 '| epoch padding (inputs) | mean input width | timed batches | shapes '
                 '| s per repeat |\n'
                 '|---|---|---|---|---|---|---|---|---|---|---|---|')


def detail_rows(result: dict) -> str:
  """One markdown row per mode: rates, padding of the timed batches and of the epoch."""
  c, rows = result['config'], []
  shapes = result['setup'].get('ours', {}).get('shapes_per_mode', {})
  for mode, m in result['modes'].items():
    if 'examples_per_s' not in m:
      continue
    t, e = m['timed'], m['epoch']
    repeats = ' / '.join(common.fmt(r['total_s'], 1) for r in m['repeats'])
    rows.append(
        f"| {c['task']} | {c['batch']} | {mode} | {common.fmt(m['examples_per_s'])} "
        f"| {common.fmt(m['real_tokens_per_s'], 0)} | {common.fmt(m['padded_tokens_per_s'], 0)} "
        f"| {common.fmt(100 * t['padding_fraction'], 1)}% "
        f"({common.fmt(100 * t['input_padding_fraction'], 1)}%) "
        f"| {common.fmt(100 * e['padding_fraction'], 1)}% "
        f"({common.fmt(100 * e['input_padding_fraction'], 1)}%) "
        f"| {common.fmt(t['mean_input_width'], 0)} (epoch {common.fmt(e['mean_input_width'], 0)}) "
        f"| {t['batches']} | {len(shapes[mode]) if mode in shapes else '—'} | {repeats} |")
  return '\n'.join(rows)


EVAL_TABLE_HEADER = ('| machine | task | size | B | L+P / T | method | before s | fixed s | auto s '
                     '| auto vs before | auto vs fixed | identical | compile s fixed / auto |\n'
                     '|---|---|---|---|---|---|---|---|---|---|---|---|---|')


def eval_table_row(result: dict) -> str:
  """before: fixed shape without the library's XLA:CPU flags (eval before this change); fixed:
  fixed shape with them; auto: buckets with them."""
  c, ways, before = result['config'], result['ways'], result.get('before')
  rows = []
  for method, comp in result['comparison'].items():
    before_s = before['ways']['fixed'][method]['seconds'] if before else None
    rows.append(
        f"| {common.describe(result['machine'])} | {c['task']} ({result['data']['examples']}) "
        f"| {c['size']} | {c['batch']} | {c['inputs']}+{c['prompt']} / {c['targets']} "
        f"| {method} | {common.fmt(before_s, 1)} "
        f"| {common.fmt(ways['fixed'][method]['seconds'], 1)} "
        f"| {common.fmt(ways['auto'][method]['seconds'], 1)} "
        f"| **{common.fmt(comp.get('speedup_vs_before'))}** | {common.fmt(comp['speedup'])} "
        f"| {'yes' if comp['predictions_identical'] else 'NO (%d)' % comp['mismatched']} "
        f"| {common.fmt(ways['fixed'][method]['compile_s'], 1)} / "
        f"{common.fmt(ways['auto'][method]['compile_s'], 1)} |")
  return '\n'.join(rows)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    worker_main(args.worker, args.spec)
    return
  if args.prepare_only:
    meta = prepare(args.task, args.inputs, args.targets, args.seed, args.out)
    print(json.dumps({**meta, 'out': args.out, 'bytes': os.path.getsize(args.out)}, indent=2))
    return
  if args.eval:
    result = run_eval(args)
    common.emit(result, args.json, EVAL_TABLE_HEADER, eval_table_row(result))
    return
  result = run_train(args)
  common.emit(result, args.json, TABLE_HEADER, table_row(result))
  print(f'\n{DETAIL_HEADER}\n{detail_rows(result)}')


if __name__ == '__main__':
  main()
