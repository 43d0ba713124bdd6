"""Independent decoder-only references: tiny randomly initialised transformers models of each
supported family (built in-process, no downloads), and a right-padded batch."""

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
# One HF config per case; together they cover GQA, MHA, Llama 3 RoPE scaling, q/k/v biases,
# Llama's attention/MLP biases, a sliding window shorter than the batch, tied and untied heads.
CASES = {
    'llama3_tied': lambda: transformers.LlamaConfig(
        **TINY, num_key_value_heads=2, tie_word_embeddings=True,
        rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                      'high_freq_factor': 4.0, 'original_max_position_embeddings': 32},
        rope_theta=500000.0),
    'llama2_untied_bias': lambda: transformers.LlamaConfig(
        **TINY, num_key_value_heads=4, tie_word_embeddings=False, attention_bias=True,
        mlp_bias=True),
    'qwen2': lambda: transformers.Qwen2Config(
        **TINY, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
    'mistral_window': lambda: transformers.MistralConfig(
        **TINY, num_key_value_heads=1, head_dim=32, sliding_window=8, tie_word_embeddings=False),
    'gpt2': lambda: transformers.GPT2Config(
        vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=1,
        eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}


def make_hf(case: str, seed: int = 0):
  """A random transformers causal LM of `case` in float32, eval mode, with weights large enough
  that attention and logits are far from uniform (HF's init draws them at std 0.02)."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(CASES[case]()).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('bias'):
        p.normal_(0.0, 0.1)
      elif 'norm' in name or '.ln_' in name:
        p.uniform_(0.5, 1.5)
      elif 'embed' in name or '.wte.' in name or '.wpe.' in name:
        p.normal_(0.0, 0.5)
      else:
        p.normal_(0.0, 0.15)
  model.generation_config.eos_token_id = None  # greedy runs its full length
  model.generation_config.pad_token_id = 0
  return model


def padded_batch(vocab: int = 256, lengths=(24, 17, 5), seed: int = 0):
  """(tokens [B, L] right-padded with 0, lengths [B]); each row starts with BOS (1)."""
  rng = np.random.RandomState(seed)
  length = max(lengths)
  tokens = rng.randint(3, vocab, size=(len(lengths), length)).astype(np.int32)
  tokens[:, 0] = 1
  for row, n in enumerate(lengths):
    tokens[row, n:] = 0
  return tokens, np.asarray(lengths, np.int32)


def hf_logits(model, tokens, lengths):
  mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return out.logits.numpy()


def hf_embeds_logits(model, embeds, mask):
  with torch.no_grad():
    out = model(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(mask).long())
  return out.logits.numpy()


def max_rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def saved_case(case: str, directory: str):
  """(the transformers model, its save_pretrained directory, our config (float32 activations)
  and params read from there)."""
  from prompt_tuning.checkpoints import hf_decoder
  model = make_hf(case)
  model.save_pretrained(directory)
  config, params = hf_decoder.load(directory)
  return model, config.replace(dtype='float32'), params
