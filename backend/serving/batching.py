"""Dynamic batching: concurrent /predict requests for one model share forward passes, so one-task requests from
many annotators get the batched throughput. Each request still gets exactly its own results, in its order.

``Admission`` bounds the requests waiting at once, over all models (one more is ``Overloaded``, answered 503 with
Retry-After), so they never hold every server thread. One ``Batcher`` per loaded model: its thread takes the
oldest request, waits a few milliseconds for others, gathers them up to a cap on subwords per pass, and runs one
predictor call for all their texts.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

IDLE_EXIT_S = 30.0  # a model nobody asks for keeps no thread (and a replaced model is freed)


class Overloaded(RuntimeError):
    """More /predict requests are waiting than the backend takes at once; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Admission:
    """At most ``limit`` requests inside at once; one more is refused at once with ``Overloaded``, never queued.

    >>> gate = Admission(1)
    >>> with gate:
    ...     try:
    ...         with gate:
    ...             pass
    ...     except Overloaded as refused:
    ...         print(refused)
    1 prediction requests are already waiting (the most is 1, PREDICT_MAX_REQUESTS); retry in a moment
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._inside = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "Admission":
        with self._lock:
            if self._inside >= self.limit:
                raise Overloaded(f"{self._inside} prediction requests are already waiting (the most is "
                                 f"{self.limit}, PREDICT_MAX_REQUESTS); retry in a moment")
            self._inside += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._inside -= 1


@dataclass
class _Request:
    texts: list[str]
    subwords: int
    done: threading.Event = field(default_factory=threading.Event)
    results: list | None = None
    error: BaseException | None = None


class Batcher:
    """Gathers the texts of concurrent ``submit`` calls into shared ``predict`` calls.

    ``predict(texts) -> results`` (one per text, in order) runs on the batcher's own thread only, so a predictor
    that is not thread-safe needs no lock. ``count(texts) -> subwords`` sizes a request for the cap; ``prepare``,
    when given, is called with a pass's subwords just before it runs (to choose the CPU threads for it).
    """

    def __init__(self, predict: Callable[[list[str]], Sequence[Any]], count: Callable[[list[str]], int],
                 max_wait_ms: float = 5.0, max_subwords: int = 4096, name: str = "batcher",
                 prepare: Callable[[int], None] | None = None):
        self._predict = predict
        self._count = count
        self._prepare = prepare
        self.max_wait_s = max_wait_ms / 1000
        self.max_subwords = max_subwords
        self.name = name
        self._condition = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._worker: threading.Thread | None = None
        self.passes = 0  # forward passes run (for tests and logs)

    def submit(self, texts: Sequence[str]) -> list:
        """The results of ``texts``, in order, computed in a pass shared with other requests (blocks until done)."""
        texts = list(texts)
        if not texts:
            return []
        request = _Request(texts, self._count(texts))
        with self._condition:
            self._queue.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._worker.start()
            self._condition.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.results  # type: ignore[return-value]

    def _work(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._run(batch)

    def _gather(self) -> list[_Request] | None:
        """The oldest request and those that arrive within ``max_wait_s`` of it, up to ``max_subwords`` in all
        (the first is always taken, however large); None when idle for ``IDLE_EXIT_S`` (the thread ends)."""
        with self._condition:
            if not self._queue:
                self._condition.wait(IDLE_EXIT_S)
                if not self._queue:
                    self._worker = None
                    return None
            batch = [self._queue.popleft()]
            size = batch[0].subwords
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_subwords:
                if not self._queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                    continue
                if size + self._queue[0].subwords > self.max_subwords:
                    break
                request = self._queue.popleft()
                batch.append(request)
                size += request.subwords
            return batch

    def _run(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            if self._prepare is not None:
                self._prepare(sum(request.subwords for request in batch))
            results = list(self._predict(texts))
            if len(results) != len(texts):
                raise RuntimeError(f"the predictor returned {len(results)} results for {len(texts)} texts")
        except BaseException as error:  # noqa: BLE001 - every waiting request must hear of it
            for request in batch:
                request.error = error
                request.done.set()
            return
        finally:
            self.passes += 1
        at = 0
        for request in batch:
            request.results = results[at:at + len(request.texts)]
            at += len(request.texts)
            request.done.set()
