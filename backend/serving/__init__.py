"""The serving layer: settings, the model store, training jobs and the training run, the Label Studio client, the
report, the service, the HTTP app and the server. It builds on ``backend.data`` and ``backend.model``."""
