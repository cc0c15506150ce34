"""Shared building blocks used by training, attacks and evaluation (no CLI, no I/O)."""
