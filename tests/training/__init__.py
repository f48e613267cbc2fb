"""Tests of ``backend.training``."""
