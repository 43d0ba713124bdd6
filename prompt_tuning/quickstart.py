"""The embedded default job: show prompt tuning working on a CPU in a few minutes, offline.

1. Model-tune a tiny T5 1.1 (byte vocabulary) from scratch on a built-in multi-task mixture whose
   inputs carry a task prefix ("max: 38251" -> "8", "first: 38251" -> "3", ...). Freeze it.
2. Give the frozen model one task *without* its prefix ("38251" -> "8"): it cannot know which task
   is meant. Learn only a prompt (a few thousand numbers) for that task.
3. Report the prompt-tuned score next to the untrained prompt and the prefixed (oracle) input.
4. Many prompts, one frozen model: tune a prompt for each of two prefix-less tasks at once
   ("38251" -> "3" for first, "8" for max: identical-looking inputs), then answer one batch
   mixing both tasks, each row steered by its own prompt.

It is a demonstration of the mechanism at toy scale, not a reproduction of the paper's numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Optional

import jax

from prompt_tuning import checkpoints, runs
from prompt_tuning.data import batching
from prompt_tuning.inference import evaluation
from prompt_tuning.inference.runner import PromptedModel, text
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.train import losses, optim

log = logging.getLogger('prompt_tuning')


def model_tune(config: t5.T5Config, task: str, feature_lengths: dict, steps: int,
               batch_size: int, learning_rate: float, seed: int) -> dict:
  """Full fine-tuning of every weight (only for building the demo's frozen model)."""
  from prompt_tuning.data import pipeline

  model = t5.EncoderDecoder(config)

  def batch_loss(p, batch):
    logits = model.apply({'params': p}, batch['encoder_input_tokens'],
                         batch['decoder_input_tokens'], batch['decoder_target_tokens'])
    loss, _, weight_sum = losses.cross_entropy_loss(
        logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'], z_loss=0.0)
    return loss / weight_sum
  return optim.fit_from_scratch(
      t5.init_params(config, jax.random.PRNGKey(seed)), batch_loss,
      pipeline.get_batches(task, 'train', feature_lengths, batch_size, seed=seed), steps,
      learning_rate)


def quickstart(*, model_dir: str = os.path.join('runs', 'quickstart'),
               model: Optional[t5.T5Config] = None,
               mixture: str = 'quickstart_mixture', prefixed_task: str = 'quickstart_max',
               prompt_task: str = 'quickstart_max_taskless',
               task_feature_lengths: Optional[dict] = None, model_tune_steps: int = 600,
               model_tune_batch_size: int = 64, model_tune_learning_rate: float = 3e-3,
               prompt_length: int = 10, prompt_steps: int = 200, batch_size: int = 32,
               learning_rate: float = 0.3, eval_period: int = 50,
               eval_max_examples: Optional[int] = 200, random_seed: int = 0,
               multi_task_mixture: Optional[str] = 'quickstart_taskless_mixture',
               multi_task_steps: int = 200) -> dict:
  """Runs the stages above; writes everything under `model_dir`. `multi_task_mixture` None
  skips stage 4."""
  started = time.time()
  lengths = task_feature_lengths or {'inputs': 16, 'targets': 4}
  config = model or t5.T5Config(vocab_size=384, d_model=64, d_ff=128, num_heads=4, head_dim=16,
                                num_encoder_layers=2, num_decoder_layers=2, dtype='float32')
  base_dir = os.path.join(model_dir, 'base')
  base_path = os.path.join(base_dir, 'checkpoint_0')
  recipe = {'config': dataclasses.asdict(config), 'mixture': mixture, 'steps': model_tune_steps,
            'batch_size': model_tune_batch_size, 'learning_rate': model_tune_learning_rate,
            'seed': random_seed, 'lengths': lengths}
  recipe_path = os.path.join(base_dir, 'recipe.json')
  if os.path.exists(recipe_path) and json.load(open(recipe_path)) == recipe:
    log.info('Reusing the model-tuned base model at %s.', base_path)
  else:
    log.info('Stage 1: model-tuning a %s-parameter T5 1.1 on %s (task prefixes in the input).',
             f'{t5.count_params(config):,}', mixture)
    params = model_tune(config, mixture, lengths, model_tune_steps, model_tune_batch_size,
                        model_tune_learning_rate, random_seed)
    # Step 0: the prompt-tuning run counts its own steps from here.
    checkpoints.save_t5x(base_dir, params, 0, overwrite=True)
    with open(recipe_path, 'w') as f:
      json.dump(recipe, f, indent=2)

  # The oracle: the frozen model given the task prefix, no prompt.
  _, frozen = checkpoints.load_params(base_path, config)
  prefixed = evaluation.Evaluator(prefixed_task, 'validation', lengths, methods=('generate',),
                                  max_examples=eval_max_examples)
  with_prefix = prefixed.evaluate(PromptedModel.of(t5.EncoderDecoder(config), frozen), step=0)

  log.info('Stage 2: prompt tuning on %s (the same task with its prefix removed).', prompt_task)
  prompt_dir = os.path.join(model_dir, 'prompt')
  summary = runs.train(
      model_dir=prompt_dir, mixture_or_task_name=prompt_task, task_feature_lengths=lengths,
      batch_size=batch_size, train_steps=prompt_steps, initial_checkpoint_path=base_path,
      model=config, prompt=PromptConfig(prompt_length),
      # The paper's class-label init: the ten digit labels, the rest sampled from the vocabulary.
      prompt_init=functools.partial(prompt_init.initializer_by_name, 'class_labels',
                                    labels=[str(d) for d in range(10)]),
      learning_rate=learning_rate, eval_period=eval_period,
      eval_methods=('generate', 'rank'), eval_max_examples=eval_max_examples,
      random_seed=random_seed, export_formats=('npy', 'peft'),
      group_by_length=0)  # every input fits one bucket: sorting by length would gain nothing

  multi = None
  if multi_task_mixture:
    multi = _multi_task(model_dir, multi_task_mixture, lengths, base_path, config, prompt_length,
                        multi_task_steps, batch_size, learning_rate, eval_period,
                        eval_max_examples, random_seed, frozen)

  at_start = summary['first_eval'][1] if summary['first_eval'] else {}
  final = summary['final_eval'] or {}
  report = {
      'task': prompt_task,
      'untrained prompt': at_start.get('generate/accuracy'),
      'tuned prompt': final.get('generate/accuracy'),
      'tuned prompt (rank classification)': final.get('rank/accuracy'),
      'task prefix, no prompt (oracle)': with_prefix.get('generate/accuracy'),
      'prompt parameters': prompt_length * config.d_model,
      'model parameters (frozen)': t5.count_params(config),
      'seconds': round(time.time() - started, 1),
      **({'many prompts, one model': multi} if multi else {}),
  }
  with open(os.path.join(model_dir, 'quickstart.json'), 'w') as f:
    json.dump(report, f, indent=2)
  _print_report(report, model_dir, prompt_dir)
  return report


def _multi_task(model_dir, mixture, lengths, base_path, config, prompt_length, steps, batch_size,
                learning_rate, eval_period, eval_max_examples, seed, frozen) -> dict:
  """Stage 4: a prompt per task of `mixture` trained at once, then one mixed batch."""
  from prompt_tuning.inference import decoding
  from prompt_tuning.prompts import library as prompt_library
  from prompt_tuning.data import tasks

  log.info('Stage 4: one prompt per task of %s, trained at once on the frozen model.', mixture)
  multi_dir = os.path.join(model_dir, 'multi_task')
  summary = runs.train(
      model_dir=multi_dir, mixture_or_task_name=mixture, task_feature_lengths=lengths,
      batch_size=batch_size, train_steps=steps, initial_checkpoint_path=base_path, model=config,
      prompt=PromptConfig(prompt_length), prompt_per_task=True,
      prompt_init=functools.partial(prompt_init.initializer_by_name, 'class_labels',
                                    labels=[str(d) for d in range(10)]),
      learning_rate=learning_rate, eval_period=eval_period, eval_methods=('generate',),
      eval_max_examples=eval_max_examples, random_seed=seed, group_by_length=0)
  final = summary['final_eval'] or {}
  names = summary['prompt_names']
  # One batch mixing the tasks: the same digits asked of every prompt.
  library = prompt_library.load_library(multi_dir, config.d_model)
  model = PromptedModel.with_library(config, frozen, library)
  vocab = tasks.get_vocabulary(mixture)
  digits = [d for d, _ in tasks.quickstart_examples('max', 'validation', 4)]
  rows = [list(vocab.encode(d)) + [vocab.eos_id] for d in digits for _ in names]
  asked = [n for _ in digits for n in names]
  width = lengths['inputs']
  answers = model.generate_rows(batching.pad_rows(rows, width=width), decoding.DecodingConfig(),
                                lengths['targets'], batch_size=len(rows),
                                buckets=batching.auto_buckets(width),
                                prompt_ids_N=model.prompt_ids(asked))
  ops = {n: n.split('_')[1] for n in names}
  batch = [{'inputs': d, 'prompt': ops[n], 'answer': text(vocab, a),
            'expected': tasks.QUICKSTART_OPS[ops[n]](d)}
           for d, n, a in zip([d for d in digits for _ in names], asked, answers)]
  return {'mixture': mixture, 'model_dir': multi_dir,
          'accuracy': {ops[n]: final.get(f'generate/{n}/accuracy') for n in names},
          'mixed batch': batch}


def _print_report(r: dict, model_dir: str, prompt_dir: str) -> None:
  def pct(v):  # metrics are percentages already, as T5 reports them
    return '  n/a ' if v is None else f'{v:5.1f}%'

  untrained, tuned = pct(r['untrained prompt']), pct(r['tuned prompt'])
  ranked, oracle = pct(r['tuned prompt (rank classification)']), pct(
      r['task prefix, no prompt (oracle)'])
  example_checkpoint = '/path/to/t5_1_1_lm100k_base/checkpoint_1100000'
  print(f"""
Quickstart: prompt tuning a frozen tiny T5 1.1 ({r['model parameters (frozen)']:,} frozen weights,
{r['prompt parameters']:,} trained prompt values), {r['seconds']}s.

Accuracy on {r['task']} (validation; inputs WITHOUT the task prefix):
  frozen model + untrained prompt       {untrained}
  frozen model + tuned prompt           {tuned}   (rank classification: {ranked})
  frozen model given the task prefix    {oracle}   (no prompt; the oracle input)

What this shows: only the prompt was trained, and it steers the frozen model to the task that the
prefix used to name. It is a toy-scale demonstration of the mechanism, not the paper's results.

{_multi_report(r.get('many prompts, one model'))}
Everything is under {model_dir}/ (prompt checkpoints, numpy prompts, PEFT adapter, metrics, plot).
To tune a prompt for a real model and task:
  prompt-tuning train --gin_file=configs/paper/t5_1_1_base_rte.gin \\
    --gin.MODEL_DIR=/tmp/rte --gin.INITIAL_CHECKPOINT_PATH={example_checkpoint}
(add --gin.MIXTURE_OR_TASK_NAME=super_glue_rte_local and set PROMPT_TUNING_DATA_DIR to use the
official release files offline).""")


def _multi_report(m: Optional[dict]) -> str:
  if not m:
    return ''
  accuracy = ', '.join(f'{op} {v:.1f}%' if v is not None else f'{op} n/a'
                       for op, v in m['accuracy'].items())
  lines = [f'Many prompts, one frozen model: a prompt per task of {m["mixture"]}, trained at once',
           f'(inputs without prefixes; accuracy {accuracy}). One batch mixing both tasks:']
  for row in m['mixed batch']:
    mark = 'ok' if row['answer'] == row['expected'] else f'expected {row["expected"]}'
    lines.append(f'  {row["inputs"]:>9}  prompt {row["prompt"]:<5} -> {row["answer"]:<3} ({mark})')
  return '\n'.join(lines) + '\n'
