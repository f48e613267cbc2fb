"""Label Studio task JSON <-> word-level examples: which annotation counts, and results <-> spans.

Shared by the exporters (JSON export -> CoNLL/BIO/datasets), the importer (BIO -> tasks) and training.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable

from backend.data.schema import LabelConfigError, LabelSchema
from backend.data.spans import ConversionReport, Example, Span, bio_to_spans, spans_to_bio

LABELS_TYPE = "labels"
IMPORTED_MODEL_VERSION = "imported"

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _timestamp(value: Any) -> datetime:
    """Label Studio writes ISO 8601 (``2024-05-01T10:00:00.123456Z``); anything unreadable sorts first."""
    if not isinstance(value, str) or not value:
        return _EPOCH
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return _EPOCH
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _recency(annotation: dict) -> tuple:
    annotation_id = annotation.get("id")
    return (
        _timestamp(annotation.get("updated_at")),
        _timestamp(annotation.get("created_at")),
        annotation_id if isinstance(annotation_id, (int, float)) else -1,
    )


def choose_annotation(task: dict) -> dict | None:
    """The annotation of ``task`` that counts, or None when it has none.

    Cancelled (skipped) annotations never count; a ``ground_truth`` annotation wins over the others; among
    equals the most recently updated wins (``updated_at``, then ``created_at``, then the higher ``id``).

    >>> choose_annotation({"annotations": [{"id": 1, "result": []}, {"id": 2, "result": [], "was_cancelled": True}]})["id"]
    1
    """
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    return max(annotations, key=lambda a: (bool(a.get("ground_truth")), _recency(a)))


def result_labels(value: dict) -> list:
    """The labels of a result's ``value``: Label Studio writes a list; a hand-made ``"labels": "PER"`` is one label
    (not the letters P, E, R).

    >>> result_labels({"labels": ["PER"]}), result_labels({"labels": "PER"}), result_labels({})
    (['PER'], ['PER'], [])
    """
    labels = value.get("labels") or []
    return [labels] if isinstance(labels, str) else list(labels) if isinstance(labels, (list, tuple)) else []


def _whole_number(value: Any) -> int | None:
    """An offset as an int: ints, and floats without a fraction (6.0, as some tools write them); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def results_to_spans(
    results: Iterable[dict],
    schema: LabelSchema,
    report: ConversionReport | None = None,
    where: str = "",
) -> list[Span]:
    """The spans of ``schema``'s Labels control among Label Studio ``results`` (other controls are ignored).

    A result with several labels keeps its first (counted as ``several_labels``); one without offsets or labels
    is left out (counted as ``malformed_result``). Spans are not validated against the text here: see
    ``spans.clean_spans``.

    >>> schema = LabelSchema("label", "text", "text", ("Cuisine",))
    >>> results_to_spans([{"from_name": "label", "to_name": "text", "type": "labels",
    ...     "value": {"start": 6, "end": 10, "text": "thai", "labels": ["Cuisine"]}}], schema)
    [Span(start=6, end=10, label='Cuisine', text='thai', score=None)]
    """
    report = report if report is not None else ConversionReport()
    spans = []
    for result in results or []:
        if not isinstance(result, dict):
            report.add("malformed_result", where, f"result is not an object: {result!r:.60}")
            continue
        kind = str(result.get("type", "")).lower()
        if not kind.endswith(LABELS_TYPE):
            continue  # choices, ratings, text areas...: not spans
        here = f"{where} result {result.get('id', '')}".strip()
        from_name, to_name = result.get("from_name"), result.get("to_name", schema.to_name)
        if (kind, from_name, to_name) != (LABELS_TYPE, schema.from_name, schema.to_name):
            # A span of another control (a renamed <Labels> or <Text>, a second pair, HyperText): counted, so a
            # task whose entities all sit there is not silently taken for a task without entities.
            report.add("other_control", here, f"{kind} result of {from_name!r} on {to_name!r} (the label config's "
                                              f"pair is {schema.from_name!r} on {schema.to_name!r}); left out")
            continue
        value = result.get("value") or {}
        labels = result_labels(value)
        start, end = (_whole_number(value.get(key)) for key in ("start", "end"))
        if start is None or end is None or not labels:
            report.add("malformed_result", here, "labels result without integer start/end or without a label; left out")
            continue
        if len(labels) > 1:
            report.add("several_labels", here, f"span [{start}:{end}] has labels {labels}; kept the first")
        score = result.get("score")
        spans.append(Span(start, end, str(labels[0]), str(value.get("text") or ""), score if isinstance(score, (int, float)) else None))
    return spans


