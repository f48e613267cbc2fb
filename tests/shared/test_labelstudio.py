"""The Label Studio client's writes (label-studio-sdk replaced by a recorder): what it sends when it reports."""
from types import SimpleNamespace

import pytest

from backend.shared.labelstudio import REPORT_END, REPORT_START, Credentials, LabelStudioClient, LabelStudioError


class RecordingSdk:
    """Just enough of label_studio_sdk.LabelStudio: one project with instructions, one ML record."""

    def __init__(self, base_url, api_key, timeout):
        self.calls: list[tuple[str, dict]] = []
        record = SimpleNamespace(id=5, url="http://backend:9090")
        project = SimpleNamespace(expert_instruction="<p>Label dishes.</p>", label_config="<View/>")
        self.projects = SimpleNamespace(get=lambda id: project, update=lambda **kw: self.calls.append(("project", kw)))
        self.ml = SimpleNamespace(list=lambda project: [record], update=lambda **kw: self.calls.append(("ml", kw)))


@pytest.fixture
def make_client(monkeypatch):
    import label_studio_sdk

    monkeypatch.setattr(label_studio_sdk, "LabelStudio", RecordingSdk)
    return lambda **kwargs: LabelStudioClient(Credentials("http://ls:8080", "k" * 40), **kwargs)


def test_the_report_leaves_the_leads_show_instruction_setting_alone(make_client):
    client = make_client()
    client.write_instruction_block(2, REPORT_START + "v1" + REPORT_END)
    [(kind, sent)] = client._ls.calls
    assert kind == "project" and "show_instruction" not in sent
    assert sent["expert_instruction"].startswith("<p>Label dishes.</p>") and "v1" in sent["expert_instruction"]


def test_a_backend_behind_basic_auth_sends_it_with_the_ml_record_update(make_client):
    # Label Studio re-checks the connection on this PATCH with the auth the body implies (401 -> 400 without it)
    client = make_client(backend_auth=("qa", "secret"))
    assert client.write_ml_description(2, "v1 (promoted)", None)
    [(kind, sent)] = client._ls.calls
    assert kind == "ml" and sent["description"] == "v1 (promoted)"
    assert (sent["auth_method"], sent["basic_auth_user"], sent["basic_auth_pass"]) == ("BASIC_AUTH", "qa", "secret")
    plain = make_client()
    plain.write_ml_description(2, "v1", None)
    assert "auth_method" not in plain._ls.calls[0][1]


def _served(**kwargs):
    """A ``FakeTaskApi`` server and a client of it with a short back-off."""
    from tests.helpers.fake_task_api import FakeTaskApi

    return FakeTaskApi(**kwargs)


def _client(api, timeout=5.0, page_size=100):
    return LabelStudioClient(Credentials(api.url, "k" * 40), timeout=timeout, retry_delays_s=(0.01, 0.02, 0.04),
                             page_size=page_size)


def test_unlabelled_tasks_are_read_a_page_at_a_time_lowest_id_first_with_the_model_versions_only():
    tasks = [{"id": i, "data": {"text": f"t{i}"}, "annotations": [{"id": i, "result": []}] if i % 10 == 0 else [],
              "predictions": [{"model_version": "v1"}] if i % 3 == 0 else []} for i in range(1, 1001)]
    with _served(tasks=tasks) as api:
        client = _client(api)
        pages = client.unlabelled_tasks(4, "v1")
        first = []
        for task in pages:
            first.append(task)
            if len(first) == 150:
                break
        assert [t["id"] for t in first] == [i for i in range(1, 1001) if i % 10][:150]
        assert first[2] == {"id": 3, "data": {"text": "t3"}, "model_versions": ["v1"]}
        assert pages.total == 900
        assert len(api.requests) == 1  # pages of twice page_size; stopping the iteration stops the reading
        every = list(client.unlabelled_tasks(4))
        assert len(every) == 900 and len(api.requests) == 1 + 5  # 4 full pages and a short one
        later = list(client.unlabelled_tasks(4, after=980))
        assert [t["id"] for t in later] == [981, 982, 983, 984, 985, 986, 987, 988, 989, 991, 992, 993, 994, 995,
                                           996, 997, 998, 999]
        query = api.requests[-1]["query"]
        assert {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number",
                "value": 0} in query["filters"]["items"]
        assert api.requests[-1]["fields"] == "task_only" and "hiddenColumns" in query


def test_a_page_that_fails_or_times_out_once_is_retried_and_the_read_completes():
    tasks = [{"id": i, "data": {"text": "x"}, "annotations": [{"id": i, "result": [], "created_at": "2026-01-01T00:00:00Z"}],
              "predictions": [], "updated_at": "2026-01-01T00:00:00Z"} for i in range(1, 351)]
    with _served(tasks=tasks, fail={2: 500, 3: "slow"}, slow_s=1.5) as api:
        client = _client(api, timeout=0.5)
        found = client.annotated_tasks(4)
        assert [t["id"] for t in found] == list(range(1, 351))
        assert set(found[0]) == {"id", "data", "updated_at", "annotations", "predictions"}
        assert len(api.requests) == 6  # 4 pages (the last one short), two of them twice
        assert client.requests == 6 and client.longest_request_s >= 0.5


def test_a_page_that_keeps_failing_is_a_label_studio_error_naming_the_request_and_a_refusal_is_not_retried():
    with _served(tasks=[], fail={1: 502, 2: 502, 3: 502, 4: 502}) as api:
        with pytest.raises(LabelStudioError, match=r"reading the annotated tasks of project 4 .* failed after 4 "
                                                   r"tries: HTTP 502"):
            _client(api).annotated_tasks(4)
    with _served(tasks=[], fail={1: 401}) as api:
        with pytest.raises(LabelStudioError, match=r"failed: HTTP 401 \(check the API key\)"):
            _client(api).annotated_count(4)
        assert len(api.requests) == 1


def test_the_annotated_tasks_changed_since_a_time_their_count_stamps_and_a_read_by_id():
    tasks = [{"id": i, "data": {"text": "x"}, "annotations": [{"id": i, "result": []}] if i <= 20 else [],
              "predictions": [], "updated_at": f"2026-01-01T00:00:{i:02d}.000000Z"} for i in range(1, 31)]
    with _served(tasks=tasks) as api:
        client = _client(api, page_size=7)
        assert [t["id"] for t in client.annotated_tasks(4, changed_since="2026-01-01T00:00:15Z")] == [16, 17, 18,
                                                                                                      19, 20]
        assert client.annotated_count(4) == 20
        stamps = client.annotated_stamps(4)
        assert sorted(stamps) == list(range(1, 21)) and stamps[3] == "2026-01-01T00:00:03.000000Z"
        assert sorted(client.annotated_stamps(4, changed_since="2026-01-01T00:00:18+00:00")) == [19, 20]
        assert [t["id"] for t in client.tasks_by_id(4, [5, 2, 19])] == [2, 5, 19]


def test_the_review_and_the_training_report_keep_sections_of_their_own():
    from backend.shared.labelstudio import REPORT_END, REPORT_START, REVIEW_START, replace_report_block

    text = replace_report_block("Label dishes.", f"{REPORT_START}v1{REPORT_END}")
    text = replace_report_block(text, f"{REVIEW_START}review 1{REPORT_END}")
    text = replace_report_block(text, f"{REPORT_START}v2{REPORT_END}")
    text = replace_report_block(text, f"{REVIEW_START}review 2{REPORT_END}")
    assert text == f"Label dishes.\n{REPORT_START}v2{REPORT_END}\n{REVIEW_START}review 2{REPORT_END}"
