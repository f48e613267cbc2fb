"""Label Studio ML backend for named-entity recognition: span suggestions, training from annotations, scores."""

__version__ = "0.1.0"
