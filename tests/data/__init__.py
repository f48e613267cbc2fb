"""Tests of ``backend.data``."""
