"""Pieces of the keyservice benchmark harness (bench/run.py)."""
