"""Reports of a training run: the marked block in the project's instructions (the lead's text kept exactly),
the ML record's one-line description, and the /report page with per-entity F1 bars."""
import re
from html.parser import HTMLParser

import pytest

from backend.model.metrics import Scores
from backend.shared.labelstudio import REPORT_END, REPORT_START, replace_report_block
from backend.shared.report import failure_block, instruction_block, ml_description, report_page
from backend.shared.store import Manifest

# What Label Studio's sanitiser (bleach with label_studio/constants.py) keeps: a subset is enough here.
ALLOWED_TAGS = {"section", "h3", "p", "b", "table", "thead", "tbody", "tr", "th", "td"}
ALLOWED_ATTRIBUTES = {"class", "border", "cellpadding"}


def _scores(f1_by_entity, support=4):
    per_entity = {label: {"precision": f1, "recall": f1, "f1": f1, "support": support} for label, f1 in f1_by_entity.items()}
    overall_f1 = sum(f1_by_entity.values()) / len(f1_by_entity)
    return Scores.from_dict({"overall": {"precision": overall_f1, "recall": overall_f1, "f1": overall_f1, "support": 8},
                             "per_entity": per_entity})


@pytest.fixture
def manifest():
    return Manifest(project="3", base_model="tiny", labels=["Dish", "Price"], train_size=80, validation_size=20,
                    training_seconds=42.0, scores=_scores({"Dish": 0.9, "Price": 0.5}), previous_version="v1",
                    previous_scores=_scores({"Dish": 0.7, "Price": 0.25}), promoted=True, version="v2",
                    created_at="2025-01-31T12:00:00Z")


def test_the_block_replaces_only_its_own_part_of_the_instructions():
    lead = "<p>Label every <b>dish</b> and price.</p>\n"
    first = replace_report_block(lead, REPORT_START + "<p>v1</p>" + REPORT_END)
    assert first.startswith(lead)
    second = replace_report_block(first + "<p>Thanks!</p>", REPORT_START + "<p>v2</p>" + REPORT_END)
    assert second == first.replace("<p>v1</p>", "<p>v2</p>") + "<p>Thanks!</p>"
    assert second.count(REPORT_START) == 1


def test_the_block_becomes_the_instructions_when_there_were_none():
    block = REPORT_START + "x" + REPORT_END
    assert replace_report_block(None, block) == block
    assert replace_report_block("", block) == block


def test_a_block_holding_backslashes_is_written_as_is():
    block = REPORT_START + r"C:\new \1" + REPORT_END
    assert replace_report_block("lead " + REPORT_START + "old" + REPORT_END, block) == "lead " + block


def test_the_instruction_block_holds_the_per_entity_table_with_the_previous_f1(manifest):
    block = instruction_block(manifest)
    assert block.startswith(REPORT_START) and block.endswith(REPORT_END)
    rows = re.findall(r"<tr>(.*?)</tr>", block)
    cells = [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in rows]
    assert cells[0] == ["entity", "precision", "recall", "F1", "support", "F1 of v1"]
    assert cells[1] == ["Dish", "0.900", "0.900", "0.900", "4", "0.700"]
    assert cells[2] == ["Price", "0.500", "0.500", "0.500", "4", "0.250"]
    assert cells[3][0] == "overall" and cells[3][3] == "0.700"
    assert "promoted" in block and "80" in block and "20" in block


def test_the_block_says_when_the_new_version_was_not_promoted(manifest):
    manifest.promoted = False
    assert "not promoted" in instruction_block(manifest)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.comments = set(), set(), 0

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)

    def handle_comment(self, data):
        self.comments += 1


def test_the_block_uses_only_html_that_label_studio_keeps(manifest):
    for block in (instruction_block(manifest), failure_block("boom", "v1", "now")):
        parser = _Tags()
        parser.feed(block)
        assert parser.tags <= ALLOWED_TAGS
        assert parser.attributes <= ALLOWED_ATTRIBUTES
        assert parser.comments == 0  # the sanitiser strips comments, so markers cannot be comments


def test_the_failure_block_names_the_error_and_the_serving_version_escaped():
    block = failure_block("ValueError: <no tasks>", "v4", "2025-01-31T12:00:00Z")
    assert "&lt;no tasks&gt;" in block and "v4" in block and "failed" in block


def test_the_ml_description_is_one_line_with_version_scores_and_sizes(manifest):
    line = ml_description(manifest)
    assert "\n" not in line
    for part in ("v2", "promoted", "P 0.700", "R 0.700", "F1 0.700", "train 80", "validation 20", "2025-01-31"):
        assert part in line


def test_the_report_page_draws_one_f1_bar_per_entity_without_scripts(manifest):
    page = report_page("3", [manifest], "v2", {"training": False, "last_error": None})
    widths = re.findall(r'<div class="bar" style="width:([\d.]+)%"', page)
    assert widths == ["90.0", "50.0"]
    assert "<script" not in page and "v2" in page


def test_the_report_page_before_any_training_says_so():
    page = report_page("3", [], None, {"training": True, "progress": {"stage": "training", "step": 2,
                                                                      "total_steps": 9, "elapsed_s": 3}})
    assert "No training has finished yet" in page and "step 2/9" in page
