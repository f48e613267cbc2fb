"""Tests of ``exporters``."""
