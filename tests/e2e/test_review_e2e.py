"""The review against a real Label Studio: a project whose annotations hold planted errors and, on some tasks, a
second annotator; the review started as docs/review.md says (POST /review, what the report page's button sends);
``GET /review`` ranks the planted tasks first; the agreement figures match a count by hand; and the lead's place in
Label Studio (the Data Manager tab "Review: likely label errors", the Instructions block) shows the flagged tasks,
read back through the API here and in a real browser by ``test_the_lead_finds_the_flagged_tasks_in_the_data_manager``.

The tiny model of the tests learns a word's type from few sentences only with its embeddings trained
(TRAIN_FREEZE_EMBEDDINGS=false) and more epochs per fold (REVIEW_EPOCHS=40): so the sentences are short, and each
entity one word whose type never varies but where an error was planted.
"""
from __future__ import annotations

import json
import os
import random
import urllib.request

import pytest

from backend.shared.settings import Settings
from scripts.scenario import connect_backend, create_project, import_tasks, ls_api
from scripts.stack import BackendServer
from tests.e2e.conftest import TINY_TRAINING_ENV, _running
from tests.helpers.service_fakes import CONFIG
from tests.helpers.waits import wait_for

pytestmark = pytest.mark.e2e

LEXICON = {"pizza": "Dish", "sushi": "Dish", "ramen": "Dish", "cheap": "Price", "expensive": "Price",
           "thai": "Cuisine", "italian": "Cuisine"}
FILLER = ["find", "a", "place", "near", "me", "with", "good", "for", "dinner", "tonight", "where", "is", "the", "best"]
N_TASKS = 80
PLANTED = {5: "other type", 12: "missing span", 21: "extra span", 30: "other type"}  # position -> what the model reads
SECOND_ANNOTATOR = {"agrees": [40, 41, 42], "drops a span": [43, 44], "other type": [45]}
BOB = {"email": "bob@example.com", "username": "bob", "first_name": "Bob", "last_name": "Ray"}
VIEW_TITLE = "Review: likely label errors"


def sentence(rng: random.Random, at_least_one: bool) -> list[str]:
    """4 to 7 words; at most one entity of each type, so that every sentence has one reading (two Price words apart
    by one filler, "cheap a expensive", a tiny model may read as one span: a doubt the review rightly reports, and
    one that competed with the planted errors)."""
    while True:
        words = [rng.choice(list(LEXICON)) if rng.random() < 0.35 else rng.choice(FILLER)
                 for _ in range(rng.randint(4, 7))]
        types = [LEXICON[word] for word in words if word in LEXICON]
        if len(types) == len(set(types)) and (not at_least_one or types):
            return words


