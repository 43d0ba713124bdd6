"""Running prompted models: decoding, the runner, evaluation."""
