"""Test helpers: a tiny BERT built from a config, and templated restaurant sentences to train it on."""