def spans_of(words: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) of every lexicon word of the sentence ``" ".join(words)``."""
    spans, at = [], 0
    for word in words:
        if word in LEXICON:
            spans.append((at, at + len(word), LEXICON[word]))
        at += len(word) + 1
    return spans


def result(spans, text):
    return [{"from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]}} for s, e, label in spans]


def other_type(label: str) -> str:
    return {"Dish": "Cuisine", "Cuisine": "Price", "Price": "Dish"}[label]


def planted(position: int, words: list[str]) -> list[tuple[int, int, str]]:
    spans = spans_of(words)
    if PLANTED[position] == "other type":  # the annotation's type is wrong: the model reads another
        return [(spans[0][0], spans[0][1], other_type(spans[0][2])), *spans[1:]]
    if PLANTED[position] == "missing span":  # the annotation left an entity out
        return spans[1:]
    plain = next(i for i, word in enumerate(words) if word not in LEXICON)  # an extra span on a plain word
    start = sum(len(word) + 1 for word in words[:plain])
    return sorted([*spans, (start, start + len(words[plain]), "Dish")])


def planted_word(position: int, words: list[str]) -> tuple[int, int]:
    """The characters of the word where an error was planted."""
    [changed] = set(planted(position, words)) ^ set(spans_of(words)) if PLANTED[position] != "other type" else \
        [next(iter(set(spans_of(words)) - set(planted(position, words))))]
    return changed[0], changed[1]


@pytest.fixture(scope="module")
def reviewed(label_studio, tiny_base_model_dir, tmp_path_factory):
    """The project imported, the backend connected, the review pressed and done: (project, backend, tasks, ...)."""
    ls = label_studio.client()
    bob = ls_api(f"{label_studio.url}/api/users/", label_studio.token, "POST", BOB)
    project = create_project(ls, "review", CONFIG)
    rng = random.Random(5)
    needs_span = set(PLANTED) | {p for group in SECOND_ANNOTATOR.values() for p in group}
    sentences = [sentence(rng, position in needs_span) for position in range(N_TASKS)]
    admin = {"email": label_studio.email}
    tasks = []
    for position, words in enumerate(sentences):
        text = " ".join(words)
        spans = planted(position, words) if position in PLANTED else spans_of(words)
        # Label Studio imports an annotation as ground truth unless told otherwise: the lead's counts for training
        annotations = [{"result": result(spans, text), "completed_by": admin, "ground_truth": True}]
        if position in SECOND_ANNOTATOR["agrees"]:
            annotations.append({"result": result(spans, text), "completed_by": {"email": BOB["email"]},
                                "ground_truth": False})
        elif position in SECOND_ANNOTATOR["drops a span"]:
            annotations.append({"result": result(spans[1:], text), "completed_by": {"email": BOB["email"]},
                                "ground_truth": False})
        elif position in SECOND_ANNOTATOR["other type"]:
            changed = [(spans[0][0], spans[0][1], other_type(spans[0][2])), *spans[1:]]
            annotations.append({"result": result(changed, text), "completed_by": {"email": BOB["email"]},
                                "ground_truth": False})
        tasks.append({"data": {"text": text}, "annotations": annotations})
    task_ids = import_tasks(ls, project, tasks)
    running = _running(BackendServer(
        label_studio_url=label_studio.url, api_key=label_studio.token, model_dir=tmp_path_factory.mktemp("models"),
        base_model=str(tiny_base_model_dir),
        extra_env={**TINY_TRAINING_ENV, "TRAIN_FREEZE_EMBEDDINGS": "false", "REVIEW_EPOCHS": "40"}))
    backend = next(running)
    try:
        connect_backend(ls, project, backend.url)
        started = _post(f"{backend.url}/review?project={project}")  # what the report page's button sends
        assert started["review"] in ("started", "queued"), started
        review_url = f"{backend.url}/review?project={project}"
        assert wait_for(lambda: _get(review_url)["state"] not in ("running", "none"), "review done", interval_s=1.0), \
            _get(review_url)
        yield {"project": project, "backend": backend, "task_ids": task_ids, "sentences": sentences, "bob": bob,
               "review": _get(review_url), "ls": ls}
    finally:
        running.close()  # stops the backend by its process id


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str) -> dict:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_review_ranks_the_planted_errors_first(reviewed):
    review, ids = reviewed["review"], reviewed["task_ids"]
    assert review["state"] == "done", review
    planted_ids = {ids[position] for position in PLANTED}
    ranked = [item["task"] for item in review["tasks"]]
    assert sorted(ranked) == sorted(ids)  # every annotated task scored, none dropped
    # the planted tasks lead: the strongest first, all of them among the first 6 of 80. The tiny model's fold noise
    # comes close to the weakest planted signal: with task ids from 1, 138, 1001 and 2412 the first 4 were exactly the
    # planted ones; from 6701 an unplanted task came 4th (6.73 against 6.41), the planted ones 1st to 3rd and 5th
    assert ranked[0] in planted_ids and planted_ids <= set(ranked[:len(PLANTED) + 2]), review["tasks"][:8]
    by_task = {item["task"]: item for item in review["tasks"]}
    for position, kind in PLANTED.items():
        # the top finding is the planted word; a wrong type may also read as no entity there (the fold's model
        # saw that word under two types)
        top, word = by_task[ids[position]]["findings"][0], planted_word(position, reviewed["sentences"][position])
        kinds = {kind, "extra span"} if kind == "other type" else {kind}
        assert top["kind"] in kinds and (top.get("start"), top.get("end")) in (word, (None, None)), top
        assert (top.get("model_start"), top.get("model_end")) in (word, (None, None)), top


def test_the_agreement_matches_a_count_by_hand(reviewed):
    sentences, ids = reviewed["sentences"], reviewed["task_ids"]
    entities = {p: len(spans_of(sentences[p])) for group in SECOND_ANNOTATOR.values() for p in group}
    # both mark the same spans; bob drops one (one span fewer, one matched fewer); bob types one otherwise (two
    # spans differ, one matched fewer)
    matched = sum(entities.values()) - len(SECOND_ANNOTATOR["drops a span"]) - len(SECOND_ANNOTATOR["other type"])
    marked = 2 * sum(entities.values()) - len(SECOND_ANNOTATOR["drops a span"])
    agreement = reviewed["review"]["agreement"]
    assert agreement["tasks"] == 6
    assert agreement["overall"] == {"f1": round(2 * matched / marked, 4), "matched": matched, "spans": marked,
                                    "pairs": 6}
    [pair] = agreement["per_pair"]
    assert "Bob Ray" in pair["annotators"] and pair["f1"] == agreement["overall"]["f1"]
    disagreeing = {ids[p] for p in SECOND_ANNOTATOR["drops a span"] + SECOND_ANNOTATOR["other type"]}
    assert {item["task"] for item in agreement["disagreements"]} == disagreeing


def test_label_studio_holds_the_flagged_tasks_for_the_lead(reviewed, label_studio):
    project, ids = reviewed["project"], reviewed["task_ids"]
    flagged = [item["task"] for item in reviewed["review"]["tasks"] if item["findings"]]
    views = ls_api(f"{label_studio.url}/api/dm/views/?project={project}", label_studio.token)
    [view] = [v for v in views if v["data"].get("title") == VIEW_TITLE]
    shown = [item["value"] for item in view["data"]["filters"]["items"]]
    assert shown == flagged[:len(shown)] and {ids[p] for p in PLANTED} <= set(shown)
    instruction = ls_api(f"{label_studio.url}/api/projects/{project}", label_studio.token)["expert_instruction"]
    first = instruction.index(f"/projects/{project}/data?task={flagged[0]}")
    assert all(f"/projects/{project}/data?task={ids[p]}" in instruction for p in PLANTED) and first > 0


@pytest.mark.browser
def test_the_lead_finds_the_flagged_tasks_in_the_data_manager(reviewed, label_studio, tmp_path_factory):
    from tests.helpers.browser import (
        LabelStudioBrowser,
        screenshot_dir,
        table_rows,
        table_shown_count,
        unavailable_reason,
    )

    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    project, ids = reviewed["project"], reviewed["task_ids"]
    shown = [item["task"] for item in reviewed["review"]["tasks"] if item["findings"]][:Settings.review_show]
    with LabelStudioBrowser(label_studio.url, label_studio.email, label_studio.password,
                            screenshot_dir(tmp_path_factory)) as browser:
        browser.login()
        page = browser.open_data_manager(project)
        page.get_by_text(VIEW_TITLE, exact=True).first.click()
        assert wait_for(lambda: table_shown_count(page) == len(shown), "label studio updated", interval_s=0.5), \
            table_shown_count(page)
        browser.screenshot("review-tab")
        rows = table_rows(page)
        assert set(rows) == set(shown) and {ids[p] for p in PLANTED} <= set(rows)
        # one click from the tab's row to the labeling view of a planted task
        page.goto(f"{label_studio.url}/projects/{project}/data?task={ids[min(PLANTED)]}")
        page.wait_for_selector(".lsf-richtext__container")
        browser.screenshot("planted-task")
        assert " ".join(reviewed["sentences"][min(PLANTED)]) in page.inner_text(".lsf-richtext__container")
