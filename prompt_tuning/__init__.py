"""prompt-tuning: Lester et al. (2021) prompt tuning of a frozen T5 1.1 in JAX/Flax, T5X-compatible.

Where things live (docs/ARCHITECTURE.md): the prompt enters the model in
`models/t5.py:Encoder.__call__` (module in `models/prompt.py`); training in `train/`; MODEL_DIR in
`model_dir.py`; the gin-configured entry points in `runs.py`; the command line in `cli.py`.
"""
