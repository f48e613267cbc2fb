"""Tests of ``backend.model``."""
