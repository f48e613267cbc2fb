"""The Label Studio client's writes (label-studio-sdk replaced by a recorder): what it sends when it reports."""
from types import SimpleNamespace

import pytest

from backend.serving.labelstudio import REPORT_END, REPORT_START, Credentials, LabelStudioClient


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


class ExportingSdk(RecordingSdk):
    """RecordingSdk plus the two ways to read tasks: the JSON export (one request) and the task pages."""

    def __init__(self, base_url, api_key, timeout, export_fails=False):
        super().__init__(base_url, api_key, timeout)
        tasks = [{"id": 1, "data": {"text": "a"}, "annotations": [{"id": 7, "result": []}]},
                 {"id": 2, "data": {"text": "b"}, "annotations": []}]

        def download_sync(id, export_type, download_all_tasks):
            self.calls.append(("export", {"id": id, "export_type": export_type, "all": download_all_tasks}))
            if export_fails:
                raise RuntimeError("404 Not Found")
            return iter([b'[{"id": 1, "data": {"text": "a"}, ', b'"annotations": [{"id": 7, "result": []}]}]'])

        def pages(**kwargs):
            self.calls.append(("pages", kwargs))
            return iter(tasks)

        self.projects.exports = SimpleNamespace(download_sync=download_sync)
        self.tasks = SimpleNamespace(list=pages)


def test_annotated_tasks_come_from_one_export_of_the_annotated_tasks_only():
    sdk = ExportingSdk(None, None, None)
    client = LabelStudioClient(Credentials("http://ls:8080", "k" * 40), sdk=sdk)
    assert [t["id"] for t in client.annotated_tasks(4)] == [1]
    assert sdk.calls == [("export", {"id": 4, "export_type": "JSON", "all": False})]


def test_without_the_export_endpoint_the_tasks_are_paged_and_only_annotated_ones_kept():
    sdk = ExportingSdk(None, None, None, export_fails=True)
    client = LabelStudioClient(Credentials("http://ls:8080", "k" * 40), sdk=sdk)
    assert [t["id"] for t in client.annotated_tasks(4)] == [1]
    assert [kind for kind, _ in sdk.calls] == ["export", "pages"]
