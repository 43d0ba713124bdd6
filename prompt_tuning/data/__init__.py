"""Data layer: SeqIO tasks, preprocessors, metrics and numpy batches (imports TensorFlow/SeqIO).

Import the submodules explicitly (`from prompt_tuning.data import pipeline, tasks`); nothing here
is imported by the model or training code.
"""
