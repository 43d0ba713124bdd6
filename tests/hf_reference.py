"""An independent T5 1.1 reference: a randomly initialised transformers model, saved as
safetensors."""

import numpy as np
import torch
import transformers

SMALL = dict(vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
             num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20)


def make_hf_t5(seed: int = 0, **overrides) -> transformers.T5ForConditionalGeneration:
  """T5 1.1 (gated-gelu, untied head) with random weights, including the layer norms."""
  torch.manual_seed(seed)
  kw = {**SMALL, **overrides}
  cfg = transformers.T5Config(**kw, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                              dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                              eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    # transformers >= 5 ties lm_head at construction; T5 1.1's head is its own matrix.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(kw['vocab_size'], kw['d_model']))
    for name, p in model.named_parameters():
      if 'layer_norm' in name:
        p.uniform_(0.5, 1.5)
  return model


def padded_batch(vocab: int, batch: int = 3, enc_len: int = 40, dec_len: int = 30, seed: int = 0):
  """Encoder tokens, decoder inputs and targets with ragged padding (id 0)."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, size=(batch, enc_len))
  enc[1, enc_len * 2 // 3:] = 0
  enc[2, 10:] = 0
  tgt = rng.randint(2, vocab, size=(batch, dec_len))
  tgt[0, dec_len * 2 // 3:] = 0
  tgt[2, 5:] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], axis=1)
  dec_in = np.where(tgt > 0, dec_in, 0)
  return enc, dec_in, tgt


def hf_forward(model, enc, dec_in, tgt):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                decoder_input_ids=torch.tensor(dec_in),
                decoder_attention_mask=torch.tensor(tgt > 0).long())
  return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


def max_rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
