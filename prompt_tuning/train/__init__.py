"""Prompt-only training: the partitioned step (trainer.py), its loss (losses.py), optimizers
(optim.py), mesh and shardings (partitioning.py), the loop (loop.py), orbax checkpoints
(state.py), preemption (preemption.py) and memory planning (plan.py). Nothing here imports
TensorFlow or SeqIO."""
