"""The Flax modules: T5 1.1 building blocks (layers.py), the encoder-decoder (t5.py) and the
prompt (prompt.py); decoder-only models (decoder_only.py, configured by decoder_config.py, RoPE in
rope.py). Nothing here imports TensorFlow, SeqIO or gin."""
