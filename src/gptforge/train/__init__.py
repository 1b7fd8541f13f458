"""Pretraining: the loop, optimizer, schedules, checkpoints, metrics and evaluation.

Entry point: :func:`gptforge.train.loop.train` (what ``gptforge train`` calls).
"""
