"""The training loop: the job queues (local child processes, or Redis and its workers), the training run, the
publishing of a version's predictions. It builds on ``backend.shared``; it never imports ``backend.serving``."""
