"""Launchable experiment configs (installed as prompt_tuning.configs)."""
