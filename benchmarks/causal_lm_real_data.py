"""Real-data train throughput of decoder-only prompt tuning (ours) beside HF PEFT CAUSAL_LM
prompt tuning, on a random Llama-architecture model (issue #25).

  # tokenize once (TensorFlow/SeqIO): the shared validation file, T5's SentencePiece
  python -m benchmarks.causal_lm_real_data --task rte --prepare_only \
      --out benchmarks/data/clm_rte_i512_t8.npz
  # time (no TensorFlow): ours and PEFT, each in its own worker process
  python -m benchmarks.causal_lm_real_data --task rte --data benchmarks/data/clm_rte_i512_t8.npz

Data. The task's shared validation file (the only split shared/ has for BoolQ and SST-2; RTE's
too, alike), its text preprocessors, then `causal_lm.encode_example` ([BOS] + inputs cut from the
left to --inputs, targets + EOS to --targets) with T5's SentencePiece as a tokenizer.json
(transformers' T5Converter, 32,100 pieces, + `<s>`); saved in file order as real_data.py's .npz.

Model. `LlamaForCausalLM(LlamaConfig(...))` (--d_model, --layers, --heads, --kv_heads: GQA,
--d_ff; RoPE, untied head), transformers' seeded random init, saved once in float32; ours loads it
with `hf_decoder.load`, PEFT with `from_pretrained`. --prompt tokens before BOS on both sides.

Modes (the batches of one epoch of the stream, n // B of them):
  ours_grouped  the library's batches: `causal_lm.row_batches` (what train_causal_lm gets from
                get_batches: shuffled stream, GROUP_BY_LENGTH windows of --window batches sorted
                by length, each batch padded to its length bucket), DecoderPromptTrainer, Adafactor
  ours_default  the same stream without grouping (consecutive batches, buckets)
  peft_dynamic  ours_default's very batches padded to their longest row, AdamW
  peft_grouped  transformers' Trainer order with group_by_length=True, then dynamic padding
Timing is real_data.py's: one long-lived worker per side, modes alternating between them, best
of --repeats; --steps batches per mode, stratified by length; ours compiles every shape first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

if __package__ in (None, ''):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, real_data  # noqa: E402

TASKS = {'rte': 'super_glue_rte_local', 'boolq': 'super_glue_boolq_local',
         'sst2': 'glue_sst2_local'}
SPLIT = 'validation'
MODES = ('ours_grouped', 'ours_default', 'peft_dynamic', 'peft_grouped')
RATIOS = (('ours_grouped', 'peft_dynamic'), ('ours_default', 'peft_dynamic'),
          ('ours_grouped', 'peft_grouped'))
BOS = '<s>'  # T5's vocabulary has none; Llama rows start with one
MODULE = 'benchmarks.causal_lm_real_data'


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add = parser.add_argument
  add('--task', choices=sorted(TASKS), default='rte')
  add('--batch', type=int, default=8)
  add('--inputs', type=int, default=512, help='[BOS] + inputs limit (cut from the left)')
  add('--targets', type=int, default=8, help='targets + EOS limit')
  add('--prompt', type=int, default=100)
  for flag, default in (('--d_model', 512), ('--layers', 8), ('--heads', 8), ('--kv_heads', 2),
                        ('--d_ff', 1376)):  # the random Llama's shape (kv_heads < heads: GQA)
    add(flag, type=int, default=default)
  # Timed batches per mode; interleaved repeats (best taken); untimed runs of each of ours'
  # shapes; GROUP_BY_LENGTH (batches per window).
  for flag, default in (('--steps', 6), ('--repeats', 2), ('--warm_runs', 1), ('--window', 32)):
    add(flag, type=int, default=default)
  add('--modes', default=','.join(MODES), help=f'a subset of {",".join(MODES)}')
  add('--seed', type=int, default=0)
  add('--learning_rate', type=float, default=0.3)
  add('--all_logits', action='store_true',
      help='ours: logits at every position (no target_length; the step before #25)')
  add('--data', default=None, help='the tokenized .npz (else tokenized first, in a child)')
  add('--prepare_only', action='store_true', help='tokenize to --out and stop (needs SeqIO)')
  add('--out', default=None)
  add('--peft_device', default=None, help='default: cuda when available, else cpu')
  add('--parallel_setup', action='store_true',
      help="set both workers up at once (quicker; their compile/load times then overlap)")
  add('--xla_flags', default='', help='appended to XLA_FLAGS (ours)')
  add('--no_library_xla_flags', action='store_true')
  add('--json', default=None)
  add('--worker', choices=('ours', 'peft'), default=None, help=argparse.SUPPRESS)
  add('--spec', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.prepare_only and not args.out:
    parser.error('--prepare_only needs --out FILE.npz')
  unknown = set(args.modes.split(',')) - set(MODES)
  if unknown:
    parser.error(f'unknown mode(s) {sorted(unknown)}; choose from {",".join(MODES)}')
  return args


def lengths_of(args) -> dict[str, int]:
  return {'inputs': args.inputs, 'targets': args.targets}


# ----------------------------------------------------------------------------------------------
# Data (prepare: TensorFlow/SeqIO in this process only).


def t5_tokenizer_folder(folder: str) -> str:
  """tokenizer.json of T5's SentencePiece model (transformers' T5Converter; identical ids) plus a
  special `<s>`, and a Llama config.json naming the special ids, in `folder`."""
  import types

  from transformers.convert_slow_tokenizer import T5Converter

  from prompt_tuning import testing
  spm = testing.shared_path(*testing.VOCAB)
  if not os.path.isfile(spm):
    raise SystemExit(f'{spm}: T5 SentencePiece model not found; set ${testing.SHARED_ENV}.')
  source = types.SimpleNamespace(vocab_file=spm, _extra_ids=100,
                                 convert_tokens_to_ids=lambda _: 1)  # '</s>'
  tok = T5Converter(source).converted()
  tok.add_special_tokens([BOS])
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, 'tokenizer.json'))
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump({'model_type': 'llama', 'bos_token_id': tok.token_to_id(BOS),
               'eos_token_id': tok.token_to_id('</s>'), 'pad_token_id': 0}, f)
  return folder


def prepare(args: argparse.Namespace) -> dict:
  """Encodes the task's validation examples (file order) and writes the .npz."""
  from prompt_tuning import testing
  from prompt_tuning.data import causal_lm, tasks

  for env, path in ((tasks.LOCAL_DATA_ENV, ('data',)), (tasks.VOCAB_ENV, testing.VOCAB)):
    os.environ.setdefault(env, testing.shared_path(*path))
  with tempfile.TemporaryDirectory() as tmp:
    tok = causal_lm.CausalLMTokenizer(t5_tokenizer_folder(tmp))
    examples = causal_lm.text_examples(TASKS[args.task], SPLIT)
    rows = [causal_lm.encode_example(tok, e['inputs'], e['targets'], lengths_of(args))
            for e in examples]
  meta = {'task': args.task, 'seqio_task': TASKS[args.task], 'split': SPLIT,
          'num_examples': len(rows), 'inputs_limit': args.inputs,
          'targets_limit': args.targets, 'num_cut': sum(r[2] for r in rows),
          'tokenizer': "T5 SentencePiece via transformers' T5Converter + <s>",
          'vocab_size': tok.vocab_size, 'bos_id': tok.bos_id, 'eos_id': tok.eos_id,
          'pad_id': tok.pad_id}
  real_data.save_examples(args.out, [r[0] for r in rows], [r[1] for r in rows], meta)
  return meta


