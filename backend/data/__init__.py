"""The data layer: label schema, character spans <-> word BIO tags, Label Studio tasks <-> examples, file formats
and deterministic splits. Pure Python (no torch): the exporters use this layer alone."""
