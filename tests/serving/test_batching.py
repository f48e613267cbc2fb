"""Dynamic batching: concurrent requests share predictor calls, each gets exactly its own results in order, a pass
never exceeds the subword cap (a single larger request runs alone), errors reach every request of the pass, and
too many waiting requests are refused with 503 and Retry-After instead of piling up."""
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from backend.serving.app import create_app
from backend.serving.batching import Admission, Batcher, Overloaded
from backend.serving.service import NerService
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from tests.helpers.waits import wait_for
from tests.helpers.service_fakes import CONFIG, FakeJobs, add_version


class SlowEcho:
    """predict(texts) -> the texts upper-cased, after ``delay`` seconds; records each call's texts."""

    def __init__(self, delay=0.02, fail_on=None):
        self.delay, self.fail_on, self.calls = delay, fail_on, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot predict {self.fail_on!r}")
        return [text.upper() for text in texts]


def _submit_all(batcher, requests):
    results, threads = [None] * len(requests), []
    for i, texts in enumerate(requests):
        def run(i=i, texts=texts):
            try:
                results[i] = batcher.submit(texts)
            except Exception as error:  # noqa: BLE001
                results[i] = error
        threads.append(threading.Thread(target=run))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4), min_size=1, max_size=12))
def test_every_request_gets_exactly_its_own_results_in_order(requests):
    batcher = Batcher(SlowEcho(delay=0.002), count=lambda texts: len(texts), max_wait_ms=5, max_subwords=10)
    assert _submit_all(batcher, requests) == [[t.upper() for t in texts] for texts in requests]


def test_concurrent_one_text_requests_share_passes():
    echo = SlowEcho(delay=0.05)
    batcher = Batcher(echo, count=lambda texts: 10 * len(texts), max_wait_ms=20, max_subwords=10_000)
    results = _submit_all(batcher, [[f"text {i}"] for i in range(40)])
    assert results == [[f"TEXT {i}"] for i in range(40)]
    assert len(echo.calls) <= 10 and max(len(call) for call in echo.calls) > 1
    assert sum(len(call) for call in echo.calls) == 40 and batcher.passes == len(echo.calls)


def test_a_pass_never_exceeds_the_subword_cap_but_a_larger_request_runs_alone():
    echo = SlowEcho(delay=0.02)
    batcher = Batcher(echo, count=lambda texts: sum(len(t) for t in texts), max_wait_ms=30, max_subwords=12)
    requests = [["abcd"], ["efgh"], ["ijkl"], ["mnop" * 5], ["qrst"]]
    assert _submit_all(batcher, requests) == [[t.upper() for t in r] for r in requests]
    for call in echo.calls:
        assert sum(len(t) for t in call) <= 12 or call == ["mnop" * 5]


def test_prepare_hears_each_passs_subwords_before_the_pass_runs():
    echo, heard = SlowEcho(delay=0.05), []
    batcher = Batcher(echo, count=lambda texts: sum(len(t) for t in texts), max_wait_ms=30, max_subwords=100,
                      prepare=lambda subwords: heard.append((subwords, len(echo.calls))))
    _submit_all(batcher, [["ab"], ["cde"], ["f"]])
    assert [subwords for subwords, _ in heard] == [sum(len(t) for t in call) for call in echo.calls]
    assert [calls_before for _, calls_before in heard] == list(range(len(echo.calls)))


def test_an_error_reaches_every_request_of_its_pass_and_the_next_pass_works():
    echo = SlowEcho(delay=0.05, fail_on="bad")
    batcher = Batcher(echo, count=len, max_wait_ms=50, max_subwords=100)
    results = _submit_all(batcher, [["good"], ["bad"], ["also good"]])
    shared = [r for r in results if isinstance(r, ValueError)]
    assert shared and all("cannot predict 'bad'" in str(r) for r in shared)
    assert batcher.submit(["fine"]) == ["FINE"]


def test_admission_refuses_at_once_beyond_its_limit():
    gate = Admission(2)
    with gate, gate:
        with pytest.raises(Overloaded):
            with gate:
                pass
    with gate:  # free again
        pass


class BlockedPredictor:
    """A FakePredictor that answers only once ``release`` is set, so requests pile up for as long as a test wants."""

    release = threading.Event()

    def __init__(self, model_dir):
        from tests.helpers.service_fakes import FakePredictor

        self.inner = FakePredictor(model_dir)
        self.entity_labels = self.inner.entity_labels

    def predict(self, texts):
        self.release.wait(30)
        return self.inner.predict(texts)


def test_a_full_queue_answers_503_with_retry_after_and_control_routes_do_not_wait(tmp_path):
    settings = Settings(model_dir=tmp_path / "models", threads=16, predict_max_requests=4)
    store = ModelStore(settings.model_dir)
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    app = create_app(settings, NerService(settings, store=store, jobs=FakeJobs(), load_predictor=BlockedPredictor))
    body = {"tasks": [{"id": 1, "data": {"text": "cheap pizza"}}], "project": "3.1", "label_config": CONFIG}
    BlockedPredictor.release.set()
    assert app.test_client().post("/predict", json=body).status_code == 200  # loaded
    BlockedPredictor.release.clear()
    answers = []

    def call():
        answer = app.test_client().post("/predict", json=body)
        answers.append((answer.status_code, answer.headers.get("Retry-After"), answer.json))

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(answers) >= 8, "requests refused", interval_s=0.01)  # the 8 beyond the limit; 4 wait
    # every prediction is still blocked: control routes answer all the same
    assert app.test_client().post("/setup", json={"project": "3.1", "schema": CONFIG}).status_code == 200
    assert app.test_client().get("/status?project=3").status_code == 200
    assert app.test_client().get("/health").status_code == 200
    assert [status for status, _, _ in answers] == [503] * 8
    assert all(retry == "1" and "PREDICT_MAX_REQUESTS" in body["error"] for _, retry, body in answers)
    BlockedPredictor.release.set()
    for thread in threads:
        thread.join(10)
    assert [status for status, _, _ in answers].count(200) == 4
