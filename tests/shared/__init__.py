"""Tests of ``backend.shared``."""