def spans_to_results(spans: Iterable[Span], schema: LabelSchema) -> list[dict]:
    """Label Studio result dicts for ``spans`` (with ``score`` when the span has one).

    >>> spans_to_results([Span(6, 10, "Cuisine", "thai")], LabelSchema("label", "text", "text", ("Cuisine",)))
    [{'from_name': 'label', 'to_name': 'text', 'type': 'labels', 'value': {'start': 6, 'end': 10, 'text': 'thai', 'labels': ['Cuisine']}}]
    """
    results = []
    for span in spans:
        result: dict[str, Any] = {
            "from_name": schema.from_name,
            "to_name": schema.to_name,
            "type": LABELS_TYPE,
            "value": {"start": span.start, "end": span.end, "text": span.text, "labels": [span.label]},
        }
        if span.score is not None:
            result["score"] = float(span.score)
        results.append(result)
    return results


def task_text(task: Any, data_key: str) -> str:
    """The text a task holds under ``data_key``; "" when it has none (a task to give no suggestions).

    >>> task_text({"data": {"text": "cheap thai"}}, "text"), task_text({"data": {}}, "text"), task_text(None, "text")
    ('cheap thai', '', '')
    """
    data = task.get("data") if isinstance(task, dict) else None
    text = data.get(data_key) if isinstance(data, dict) else None
    return text if isinstance(text, str) else ""


def task_name(task: dict, position: int | None = None) -> str:
    """How messages name a task: ``task 17`` by its id, else ``task #3`` by its 1-based position."""
    if isinstance(task, dict) and task.get("id") is not None:
        return f"task {task['id']}"
    return f"task #{position}" if position is not None else "task (no id)"


def task_to_example(
    task: dict,
    schema: LabelSchema,
    report: ConversionReport,
    where: str | None = None,
) -> Example | None:
    """The word-level example of one task's counting annotation, or None (counted in ``report``) when unusable.

    None for: a task that is not an object (``malformed_task``), no text under ``schema.data_key``
    (``missing_text``), an empty text (``empty_text``), no annotation that counts (``no_annotation``).
    A submitted annotation with no spans is a valid all-``O`` example. ``Example.source`` is ``where``
    (default ``task <id>``), so the split of an example can hash it.
    """
    where = where or task_name(task)
    if not isinstance(task, dict):
        report.add("malformed_task", where, "task is not a JSON object; left out")
        return None
    data = task.get("data")
    text = data.get(schema.data_key) if isinstance(data, dict) else None
    if not isinstance(text, str):
        if isinstance(data, dict) and schema.data_key in data:
            found = f"it is {type(text).__name__ if text is not None else 'null'}, not a string"
        elif isinstance(data, dict):
            found = f"has: {', '.join(sorted(data))}" if data else "has no fields"
        else:  # JSON-MIN and CSV exports put the fields at the top level and keep no annotation records
            found = "the task has no data object: export the project as JSON, not JSON-MIN or CSV"
        report.add("missing_text", where, f"no text under data.{schema.data_key} ({found}); left out")
        return None
    if not text.strip():
        report.add("empty_text", where, "empty text; left out")
        return None
    annotation = choose_annotation(task)
    if annotation is None:
        report.add("no_annotation", where, "no submitted (non-cancelled) annotation; left out")
        return None
    spans = results_to_spans(annotation.get("result") or [], schema, report, where)
    example = spans_to_bio(text, spans, schema.labels, report, where)
    example.source = where
    return example


