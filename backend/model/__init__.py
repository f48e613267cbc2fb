"""The model layer: subword encoding, BIO decoding, device and precision, training, prediction and word-level
scores. It builds on ``backend.data`` and knows nothing of HTTP, Label Studio or the model store."""
