"""Task types (classification, causal LM, seq2seq, image classification): see ``registry`` for the mapping."""

from tunelab.tasks.registry import build_task, load_task, task_class

__all__ = ["build_task", "load_task", "task_class"]