def example_to_task(
    example: Example,
    schema: LabelSchema,
    as_: str = "annotations",
    model_version: str | None = None,
) -> dict:
    """A Label Studio task (ready to import) holding ``example``'s text and its tags as spans.

    ``as_="annotations"`` gives ``{"data": ..., "annotations": [{"result": [...]}]}``; ``as_="predictions"``
    gives ``{"data": ..., "predictions": [{"model_version": ..., "result": [...]}]}`` (version default
    ``"imported"``).
    """
    results = spans_to_results(bio_to_spans(example.text, example.words, example.tags), schema)
    task: dict[str, Any] = {"data": {schema.data_key: example.text}}
    if as_ == "annotations":
        task["annotations"] = [{"result": results}]
    elif as_ == "predictions":
        task["predictions"] = [{"model_version": model_version or IMPORTED_MODEL_VERSION, "result": results}]
    else:
        raise ValueError(f"as_ must be 'annotations' or 'predictions', not {as_!r}")
    return task


def infer_schema(tasks: Iterable[dict], data_key: str | None = None) -> LabelSchema:
    """A schema guessed from exported tasks when no label config is given.

    ``from_name``/``to_name``: the most common pair among ``labels`` results; labels: in first-seen order;
    data key: ``data_key`` if given, else the string field where the most spans' ``value.text`` sits at their
    offsets (the field named like ``to_name`` on a tie), else the field named like ``to_name``, else ``text``, else
    the first string field of the first task. (A ``<Text name="text" value="$review">`` exports ``to_name`` "text"
    while the spans sit in ``review``.)
    Without any labels result: ``label``/``text`` and no labels.
    """
    tasks = [t for t in tasks if isinstance(t, dict)]
    pairs: Counter = Counter()
    other_spans: Counter = Counter()
    labels: dict[str, None] = {}
    for task in tasks:
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                kind = str(result.get("type", "")).lower() if isinstance(result, dict) else ""
                if kind == LABELS_TYPE:
                    pairs[(result.get("from_name"), result.get("to_name"))] += 1
                elif kind.endswith(LABELS_TYPE):
                    other_spans[kind] += 1
    if other_spans and not pairs:
        kinds = ", ".join(f"{n} {kind}" for kind, n in other_spans.most_common())
        raise LabelConfigError(
            f"the export's spans are {kinds} results (HyperText, Paragraphs or other non-<Text> objects, whose "
            "offsets are not character offsets of a plain text); only <Labels> on a <Text> object is supported"
        )
    from_name, to_name = pairs.most_common(1)[0][0] if pairs else ("label", "text")
    for task in tasks:
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                if isinstance(result, dict) and result.get("from_name") == from_name and \
                        str(result.get("type", "")).lower() == LABELS_TYPE:
                    # only the first label of a result counts (see results_to_spans)
                    for label in result_labels(result.get("value") or {})[:1]:
                        labels.setdefault(str(label), None)
    if data_key is None:
        data = next((t.get("data") for t in tasks if isinstance(t.get("data"), dict)), {})
        strings = [k for k, v in data.items() if isinstance(v, str)]
        hits = _span_hits(tasks, from_name, strings)
        if hits:
            best = max(hits.values())
            data_key = to_name if hits.get(to_name) == best else hits.most_common(1)[0][0]
        elif to_name in data:
            data_key = to_name
        elif "text" in data or not strings:
            data_key = "text"
        else:
            data_key = strings[0]
    return LabelSchema(str(from_name), str(to_name), data_key, tuple(labels))


def _span_hits(tasks: list[dict], from_name: Any, keys: list[str]) -> Counter:
    """How many of ``from_name``'s spans point at their own ``value.text`` in each data field among ``keys``.

    The text field of a task with several string fields (``title``, ``review``, ...) is the one the spans fit.
    """
    hits: Counter = Counter()
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                value = result.get("value") if isinstance(result, dict) else None
                if not isinstance(value, dict) or result.get("from_name") != from_name or not value.get("text"):
                    continue
                start, end = value.get("start"), value.get("end")
                for key in keys:
                    text = data.get(key)
                    if isinstance(text, str) and isinstance(start, int) and isinstance(end, int) \
                            and text[start:end] == value["text"]:
                        hits[key] += 1
    return hits
