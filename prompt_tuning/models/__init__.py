"""The Flax modules: T5 1.1 building blocks (layers.py), the encoder-decoder (t5.py) and the
prompt (prompt.py). Nothing here imports TensorFlow, SeqIO or gin."""
