"""Readers of the training/annotation files this project accepts: MIT-style BIO, CoNLL 2003, Label Studio JSON.

Every reader returns word-level ``Example``s and counts what it repaired or skipped in a ``ConversionReport``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from backend.data.schema import LabelSchema
from backend.data.spans import OUTSIDE, ConversionReport, Example, example_entity_types, repair_bio, tokens_to_text
from backend.data.tasks import infer_schema, task_name, task_to_example

FORMATS = ("bio", "conll2003", "ls-json")
DOCSTART = "-DOCSTART-"
_SNIFF_CHARS = 65536
_SPACES = re.compile(r"\s+")


class FormatError(ValueError):
    """A file cannot be read at all (missing, not text, not JSON, no sentence); the message names the file."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError as error:
        raise FormatError(f"{path}: not UTF-8 text (byte {error.start}); convert it to UTF-8") from None
    except OSError as error:
        raise FormatError(f"{path}: cannot read: {error.strerror}") from None


def _is_tag(field: str) -> bool:
    return field == OUTSIDE or (field[:2] in ("B-", "I-") and len(field) > 2)


def _check_tag(tag: str, report: ConversionReport, where: str) -> str:
    if _is_tag(tag):
        return tag
    report.add("unknown_tag", where, f"tag {tag!r} is not O, B-x or I-x; read as O")
    return OUTSIDE


class _SentenceBuilder:
    """Collects token/tag lines into examples; a sentence ends at a blank line, -DOCSTART- or end of file."""

    def __init__(self, path: Path, report: ConversionReport) -> None:
        self.path, self.report = path, report
        self.examples: list[Example] = []
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.lines: list[int] = []

    def add(self, token: str, tag: str, line_no: int) -> None:
        self.tokens.append(token)
        self.tags.append(_check_tag(tag, self.report, f"{self.path}:{line_no}"))
        self.lines.append(line_no)

    def end(self) -> None:
        if not self.tokens:
            return
        text, words = tokens_to_text(self.tokens)
        tags = repair_bio(self.tags)
        for i, (given, repaired) in enumerate(zip(self.tags, tags)):
            if given != repaired:  # counted here rather than in repair_bio, to name the line of the tag
                previous = tags[i - 1] if i else OUTSIDE
                self.report.add("ill_formed_tag", f"{self.path}:{self.lines[i]}", f"{given} after {previous}; read as {repaired}")
        self.examples.append(Example(text, words, tags, f"{self.path}:{self.lines[0]}"))
        self.tokens, self.tags, self.lines = [], [], []


def _finish(builder: _SentenceBuilder, fmt_hint: str) -> list[Example]:
    builder.end()
    if not builder.examples:
        detail = f" ({builder.report.summary().splitlines()[0]})" if builder.report else ""
        raise FormatError(f"{builder.path}: no sentence could be read{detail}; expected {fmt_hint}")
    return builder.examples


def read_bio(path: str | Path, report: ConversionReport | None = None) -> list[Example]:
    """Read MIT-style BIO: one ``TAG<TAB>token`` per line, a blank line between sentences.

    Tolerates leading/trailing blank lines, CRLF and a missing final newline. A line without a TAB is skipped
    (``bad_line``, with file:line); an ill-formed ``I-x`` is read as ``B-x`` (``ill_formed_tag``); an unknown
    tag is read as ``O`` (``unknown_tag``). Text is rebuilt with single spaces; ``Example.source`` is
    ``file:line`` of the sentence's first line. Raises ``FormatError`` when no sentence can be read.
    """
    path = Path(path)
    report = report if report is not None else ConversionReport()
    builder = _SentenceBuilder(path, report)
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            builder.end()
            continue
        if "\t" not in line:
            report.add("bad_line", f"{path}:{line_no}", f"no TAB in {line.strip()!r:.40}; expected TAG<TAB>token; line skipped")
            continue
        tag, _, token = line.partition("\t")
        tag, token = tag.strip(), token.strip()
        if token == DOCSTART or tag == DOCSTART:
            builder.end()
            continue
        if not token or not tag or any(ch.isspace() for ch in token):
            report.add("bad_line", f"{path}:{line_no}", f"{line.strip()!r:.40} is not TAG<TAB>token; line skipped")
            continue
        builder.add(token, tag, line_no)
    return _finish(builder, "TAG<TAB>token lines with blank lines between sentences")


