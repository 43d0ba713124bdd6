"""Where does our train step spend its time? A per-op profile of the compiled step.

  python -m benchmarks.profile_step --size small --batch 8 --inputs 128 --prompt 20 --targets 8

Runs a few steps under `jax.profiler.trace`, reads the XLA ops' events back from the trace, and
attributes each op to a model component (attention / MLP / logits / embedding / loss / ...) and to
the forward or the backward pass through the `op_name` metadata of the compiled HLO. Prints the
components' shares and the top ops. Same flags as benchmarks.train_step (no --peft).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from prompt_tuning.testing import synthetic_batch  # noqa: E402
from benchmarks import train_step  # noqa: E402

# First match wins: the more specific names come first.
COMPONENTS = (
    ('logits', ('logits_dense',)),
    ('loss', ('cross_entropy', 'losses', 'log_softmax', 'logsumexp', 'one_hot', 'argmax')),
    ('embedding', ('token_embedder', 'shared_embedding', 'Embed')),
    ('prompt', ('prompt',)),
    ('relpos', ('relpos_bias',)),
    ('attention', ('attention',)),
    ('mlp', ('mlp',)),
    ('layer_norm', ('layer_norm', '_norm')),
    ('optimizer', ('adafactor', 'optax', 'apply_updates', 'update')),
)
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s.*?metadata=\{[^}]*?op_name="([^"]*)"')


def op_names(hlo_text: str) -> dict:
  """HLO instruction name -> its JAX op_name metadata (the source path in the model)."""
  return {m.group(1): m.group(2) for m in map(_INSTRUCTION.match, hlo_text.splitlines()) if m}


def component(op_name: str) -> str:
  where = 'bwd' if 'transpose(' in op_name else 'fwd'
  for name, needles in COMPONENTS:
    if any(n in op_name for n in needles):
      if name == 'attention':  # Projections (weight matmuls) vs scores/softmax/weighted sum.
        proj = any(f'/{p}/' in op_name for p in ('query', 'key', 'value', 'out'))
        name = 'attention_proj' if proj else 'attention_core'
      return f'{name}/{where}'
  return f'other/{where}'


def op_events(trace_dir: str) -> list[tuple[str, float]]:
  """(HLO op, seconds) of every XLA op event in the trace."""
  from jax.profiler import ProfileData
  path = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)[0]
  events = []
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if 'hlo_op' in stats and not event.name.startswith('end: '):
          events.append((str(stats['hlo_op']), event.duration_ns / 1e9))
  return events


def profile(args: argparse.Namespace, steps: int = 3) -> dict:
  import jax
  dtype = common.setup_backend(args)
  config = common.model_config(args, dtype, args.remat)
  arrays = synthetic_batch(args.seed, args.batch, args.inputs, args.targets, config.vocab_size,
                           padding=False)
  built = train_step.build_ours(args, config, arrays)
  step = train_step.stepper(built)
  for _ in range(max(args.warmup, 1)):
    jax.block_until_ready(step())
  trace_dir = tempfile.mkdtemp(prefix='profile_step_')
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      jax.block_until_ready(step())
  names = op_names(built['compiled'].as_text())
  by_op, by_component = collections.Counter(), collections.Counter()
  for op, seconds in op_events(trace_dir):
    by_op[op] += seconds / steps
    by_component[component(names.get(op, op))] += seconds / steps
  return {'by_component': by_component, 'by_op': by_op, 'names': names}


def report(result: dict, top: int = 15) -> None:
  total = sum(result['by_component'].values())
  print(f'op time per step (summed over threads): {total:.3f} s')
  for name, seconds in result['by_component'].most_common():
    print(f'  {name:20s} {seconds:8.3f} s  {100 * seconds / total:5.1f}%')
  print(f'top {top} ops:')
  for op, seconds in result['by_op'].most_common(top):
    where = result['names'].get(op, '')
    print(f'  {op:28s} {seconds:8.3f} s  {100 * seconds / total:5.1f}%  {where[-90:]}')


def main(argv=None) -> None:
  report(profile(train_step.parse_args(argv)))


if __name__ == '__main__':
  main()
