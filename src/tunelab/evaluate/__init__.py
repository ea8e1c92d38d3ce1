"""Evaluation: task metrics, weight drift, memory."""