def read_conll2003(path: str | Path, report: ConversionReport | None = None) -> list[Example]:
    """Read CoNLL 2003: ``token -X- _ TAG`` (Label Studio's layout) or classic ``token POS CHUNK TAG`` lines.

    The token is the first column and the tag the last (any 2+ whitespace-separated columns work);
    ``-DOCSTART-`` lines and blank lines end a sentence. IOB1 tags are converted to IOB2 (counted as
    ``ill_formed_tag``). Lines with a single column are skipped (``bad_line``), and so are comments: lines whose
    first field starts with ``#`` and whose last is not a tag (``comment_line``; ``# O`` stays a word).
    Raises ``FormatError`` when no sentence can be read.
    """
    path = Path(path)
    report = report if report is not None else ConversionReport()
    builder = _SentenceBuilder(path, report)
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            builder.end()
            continue
        if len(fields) < 2:
            report.add("bad_line", f"{path}:{line_no}", f"{line.strip()!r:.40} has one column; expected 'token -X- _ TAG'; line skipped")
            continue
        if fields[0].startswith("#") and not _is_tag(fields[-1]):  # "# sent_id = 3": a comment, not a word
            report.add("comment_line", f"{path}:{line_no}", f"{line.strip()!r:.40} read as a comment; line skipped")
            continue
        builder.add(fields[0], fields[-1], line_no)
    return _finish(builder, "'token -X- _ TAG' lines with blank lines between sentences")