def llama_config(args: argparse.Namespace, meta: dict) -> dict:
  """LlamaConfig's arguments: the flags' shape, the tokenizer's ids, vocabulary rounded up."""
  return dict(vocab_size=-(-meta['vocab_size'] // 128) * 128, hidden_size=args.d_model,
              intermediate_size=args.d_ff, num_hidden_layers=args.layers,
              num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
              max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
              bos_token_id=meta['bos_id'], eos_token_id=meta['eos_id'],
              pad_token_id=meta['pad_id'])


def model_folder(folder: str, config: dict, seed: int) -> None:
  """The random Llama both sides load (transformers' init, seeded; float32), made by the PEFT
  worker (which imports transformers anyway) before ours starts."""
  import torch
  import transformers
  torch.manual_seed(seed)
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).save_pretrained(folder)


def stream(rows: list, spec: dict, window: int) -> list[dict]:
  """One epoch's worth (n // B) of the library's batches, with each row's example index."""
  from prompt_tuning.data import causal_lm
  batches = causal_lm.row_batches([rows], spec['lengths'], spec['batch'], seed=spec['seed'],
                                  group_window=window, example_index=True)
  return list(itertools.islice(batches, len(rows) // spec['batch']))




# ----------------------------------------------------------------------------------------------
# Workers.


class OursWorker:
  """DecoderPromptTrainer's compiled step (one executable per bucket), the library's batches."""

  def __init__(self, spec: dict):
    self.spec = spec

  def setup(self) -> dict:
    import dataclasses

    import jax

    from prompt_tuning.checkpoints import hf_decoder
    from prompt_tuning.models.prompt import PromptConfig
    from prompt_tuning.train import decoder_trainer, optim, partitioning

    spec, started = self.spec, time.perf_counter()
    dtype = spec['dtype'] or ('float32' if jax.default_backend() == 'cpu' else 'bfloat16')
    config, frozen = hf_decoder.load(spec['model'])
    config = dataclasses.replace(config, dtype=dtype)
    self.trainer = decoder_trainer.DecoderPromptTrainer(
        config, PromptConfig(spec['prompt'], placement='prefix'), frozen,
        optim.adafactor(spec['learning_rate']),
        target_length=None if spec['all_logits'] else spec['lengths']['targets'])
    self.state = self.trainer.init_state(
        common.random_prompt(spec['prompt'], config.d_model, spec['seed']))
    model_s = time.perf_counter() - started
    prefixes, targets, _ = real_data.load_examples(spec['data'])
    rows = list(zip(prefixes, targets))
    self.batches, shapes = {}, {}
    for mode, positions in spec['timed'].items():
      epoch = stream(rows, spec, spec['window'] if mode == 'ours_grouped' else 0)
      self.batches[mode] = []
      for p in positions:
        decoder_trainer.check_batch(epoch[p])
        features = {k: epoch[p][k] for k in decoder_trainer.FEATURES}
        width = features['decoder_target_tokens'].shape[1]
        shapes[width] = {k: v.shape for k, v in features.items()}
        self.batches[mode].append((width, partitioning.global_batch(features,
                                                                    self.trainer.mesh)))
    self.compiled, compile_s, warm_s = {}, {}, {}
    for width, batch_shapes in sorted(shapes.items()):
      start = time.perf_counter()
      self.compiled[width] = self.trainer.lower_train_step(batch_shapes).compile()
      compile_s[str(width)] = time.perf_counter() - start
    one_of = {w: b for items in self.batches.values() for w, b in items}
    for width, batch in sorted(one_of.items()):
      for _ in range(spec['warm_runs']):
        start = time.perf_counter()
        jax.block_until_ready(self._step((width, batch)))
        warm_s.setdefault(str(width), []).append(time.perf_counter() - start)
    return {'dtype': dtype, 'machine': common.machine_info(), 'model_setup_s': model_s,
            'distinct_shapes': len(self.compiled), 'compile_s': compile_s,
            'compile_s_total': sum(compile_s.values()), 'warm_run_s': warm_s,
            'shapes_per_mode': {m: sorted({w for w, _ in b}) for m, b in self.batches.items()}}

  def _step(self, item):
    width, batch = item
    self.state, metrics = self.compiled[width](self.state, self.trainer.frozen, batch)
    return metrics

  def run(self, mode: str) -> dict:
    import jax
    return real_data.timed_steps(self._step, self.batches[mode], jax.block_until_ready)

  def finish(self) -> dict:
    return {'memory': common.jax_memory()}


class PeftWorker:
  """PEFT CAUSAL_LM prompt tuning of the same folder, dynamic padding, AdamW, eager torch."""

  def __init__(self, spec: dict):
    self.spec = spec

  def setup(self) -> dict:
    import peft
    import torch
    import transformers

    from benchmarks import peft_side

    spec, started = self.spec, time.perf_counter()
    self.make_model()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as many as JAX's CPU client uses
    self.device = peft_side.device_of(spec)
    self.dtype = spec['dtype'] or ('float32' if self.device.type == 'cpu' else 'bfloat16')
    self.model = peft_side.peft_causal_lm(spec['model'], spec['prompt'], self.device)
    self.model.train()
    trainable = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = peft_side.optimizer({'optimizer': 'adamw',
                                    'learning_rate': spec['learning_rate']}, trainable)
    model_s = time.perf_counter() - started
    prefixes, targets, meta = real_data.load_examples(spec['data'])
    self.batches = {m: [peft_side.causal_lm_batch([prefixes[i] for i in idx],
                                                  [targets[i] for i in idx], meta['pad_id'] or 0,
                                                  self.device) for idx in lists]
                    for m, lists in spec['timed'].items()}
    self.wait = peft_side.sync(self.device)
    start = time.perf_counter()
    self.wait(self._step(next(iter(self.batches.values()))[0]))
    return {'dtype': self.dtype, 'device': str(self.device), 'model_setup_s': model_s,
            'warmup_step_s': time.perf_counter() - start, 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'transformers': transformers.__version__,
            'peft': peft.__version__, 'trainable_params': sum(p.numel() for p in trainable)}

  def make_model(self) -> dict:
    if not os.path.isdir(self.spec['model']):
      model_folder(self.spec['model'], self.spec['llama'], self.spec['seed'])
    return {}

  def _step(self, batch):
    from benchmarks import peft_side
    with peft_side.autocast({'dtype': self.dtype}, self.device):
      loss = self.model(**batch).loss
    loss.backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return loss.detach()

  def run(self, mode: str) -> dict:
    return real_data.timed_steps(self._step, self.batches[mode], self.wait)

  def finish(self) -> dict:
    from benchmarks import peft_side
    return {'memory': peft_side.memory(self.device)}


# ----------------------------------------------------------------------------------------------
# The benchmark.


def padding_stats(batches: list, rows: list, widths: list, prompt: int) -> dict:
  """Real tokens, padded tokens and positions the model runs (+ prompt) of these batches."""
  examples = sum(len(idx) for idx in batches)
  real = sum(len(rows[i]) for idx in batches for i in idx)
  padded = sum(len(idx) * w for idx, w in zip(batches, widths))
  return {'batches': len(batches), 'examples': examples, 'real_tokens': real,
          'padded_tokens': padded, 'padding_fraction': 1 - real / padded if padded else None,
          'mean_width': padded / examples if examples else None,
          'positions_with_prompt': padded + examples * prompt,
          'distinct_shapes': len(set(widths))}


def epoch_orders(pairs: list, spec: dict, modes: list[str]) -> dict[str, tuple[list, list]]:
  """Each mode's epoch of the (prefix, targets) `pairs`: (batches as example-index arrays,
  each batch's padded width)."""
  rows = [np.concatenate(p) for p in pairs]
  out = {}
  for mode in modes:
    if mode == 'peft_grouped':
      order = real_data.epoch_batches(rows, rows, spec['batch'], 1, spec['seed'], [mode])[mode]
      out[mode] = (order, [max(len(rows[i]) for i in idx) for idx in order])
      continue
    epoch = stream(pairs, spec, spec['window'] if mode == 'ours_grouped' else 0)
    index = [b['example_index'] for b in epoch]
    out[mode] = (index, [b['decoder_target_tokens'].shape[1] for b in epoch] if
                 mode.startswith('ours') else [int(b['lengths'].max()) for b in epoch])
  return out


def run(args: argparse.Namespace) -> dict:
  started, load_before = common.cpu_snapshot(), os.getloadavg()
  modes = [m for m in MODES if m in args.modes.split(',')]
  with tempfile.TemporaryDirectory() as tmp:
    data, prepare_s = args.data, None
    if data is None:  # tokenize in a child: this process stays free of TensorFlow
      data, start = os.path.join(tmp, 'data.npz'), time.perf_counter()
      subprocess.run(
          [sys.executable, '-m', MODULE, '--task', args.task, '--inputs', str(args.inputs),
           '--targets', str(args.targets), '--prepare_only', '--out', data], check=True,
          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      prepare_s = time.perf_counter() - start
    prefixes, targets, meta = real_data.load_examples(data)
    if (meta['task'], meta['inputs_limit'], meta['targets_limit']) != (
        args.task, args.inputs, args.targets):
      raise SystemExit(f"{data} holds {meta['task']} at inputs {meta['inputs_limit']}, targets "
                       f"{meta['targets_limit']}; this run asks {args.task}, {args.inputs}, "
                       f'{args.targets}: prepare it again.')
    rows = [np.concatenate([p, t]) for p, t in zip(prefixes, targets)]
    spec = {'data': data, 'model': os.path.join(tmp, 'llama'),
            'llama': llama_config(args, meta), 'prompt': args.prompt, 'batch': args.batch,
            'lengths': lengths_of(args), 'window': min(args.window, len(rows) // args.batch),
            'seed': args.seed, 'learning_rate': args.learning_rate, 'dtype': None,
            'warm_runs': args.warm_runs, 'device': args.peft_device,
            'all_logits': args.all_logits,
            'xla_flags': args.xla_flags, 'library_xla_flags': not args.no_library_xla_flags}
    orders = epoch_orders(list(zip(prefixes, targets)), spec, modes)
    timed, per_mode = {}, {}
    for mode in modes:
      index, widths = orders[mode]
      chosen = real_data.stratified_positions([max(len(rows[i]) for i in idx) for idx in index],
                                              args.steps)
      timed[mode] = chosen if mode.startswith('ours') else [index[p].tolist() for p in chosen]
      per_mode[mode] = {
          'timed': padding_stats([index[p] for p in chosen], rows, [widths[p] for p in chosen],
                                 args.prompt),
          'epoch': padding_stats(index, rows, widths, args.prompt)}
    workers, setup, runs = {}, {}, {m: [] for m in modes}
    if not any(m.startswith('peft') for m in modes):
      model_folder(spec['model'], spec['llama'], spec['seed'])
    try:
      for side in sorted({m.split('_')[0] for m in modes}, reverse=True):  # PEFT starts first
        side_spec = {**spec, 'timed': {m: timed[m] for m in modes if m.startswith(side)}}
        workers[side] = real_data.Worker(side, side_spec, tmp, module=MODULE)
        if not args.parallel_setup:
          setup[side] = workers[side].call('setup')
      if args.parallel_setup:  # PEFT makes the model folder ours loads: it goes first
        workers['peft'].send('make_model')
        workers['peft'].reply('make_model')
        for w in workers.values():
          w.send('setup')
        setup = {side: w.reply('setup') for side, w in workers.items()}
      for repeat in range(args.repeats):
        for mode in modes if repeat % 2 == 0 else real_data.swap_pairs(modes):
          print(f'[causal_lm_real_data] {args.task} repeat {repeat + 1}: {mode}',
                file=sys.stderr, flush=True)
          runs[mode].append(workers[mode.split('_')[0]].call('run', mode=mode))
      finish = {side: w.call('finish') for side, w in workers.items()}
    finally:
      for w in workers.values():
        w.close()
  for mode in modes:
    best = min(runs[mode], key=lambda r: r['total_s'])
    per_mode[mode].update(real_data.rates(per_mode[mode]['timed'], best['total_s']),
                          repeats=runs[mode], best_repeat=runs[mode].index(best))
  ratios = {f'{o}/{p}': per_mode[o]['examples_per_s'] / per_mode[p]['examples_per_s']
            for o, p in RATIOS if o in per_mode and p in per_mode}
  machine = setup['ours']['machine'] if 'ours' in setup else {}
  machine.update(cpu_contention=common.other_cpu_use(started),
                 load_average_before=list(load_before), load_average_after=list(os.getloadavg()))
  return {'benchmark': 'causal_lm_real_data', 'machine': machine,
          'config': {**{k: v for k, v in vars(args).items() if k not in ('worker', 'spec')},
                     'window': spec['window'], 'model': spec['llama'],
                     'optimizer': {'ours': 'adafactor', 'peft': 'adamw'}},
          'data': {**meta, 'prepare_s': prepare_s}, 'setup': setup, 'finish': finish,
          'modes': per_mode, 'ratios': ratios}


TABLE_HEADER = ('| machine | task (split, n) | B | ours grouped ex/s | ours default ex/s '
                '| PEFT dynamic ex/s | PEFT grouped ex/s | grouped / dynamic '
                '| default / dynamic | grouped / group_by_length |\n'
                '|---|---|---|---|---|---|---|---|---|---|')


def table_row(result: dict) -> str:
  c, d, modes = result['config'], result['data'], result['modes']
  machine = common.describe(result['machine']) if 'backend' in result['machine'] else '—'
  cells = [common.fmt(modes.get(m, {}).get('examples_per_s')) for m in MODES]
  ratios = [common.fmt(result['ratios'].get(f'{o}/{p}')) for o, p in RATIOS]
  return (f"| {machine} | {c['task']} ({d['split']}, {d['num_examples']}) | {c['batch']} | "
          + ' | '.join(cells) + ' | ' + ' | '.join(f'**{r}**' for r in ratios) + ' |')


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    real_data.worker_main(args.worker, args.spec, {'ours': OursWorker, 'peft': PeftWorker})
  elif args.prepare_only:
    print(json.dumps({**prepare(args), 'out': args.out}, indent=2))
  else:
    result = run(args)
    common.emit(result, args.json, TABLE_HEADER, table_row(result))


if __name__ == '__main__':
  main()
