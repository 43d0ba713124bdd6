"""The Hugging Face PEFT side of the benchmarks (torch only; run as a child process, or as
benchmarks/causal_lm_real_data.py's worker, which takes `peft_causal_lm` and `optimizer`).

  python -m benchmarks.peft_side {train|inference} SPEC.json RESULT.json

SPEC holds the T5 dimensions, the prompt length, numerics, step counts and the .npz file of the
token batch the JAX side uses. The model is transformers' T5ForConditionalGeneration with T5 1.1's
layout (gated-GELU, untied head), randomly initialised, wrapped by
`peft.get_peft_model(model, PromptTuningConfig(SEQ_2_SEQ_LM, num_virtual_tokens=P,
num_transformer_submodules=1))`, so only the [P, D] prompt trains.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np
import torch

from benchmarks import common


def device_of(spec: dict) -> torch.device:
  if spec.get('device'):
    return torch.device(spec['device'])
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def sync(device: torch.device):
  def wait(_):
    if device.type == 'cuda':
      torch.cuda.synchronize(device)
  return wait


def autocast(spec: dict, device: torch.device):
  """bf16 activations as torch expresses them: autocast over float32 (or bf16) weights."""
  if spec['dtype'] == 'bfloat16':
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def hf_t5(dims: dict, seed: int, device: torch.device, zero_eos_logit: bool = False):
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.T5Config(
      vocab_size=dims['vocab_size'], d_model=dims['d_model'], d_kv=dims['head_dim'],
      d_ff=dims['d_ff'], num_layers=dims['num_encoder_layers'],
      num_decoder_layers=dims['num_decoder_layers'], num_heads=dims['num_heads'],
      relative_attention_num_buckets=dims['relpos_buckets'],
      relative_attention_max_distance=dims['relpos_max_distance'],
      layer_norm_epsilon=dims['layer_norm_epsilon'], feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=common.PAD_ID,
      pad_token_id=common.PAD_ID, eos_token_id=common.EOS_ID)
  with torch.device(device):
    model = transformers.T5ForConditionalGeneration(cfg)
    if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
      # T5 1.1's head is its own matrix; some transformers versions tie it at construction.
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn_like(model.lm_head.weight) * dims['d_model'] ** -0.5)
  if zero_eos_logit:
    # EOS's logit is then 0 while the others are random: generation runs its full length.
    with torch.no_grad():
      model.lm_head.weight[common.EOS_ID] = 0
  return model


def peft_model(spec: dict, device: torch.device, zero_eos_logit: bool = False):
  import peft
  model = hf_t5(spec['dims'], spec['seed'], device, zero_eos_logit)
  if spec['frozen_dtype'] == 'bfloat16':
    model = model.to(torch.bfloat16)
  config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM,
                                   num_virtual_tokens=spec['prompt'],
                                   num_transformer_submodules=1)
  return peft.get_peft_model(model, config)


def peft_causal_lm(folder: str, prompt: int, device: torch.device,
                   frozen_dtype: str = 'float32'):
  """A decoder-only HF folder (`AutoModelForCausalLM`, e.g. LlamaForCausalLM) wrapped by
  `get_peft_model(model, PromptTuningConfig(CAUSAL_LM, num_virtual_tokens=prompt))`."""
  import peft
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, dtype=getattr(torch, frozen_dtype)).to(device)
  config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=prompt)
  return peft.get_peft_model(model, config)


def causal_lm_batch(prefixes: list, targets: list, pad_id: int, device: torch.device) -> dict:
  """Rows prefix + targets padded to the longest (the collators' dynamic padding), labels -100
  except on the targets (transformers shifts them; PEFT puts -100 before them for the prompt)."""
  rows = [np.concatenate([p, t]) for p, t in zip(prefixes, targets)]
  ids = np.full((len(rows), max(map(len, rows))), pad_id, np.int64)
  mask, labels = np.zeros_like(ids), np.full_like(ids, -100)
  for r, (prefix, row) in enumerate(zip(prefixes, rows)):
    ids[r, :len(row)], mask[r, :len(row)] = row, 1
    labels[r, len(prefix):len(row)] = row[len(prefix):]
  return {k: torch.from_numpy(v).to(device)
          for k, v in (('input_ids', ids), ('attention_mask', mask), ('labels', labels))}


def optimizer(spec: dict, params: list):
  if spec['optimizer'] == 'adamw':
    return torch.optim.AdamW(params, lr=spec['learning_rate'], weight_decay=0.0)
  from transformers.optimization import Adafactor
  # The paper's setting, as this project's optim.adafactor: lr 0.3, decay exponent 0.8,
  # clipping 1.0, weight decay 1e-5, no parameter scaling, no momentum.
  return Adafactor(params, lr=spec['learning_rate'], eps=(1e-30, 1e-3), clip_threshold=1.0,
                   decay_rate=-0.8, beta1=None, weight_decay=1e-5, scale_parameter=False,
                   relative_step=False, warmup_init=False)


def load_batch(spec: dict, device: torch.device) -> dict:
  with np.load(spec['batch_file']) as f:
    return {k: torch.from_numpy(f[k].astype(np.int64)).to(device) for k in f.files}


def matmul_peak(spec: dict, device: torch.device) -> dict:
  """torch's own best n x n matmul FLOP/s, for context beside JAX's measured peak."""
  n, dtype = spec['peak_n'], getattr(torch, spec['peak_dtype'])
  if device.type == 'cpu' and dtype != torch.float32:
    # Without native bf16 units torch's CPU bf16 matmul crawls (minutes at n = 2048).
    return {'n': n, 'dtype': spec['peak_dtype'], 'flops_per_s': None,
            'skipped': 'bf16 matmul peak not measured on CPU'}
  a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
  wait, rounds = sync(device), (2 if device.type == 'cpu' else 20)
  torch.matmul(a, b)
  wait(None)
  best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(rounds):
      torch.matmul(a, b)
    wait(None)
    best = min(best, (time.perf_counter() - start) / rounds)
  return {'n': n, 'dtype': spec['peak_dtype'], 'flops_per_s': 2 * n ** 3 / best}


def memory(device: torch.device) -> dict:
  out = {'peak_rss_bytes': common.peak_rss_bytes()}
  if device.type == 'cuda':
    out['device_peak_bytes_allocated'] = int(torch.cuda.max_memory_allocated(device))
  return out


def enable_checkpointing(model) -> None:
  """Recompute each layer in the backward pass; transformers 5 renamed the method."""
  kwargs = {'use_reentrant': False}
  if hasattr(model, 'activation_checkpointing_enable'):
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
  else:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# ----------------------------------------------------------------------------------------------
# Tasks.


def train(spec: dict, device: torch.device) -> dict:
  model = peft_model(spec, device)
  model.train()  # dropout is 0; train mode is what gradient checkpointing needs.
  if spec.get('gradient_checkpointing'):
    enable_checkpointing(model.base_model)
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = optimizer(spec, trainable)
  forward = torch.compile(model) if spec.get('torch_compile') else model
  batch = load_batch(spec, device)
  mask = torch.ones_like(batch['encoder_input_tokens'])

  def step():
    with autocast(spec, device):
      loss = forward(input_ids=batch['encoder_input_tokens'], attention_mask=mask,
                     labels=batch['decoder_target_tokens']).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

  timing = common.time_calls(step, sync(device), spec['warmup'], spec['steps'])
  return {'timing': timing, 'final_loss': float(step()),
          'trainable_params': sum(p.numel() for p in trainable)}


def score(spec: dict, model, batch: dict, device: torch.device) -> dict:
  """Rank classification the usual PEFT way: one forward per candidate (inputs re-encoded)."""
  forward = torch.compile(model) if spec.get('torch_compile') else model
  enc = batch['encoder_input_tokens']
  mask = torch.ones_like(enc)

  def run():
    scores = []
    with torch.inference_mode(), autocast(spec, device):
      for cand in batch['candidates']:
        targets = cand[None].expand(enc.shape[0], -1)
        dec_in = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)
        logits = forward(input_ids=enc, attention_mask=mask, decoder_input_ids=dec_in).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        scores.append(logp.gather(-1, targets[..., None])[..., 0].sum(-1))
    return torch.stack(scores, dim=1)

  timing = common.time_calls(run, sync(device), spec['warmup'], spec['steps'])
  return {'timing': timing, 'scores_shape': list(run().shape)}


def greedy(spec: dict, model, batch: dict, device: torch.device) -> dict:
  enc = batch['encoder_input_tokens']
  mask = torch.ones_like(enc)

  def run():
    with torch.inference_mode(), autocast(spec, device):
      return model.generate(input_ids=enc, attention_mask=mask,
                            max_new_tokens=spec['decode_length'], do_sample=False, num_beams=1)

  timing = common.time_calls(run, sync(device), spec['warmup'], spec['steps'])
  out = run()
  # generate() returns the start token too; count what was produced after it.
  return {'timing': timing, 'generated_tokens': int(out[:, 1:].numel()),
          'output_shape': list(out.shape)}


def inference(spec: dict, device: torch.device) -> dict:
  """Scoring, then greedy generation, on one model (EOS never wins, so lengths are fixed)."""
  model = peft_model(spec, device, zero_eos_logit=True).eval()
  batch = load_batch(spec, device)
  return {'score': score(spec, model, batch, device), 'greedy': greedy(spec, model, batch, device)}


TASKS = {'train': train, 'inference': inference}


def main(argv: list[str]) -> None:
  task, spec_file, result_file = argv
  with open(spec_file) as f:
    spec = json.load(f)
  device = device_of(spec)
  result = TASKS[task](spec, device)
  result['memory'] = memory(device)  # Before the peak matmul allocates its own buffers.
  result.update(device=str(device), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                matmul_peak=matmul_peak(spec, device))
  if device.type == 'cuda':
    result['device_name'] = torch.cuda.get_device_name(device)
  import peft
  import transformers
  result.update(transformers=transformers.__version__, peft=peft.__version__)
  with open(result_file, 'w') as f:
    json.dump(result, f)


if __name__ == '__main__':
  main(sys.argv[1:])
