"""The decoder-only quickstart (`prompt-tuning quickstart --gin_file=quickstart_causal_lm.gin`):
the T5 quickstart's demonstration (quickstart.py) with a Llama-architecture causal LM, offline on
a CPU in a couple of minutes.

1. Build a tiny word-level tokenizer.json (digits one token each; data/word_level.py) and
   model-tune a tiny Llama (DecoderOnly, random start) on the built-in mixture whose inputs carry
   a task prefix ("max: 38251" -> "8"). Save it as an HF folder (config.json, safetensors,
   tokenizer.json) and freeze it.
2. Learn only a prompt for one task *without* its prefix ("38251" -> "8") with the decoder-only
   run (train_causal_lm: DecoderPromptTrainer, MODEL_DIR, evaluations, exports).
3. Report the untrained prompt, the tuned prompt and the prefixed (oracle) input, no prompt.
4. Many prompts, one frozen model: tune a prompt for a second prefix-less task ("38251" -> "3"
   for first), then answer one batch whose rows ask the same digits of either prompt.

A demonstration of the mechanism at toy scale, not a reproduction of the paper's numbers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Optional

import jax
import numpy as np

from prompt_tuning.models import decoder_only
from prompt_tuning.models.decoder_config import DecoderConfig
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.train import losses, optim
from prompt_tuning.train.decoder_trainer import next_token_targets

log = logging.getLogger('prompt_tuning')

DEFAULT_MODEL = DecoderConfig(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              head_dim=16, d_ff=128, dtype='float32')
REPORT = 'quickstart.json'


def _task_names(name: str) -> list[str]:
  """The tasks of a mixture, or the task itself."""
  import seqio

  from prompt_tuning.data import tasks
  provider = tasks.get_task_or_mixture(name)
  return [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [name]


def build_tokenizer(folder: str, mixture: str) -> str:
  """A word-level tokenizer.json over the texts of `mixture`'s validation split (digits one
  token each), with a Llama config.json beside it (BOS added, <pad> 0, <s> 1, </s> 2)."""
  from prompt_tuning.data import causal_lm, word_level
  corpus = [text for task in _task_names(mixture)
            for ex in causal_lm.text_examples(task, 'validation')
            for text in (ex['inputs'], ex['targets'])]
  config = {'model_type': 'llama', 'pad_token_id': word_level.PAD_ID,
            'bos_token_id': word_level.BOS_ID, 'eos_token_id': word_level.EOS_ID}
  return word_level.word_level_tokenizer(corpus, folder, config, split_digits=True)


def model_tune(config: DecoderConfig, tokenizer, mixture: str, feature_lengths: dict, steps: int,
               batch_size: int, learning_rate: float, seed: int) -> dict:
  """Full training of every weight from a random start (only for building the demo's frozen
  model), on the decoder-only batches and next-token targets that prompt tuning uses."""
  from prompt_tuning.data import causal_lm

  model = decoder_only.DecoderOnly(config)

  def batch_loss(p, batch):
    fed_BxLm1, targets_BxLm1, weights_BxLm1 = next_token_targets(batch)
    logits_BxLm1xV = model.apply({'params': p}, fed_BxLm1)
    loss, _, weight_sum = losses.cross_entropy_loss(logits_BxLm1xV, targets_BxLm1,
                                                    weights_BxLm1, z_loss=0.0)
    return loss / weight_sum
  return optim.fit_from_scratch(
      decoder_only.init_params(config, jax.random.PRNGKey(seed)), batch_loss,
      causal_lm.get_batches(mixture, 'train', tokenizer, feature_lengths, batch_size, seed=seed),
      steps, learning_rate)


def _base(base_dir: str, config: DecoderConfig, mixture: str, lengths: dict, steps: int,
          batch_size: int, learning_rate: float, seed: int) -> None:
  """Stage 1: the frozen model as an HF folder in `base_dir` (tokenizer.json beside it), reused
  when its recipe.json says it was built the same way; the vocabulary's size and special ids
  come from the tokenizer built here."""
  import dataclasses
  import shutil

  from prompt_tuning.checkpoints import hf_decoder
  from prompt_tuning.data import causal_lm
  recipe = json.loads(json.dumps({  # as read back (tuples as lists)
      'config': dataclasses.asdict(config), 'mixture': mixture, 'steps': steps,
      'batch_size': batch_size, 'learning_rate': learning_rate, 'seed': seed,
      'lengths': lengths}))
  recipe_path = os.path.join(base_dir, 'recipe.json')
  if os.path.exists(recipe_path):
    with open(recipe_path) as f:
      if json.load(f) == recipe:
        log.info('Reusing the model-tuned base model at %s.', base_dir)
        return
  shutil.rmtree(base_dir, ignore_errors=True)  # another recipe's, or an unfinished build
  tokenizer = causal_lm.CausalLMTokenizer(build_tokenizer(base_dir, mixture))
  config = config.replace(vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_id,
                          eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
  log.info('Stage 1: model-tuning a tiny %s from scratch on %s (task prefixes in the input).',
           config.architecture, mixture)
  params = model_tune(config, tokenizer, mixture, lengths, steps, batch_size, learning_rate,
                      seed)
  hf_decoder.save(base_dir, config, params)
  with open(recipe_path, 'w') as f:  # last: it marks the folder complete
    json.dump(recipe, f, indent=2)


def quickstart_causal_lm(
    *, model_dir: str = os.path.join('runs', 'quickstart_causal_lm'),
    model: Optional[DecoderConfig] = None, mixture: str = 'quickstart_lm_mixture',
    prefixed_task: str = 'quickstart_lm_max', prompt_task: str = 'quickstart_lm_max_taskless',
    second_task: Optional[str] = 'quickstart_lm_first_taskless',
    task_feature_lengths: Optional[dict] = None, model_tune_steps: int = 300,
    model_tune_batch_size: int = 64, model_tune_learning_rate: float = 3e-3,
    prompt_length: int = 4, placement: decoder_only.Placement = 'prefix', prompt_steps: int = 100,
    batch_size: int = 32, learning_rate: float = 0.3, eval_period: int = 50,
    eval_max_examples: Optional[int] = 200, second_task_steps: int = 50,
    mixed_batch_rows: int = 4, random_seed: int = 0) -> dict:
  """Runs the stages of the module docstring; writes everything under `model_dir`: base/ (kept
  and reused while its recipe.json matches), prompt/ and second_prompt/ (made anew each run),
  quickstart.json. `model`'s sizes are used (default DEFAULT_MODEL); its vocabulary and special
  ids come from the tokenizer built here. `second_task` None skips stage 4."""
  import shutil

  from prompt_tuning.checkpoints import hf_decoder
  from prompt_tuning.data import causal_lm, tasks
  from prompt_tuning.inference.causal_lm_eval import CausalLMEvaluator
  from prompt_tuning.inference.causal_runner import CausalPromptedModel
  from prompt_tuning.train.causal_lm_run import train_causal_lm

  started = time.time()
  if placement not in decoder_only.PLACEMENTS:
    raise ValueError(f'placement={placement!r}: choose one of '
                     f'{", ".join(decoder_only.PLACEMENTS)}.')
  for name in (mixture, prefixed_task, prompt_task) + ((second_task,) if second_task else ()):
    tasks.get_task_or_mixture(name)  # an unknown name fails now, with close names
  for folder in ('prompt', 'second_prompt'):  # a finished run would only be resumed
    shutil.rmtree(os.path.join(model_dir, folder), ignore_errors=True)
  lengths = task_feature_lengths or {'inputs': 12, 'targets': 2}
  base_dir = os.path.join(model_dir, 'base')
  _base(base_dir, model or DEFAULT_MODEL, mixture, lengths, model_tune_steps,
        model_tune_batch_size, model_tune_learning_rate, random_seed)
  config, frozen = hf_decoder.load(base_dir)
  tokenizer = causal_lm.CausalLMTokenizer(base_dir)
  # The oracle: the frozen model given the task prefix, no prompt.
  oracle = CausalLMEvaluator(prefixed_task, 'validation', tokenizer, lengths,
                             max_examples=eval_max_examples).evaluate(
                                 CausalPromptedModel(config, frozen, None), 0)

  def tune(task: str, folder: str, steps: int, period: int) -> dict:
    # The paper's class-label init: the task's label words (as many as fit), else sampled words.
    info = tasks.TASK_INFO.get(task)
    labels = list(info.labels or ())[:prompt_length] if info else []
    init = functools.partial(prompt_init.initializer_by_name, 'class_labels', labels=labels) if (
        labels) else functools.partial(prompt_init.initializer_by_name, 'sampled_vocab')
    return train_causal_lm(
        model_dir=os.path.join(model_dir, folder), mixture_or_task_name=task,
        task_feature_lengths=lengths, batch_size=batch_size, train_steps=steps,
        checkpoint_dir=base_dir, prompt=PromptConfig(prompt_length, placement), prompt_init=init,
        learning_rate=learning_rate, eval_period=period, eval_methods=('generate', 'rank'),
        eval_max_examples=eval_max_examples, random_seed=random_seed, group_by_length=0,
        export_formats=('npy', 'peft') if placement == 'prefix' else ('npy',))

  log.info('Stage 2: prompt tuning on %s (the task with its prefix removed).', prompt_task)
  summary = tune(prompt_task, 'prompt', prompt_steps, eval_period)
  second = None
  if second_task:
    log.info('Stage 4: a second prompt, for %s, on the same frozen model.', second_task)
    second_summary = tune(second_task, 'second_prompt', second_task_steps, second_task_steps)
    prompts = {task: np.load(s['exports']['npy']) for task, s in (
        (prompt_task, summary), (second_task, second_summary))}
    second = {'task': second_task, 'tuned prompt': second_summary['final_eval'],
              'mixed batch': mixed_batch(config, frozen, placement, tokenizer, prompts, lengths,
                                         mixed_batch_rows)}
  report = {
      'task': prompt_task,
      'untrained prompt': summary['first_eval'][1] if summary['first_eval'] else None,
      'tuned prompt': summary['final_eval'],
      'task prefix, no prompt (oracle)': oracle,
      'prompt parameters': prompt_length * config.d_model,
      'model parameters (frozen)': sum(int(np.size(x))
                                       for x in jax.tree_util.tree_leaves(frozen)),
      'architecture': config.architecture, 'placement': placement,
      'seconds': round(time.time() - started, 1),
      'load average (1 min)': round(os.getloadavg()[0], 2),
      **({'second prompt': second} if second else {}),
  }
  with open(os.path.join(model_dir, REPORT), 'w') as f:
    json.dump(report, f, indent=2)
  print(format_report(report, model_dir))
  return report


def mixed_batch(config: DecoderConfig, params: dict, placement: str, tokenizer,
                prompts: dict[str, np.ndarray], feature_lengths: dict, rows: int) -> list[dict]:
  """One batch asking the first `rows` validation inputs of the first task in `prompts` of
  every prompt: each row is steered by its own prompt of the table, greedily decoded."""
  from prompt_tuning.data import causal_lm, tasks
  from prompt_tuning.inference.causal_runner import CausalPromptedModel
  from prompt_tuning.inference.decoding import DecodingConfig
  names = list(prompts)
  model = CausalPromptedModel(config, params, np.stack([prompts[n] for n in names]),
                              placement=placement, names=names)  # type: ignore[arg-type]
  examples, _ = causal_lm.get_eval_examples(names[0], 'validation', tokenizer, feature_lengths,
                                            rows)
  asked = [(ex, name) for ex in examples for name in names]
  ids_NxS = model.generate_rows([ex['inputs'] for ex, _ in asked], DecodingConfig(),
                                int(feature_lengths['targets']), batch_size=len(asked),
                                prompt_ids_N=model.prompt_ids([n for _, n in asked]))
  return [{'inputs': ex['inputs_pretokenized'], 'prompt': name,
           'answer': tokenizer.target_text(ids),
           'expected': tasks.quickstart_answer(name, ex['inputs_pretokenized'])}
          for (ex, name), ids in zip(asked, ids_NxS)]


def _scores(metrics: Optional[dict]) -> str:
  """'generate 98.5%, rank 99.0%' (the metrics are percentages, as T5 reports them)."""
  if not metrics:
    return 'n/a'
  return ', '.join(f'{m} {metrics[f"{m}/accuracy"]:5.1f}%' for m in ('generate', 'rank')
                   if f'{m}/accuracy' in metrics)


def format_report(r: dict, model_dir: str) -> str:
  """The printed report of `quickstart_causal_lm`'s result `r`."""
  lines = [
      '', f"Quickstart (decoder-only): prompt tuning a frozen tiny {r['architecture']} "
      f"({r['model parameters (frozen)']:,} frozen weights, {r['prompt parameters']:,} trained "
      f"prompt values, placement {r['placement']!r}), {r['seconds']}s "
      f"(load average {r['load average (1 min)']}).", '',
      f"Accuracy on {r['task']} (validation; inputs WITHOUT the task prefix):",
      f"  frozen model + untrained prompt       {_scores(r['untrained prompt'])}",
      f"  frozen model + tuned prompt           {_scores(r['tuned prompt'])}",
      f"  frozen model given the task prefix    {_scores(r['task prefix, no prompt (oracle)'])}"
      '   (no prompt; the oracle input)', '',
      'Only the prompt was trained: it steers the frozen model to the task that the prefix used to',
      'name. A toy-scale demonstration of the mechanism, not the paper\'s results.']
  second = r.get('second prompt')
  if second:
    lines += ['', f"A second prompt on the same frozen model, for {second['task']}",
              f"({_scores(second['tuned prompt'])}). One batch, each row steered by its own "
              'prompt:']
    for row in second['mixed batch']:
      mark = 'ok' if row['answer'] == row['expected'] else f"expected {row['expected']}"
      lines.append(f"  {row['inputs']:>11}  prompt {row['prompt']:<28} -> {row['answer']:<3} "
                   f'({mark})')
  lines += ['', f'Everything is under {model_dir}/: base/ (the frozen model, an HF folder with '
            'its tokenizer.json),', 'prompt/ and second_prompt/ (MODEL_DIRs: checkpoints, '
            'metrics, plot, export/prompt.npy' + (', a PEFT adapter' if r['placement'] == 'prefix'
                                                   else '') + ').',
            'A real HF model (Llama, Qwen2, Mistral, GPT-2): prompt-tuning train',
            '  --gin_file=runs/causal_lm_prompt_tuning.gin ... (docs/launching.md).']
  return '\n'.join(lines)
