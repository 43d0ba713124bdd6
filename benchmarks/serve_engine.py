"""The serving engine alone (no HTTP): milliseconds per row of the load test's requests run one
at a time and in batches, on the same model and inputs as benchmarks/serve_load.py. Shows how much
work a batch shares on this machine, the most that batching under load can gain.

  PROMPT_TUNING_SHARED=../shared python -m benchmarks.serve_engine [--model fixture|mini]
      [--decode_length 8] [--json benchmarks/results/cpu_serve_engine.json]
"""

import argparse
import concurrent.futures
import sys
import time

from benchmarks import common
from benchmarks import serve_load
from prompt_tuning import testing


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', choices=('mini', 'fixture'), default='fixture')
  parser.add_argument('--decode_length', type=int, default=8)
  parser.add_argument('--batches', default='1,16,32')
  parser.add_argument('--rows', type=int, default=150, help='inputs, round robin over the tasks')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  import tempfile

  import jax

  from prompt_tuning import checkpoints, serve
  from prompt_tuning.inference import decoding
  from prompt_tuning.data.vocab import EOS_ID, SentencePieceVocab
  vocab = SentencePieceVocab(testing.shared_path(*testing.VOCAB))
  config = serve_load.model_config(args.model)
  with tempfile.TemporaryDirectory() as base:
    path = (serve_load.mini_checkpoint(base) if args.model == 'mini' else
            testing.shared_path(*testing.FIXTURE))
    model_config, frozen = checkpoints.load_base(path, config)
  store = serve.PromptStore({}, config.d_model, None, serve_load.PROMPT_LENGTH)
  for name, value in serve_load.task_prompts(config.d_model).items():
    store.add(name, values=value.tolist())
  engine = serve.Engine(model_config, jax.device_put(frozen), store, vocab, serve.ServeConfig())
  key = ('generate', decoding.DecodingConfig(), args.decode_length)
  # The load test's requests, in its order: one input each.
  rows = [(body['task'], list(vocab.encode(body['inputs'][0])) + [EOS_ID])
          for body in serve_load.requests_for(args.rows, serve_load.TASKS,
                                              serve_load.task_inputs(), args.decode_length)]

  def run(size: int) -> int:
    done = 0
    for start in range(0, len(rows) - size + 1, size):
      engine.run(key, [serve.Row(key, tokens, task, concurrent.futures.Future())
                       for task, tokens in rows[start:start + size]])
      done += size
    return done

  sizes = [int(b) for b in args.batches.split(',')]
  for size in sizes:  # untimed: compiles each shape
    run(size)
  ms_per_row = {}
  for size in sizes:
    start = time.perf_counter()
    done = run(size)
    ms_per_row[str(size)] = (time.perf_counter() - start) / done * 1000
  report = {'benchmark': 'serve_engine', 'machine': common.machine_info(), 'model': args.model,
            'decode_length': args.decode_length, 'prompt_length': serve_load.PROMPT_LENGTH,
            'tasks': serve_load.TASKS,
            'rows': args.rows, 'ms_per_row': ms_per_row,
            'batch_gain': {s: ms_per_row['1'] / v for s, v in ms_per_row.items()}
            if '1' in ms_per_row else None}
  common.write_json(report, args.json)
  return 0


if __name__ == '__main__':
  sys.exit(main())
