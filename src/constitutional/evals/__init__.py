"""Evaluations: feedback-model accuracy against human labels (more come with the report)."""
