"""The serving process: the HTTP app and server, the service behind it, which model answers and the batching of
predictions. It builds on ``backend.shared``; of the training loop it knows only the queue (``training.jobs``)."""
