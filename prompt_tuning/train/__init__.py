"""Training pieces for prompt tuning: T5X's loss and prompt-only optimizers."""
