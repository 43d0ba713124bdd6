"""Throughput benchmarks: this project's prompt-tuning train step and inference, side by side with
Hugging Face PEFT prompt tuning on the same T5 1.1 dimensions. See benchmarks/README.md."""