def read_tasks_json(path: str | Path) -> list[dict]:
    """The task list of a Label Studio JSON export (a list of tasks, or one task object).

    Raises ``FormatError`` naming the file and the JSON error position.
    """
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise FormatError(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if isinstance(data, dict):
        data = data.get("tasks", [data]) if "data" not in data else [data]
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of Label Studio tasks, got {type(data).__name__}")
    return data


def keyed_tasks_to_examples(
    tasks: Iterable[dict], schema: LabelSchema, report: ConversionReport
) -> list[tuple[str | int, Example]]:
    """``(key, example)`` for each usable task: key = the task id (what splits hash), else its 1-based position.

    Unusable tasks are left out and counted (see ``task_to_example``); ``Example.source`` is ``task <id>``.
    """
    keyed = []
    for position, task in enumerate(tasks, start=1):
        example = task_to_example(task, schema, report, where=task_name(task, position))
        if example is not None:
            task_id = task.get("id")
            keyed.append((task_id if task_id is not None else position, example))
    return keyed


def tasks_to_examples(tasks: Iterable[dict], schema: LabelSchema, report: ConversionReport) -> list[Example]:
    """``task_to_example`` over tasks, leaving out (and counting) the unusable ones; source = ``task <id>``."""
    return [example for _, example in keyed_tasks_to_examples(tasks, schema, report)]


def read_label_studio_json(
    path: str | Path,
    schema: LabelSchema | None = None,
    report: ConversionReport | None = None,
) -> list[Example]:
    """Read a Label Studio JSON export: one example per task with a counting annotation (see ``tasks``).

    Without ``schema`` it is inferred from the results (``tasks.infer_schema``). Raises ``FormatError`` when
    the file is not JSON or holds no usable task.
    """
    report = report if report is not None else ConversionReport()
    tasks = read_tasks_json(path)
    schema = schema if schema is not None else infer_schema(tasks)
    examples = tasks_to_examples(tasks, schema, report)
    if not examples:
        # The counts, and the first note, which names the task and what was missing (e.g. the data keys it has).
        detail = f" ({report.summary().splitlines()[0]}; first: {report.notes[0]})" if report.notes else ""
        raise FormatError(f"{path}: no usable annotated task among {len(tasks)}{detail}")
    return examples


def detect_format(path: str | Path) -> str:
    """Guess a file's format from its content: ``ls-json``, ``bio`` or ``conll2003``.

    JSON starts with ``[`` or ``{``; ``-DOCSTART-`` means CoNLL; otherwise TAB-separated lines whose first field
    is a tag are BIO, and lines whose last field is a tag (2+ columns) are CoNLL 2003.
    Raises ``FormatError`` when it cannot tell.
    """
    path = Path(path)
    head = _read_text(path)[:_SNIFF_CHARS]
    stripped = head.lstrip()
    if not stripped:
        raise FormatError(f"{path}: the file is empty")
    if stripped[0] in "[{":
        return "ls-json"
    lines = [line for line in head.splitlines()[:200] if line.strip()]
    if any(line.split()[0] == DOCSTART for line in lines):
        return "conll2003"
    bio = sum(1 for line in lines if "\t" in line and _is_tag(line.split("\t", 1)[0].strip()))
    conll = sum(1 for line in lines if len(line.split()) >= 2 and _is_tag(line.split()[-1]))
    if bio and bio >= conll:
        return "bio"
    if conll:
        return "conll2003"
    raise FormatError(
        f"{path}: cannot tell the format (not JSON, no TAG<TAB>token or 'token -X- _ TAG' lines with upper-case "
        "B-/I- tags); pass --from bio, conll2003 or ls-json"
    )


def load_examples(
    path: str | Path,
    fmt: str | None = None,
    schema: LabelSchema | None = None,
    report: ConversionReport | None = None,
) -> list[Example]:
    """Read ``path`` in ``fmt`` (detected when None). ``schema`` is used by ``ls-json`` only."""
    report = report if report is not None else ConversionReport()
    fmt = fmt or detect_format(path)
    if fmt == "bio":
        return read_bio(path, report)
    if fmt == "conll2003":
        return read_conll2003(path, report)
    if fmt == "ls-json":
        return read_label_studio_json(path, schema, report)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def read_examples(
    paths: Iterable[str | Path],
    fmt: str | None = None,
    schema: LabelSchema | None = None,
    report: ConversionReport | None = None,
) -> tuple[list[Example], LabelSchema]:
    """Examples from every file of ``paths`` (in ``fmt``, else each one's detected format) and their labels.

    With ``schema`` (a label config) its labels are the labels: tags of any other become ``O`` (counted, see
    ``restrict_labels``). Without, the labels are those the data's tags name, in first-seen order, in a schema
    ``label`` -> ``text``. The one reader of annotated files of both command lines.
    """
    report = report if report is not None else ConversionReport()
    examples: list[Example] = []
    for path in paths:
        examples.extend(load_examples(path, fmt, schema=schema, report=report))
    if schema is not None:
        return restrict_labels(examples, schema.labels, report), schema
    return examples, LabelSchema("label", "text", "text", tuple(example_entity_types(examples)))


def conll_spelling(label: str) -> str:
    """How a label (or tag) is written in a CoNLL file, whose columns are space-separated: spaces become ``_``.

    >>> conll_spelling("B-Restaurant Name")
    'B-Restaurant_Name'
    """
    return _SPACES.sub("_", label)


def respace_labels(examples: Iterable[Example], labels: Iterable[str]) -> list[Example]:
    """Examples whose labels are written as in CoNLL (``Restaurant_Name`` for ``Restaurant Name``, see
    ``conll_spelling``) get back the spelling of ``labels``; other tags are unchanged.

    >>> text, words = tokens_to_text(["joe's"])
    >>> respace_labels([Example(text, words, ["B-Restaurant_Name"])], ["Restaurant Name"])[0].tags
    ['B-Restaurant Name']
    """
    labels = set(labels)
    spelled = {conll_spelling(label): label for label in labels}
    spelled = {written: label for written, label in spelled.items() if written not in labels}
    if not spelled:
        return list(examples)
    return [Example(e.text, e.words, [tag[:2] + spelled.get(tag[2:], tag[2:]) if tag != OUTSIDE else tag
                                      for tag in e.tags], e.source) for e in examples]


def restrict_labels(examples: Iterable[Example], labels: Iterable[str], report: ConversionReport) -> list[Example]:
    """Examples whose tags with a label outside ``labels`` become ``O`` (counted as ``unknown_label``), after
    ``respace_labels``.

    For files read against a label config: the config is the one source of truth for the labels.
    """
    known = set(labels)
    kept = []
    for example in respace_labels(examples, known):
        tags = list(example.tags)
        for i, tag in enumerate(tags):
            if tag != OUTSIDE and tag[2:] not in known:
                report.add("unknown_label", f"{example.source} word {i + 1}".strip(), f"label {tag[2:]!r} is not in the label config; read as O")
                tags[i] = OUTSIDE
        kept.append(Example(example.text, example.words, tags, example.source))
    return kept
