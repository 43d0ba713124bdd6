"""Reusable gin blocks (installed as prompt_tuning.gin so gin files are found from a wheel)."""
