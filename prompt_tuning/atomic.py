"""Atomic file writes: a reader sees the old file or the new one, never a part. Every file under
MODEL_DIR and every export is written this way; the rule for each kind of path (a renamed
temporary locally, one object write on object storage) lives in storage.py."""

from __future__ import annotations

from prompt_tuning.storage import TMP_MARK, save_atomic, tmp_name, write_atomic

__all__ = ['TMP_MARK', 'atomic_save', 'atomic_write', 'tmp_name']

atomic_write = write_atomic
atomic_save = save_atomic
