"""What the serving process and the training loop share: the settings, the model store, the one Label Studio client,
the texts people read (report, card, public names). It builds on ``backend.data`` and ``backend.model``."""
