"""Tests of ``backend.serving``."""
