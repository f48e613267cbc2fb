"""Writers of the export formats: CoNLL 2003 in Label Studio's layout, MIT-style BIO, a Hugging Face DatasetDict,
and Label Studio tasks JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from backend.data.formats import conll_spelling
from backend.data.spans import ConversionReport, Example, replace_lone_surrogates

CONLL_DOCSTART = "-DOCSTART- -X- O"


def _conll_tag(tag: str, report: ConversionReport | None, where: str) -> str:
    # A label with a space ("Restaurant Name") would add a column; underscores keep the 4-column layout.
    fixed = conll_spelling(tag)
    if fixed == tag:
        return tag
    if report is not None:
        report.add("label_renamed", where, f"{tag!r} written as {fixed!r} (CoNLL columns are space-separated)")
    return fixed


def conll2003_text(examples: Iterable[Example], report: ConversionReport | None = None) -> str:
    """CoNLL 2003 as Label Studio exports it: ``-DOCSTART- -X- O``, a blank line, then ``token -X- _ TAG``
    lines (IOB2) with a blank line after each sentence.

    >>> from backend.data.spans import spans_to_bio, Span
    >>> print(conll2003_text([spans_to_bio("cheap thai", [Span(6, 10, "Cuisine")])]), end="")
    -DOCSTART- -X- O
    <BLANKLINE>
    cheap -X- _ O
    thai -X- _ B-Cuisine
    <BLANKLINE>
    """
    parts = [CONLL_DOCSTART + "\n\n"]
    for example in examples:
        if not example.words:
            continue  # an empty sentence would merge into a double blank line; readers cannot see it
        parts.append("".join(
            f"{word.text} -X- _ {_conll_tag(tag, report, example.source)}\n"
            for word, tag in zip(example.words, example.tags)
        ) + "\n")
    return "".join(parts)


def bio_text(examples: Iterable[Example]) -> str:
    """MIT-style BIO: ``TAG<TAB>token`` lines, a blank line between sentences.

    >>> from backend.data.spans import tokens_to_text
    >>> text, words = tokens_to_text(["cheap", "thai"])
    >>> bio_text([Example(text, words, ["O", "B-Cuisine"])])
    'O\\tcheap\\nB-Cuisine\\tthai\\n'
    """
    sentences = [
        "".join(f"{tag}\t{word.text}\n" for word, tag in zip(example.words, example.tags))
        for example in examples
        if example.words
    ]
    return "\n".join(sentences)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_lone_surrogates(text), encoding="utf-8")  # UTF-8 cannot hold them; offsets stay
    return path


def write_conll2003(examples: Iterable[Example], path: str | Path, report: ConversionReport | None = None) -> Path:
    """Write ``conll2003_text`` to ``path`` (parent folders created)."""
    return _write(Path(path), conll2003_text(examples, report))


def write_bio(examples: Iterable[Example], path: str | Path) -> Path:
    """Write ``bio_text`` to ``path`` (parent folders created)."""
    return _write(Path(path), bio_text(examples))


def write_tasks(tasks: Sequence[dict], path: str | Path) -> Path:
    """Write Label Studio tasks as a JSON list (UTF-8, non-ASCII kept), ready for Label Studio's import."""
    return _write(Path(path), json.dumps(list(tasks), ensure_ascii=False, indent=1) + "\n")


def build_dataset(splits: Mapping[str, Sequence[tuple[str | int, Example]]], bio_labels: Sequence[str]):
    """A ``datasets.DatasetDict``: one split per key, columns ``id`` (string), ``tokens`` (sequence of strings)
    and ``ner_tags`` (sequence of ``ClassLabel(names=bio_labels)``), as the Hub's CoNLL-style NER datasets.

    Raises ValueError when a tag is not in ``bio_labels``.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence as HFSequence, Value

    features = Features({
        "id": Value("string"),
        "tokens": HFSequence(Value("string")),
        "ner_tags": HFSequence(ClassLabel(names=list(bio_labels))),
    })
    index = {label: i for i, label in enumerate(bio_labels)}
    dataset = {}
    for name, keyed in splits.items():
        columns: dict[str, list] = {"id": [], "tokens": [], "ner_tags": []}
        for key, example in keyed:
            unknown = [tag for tag in example.tags if tag not in index]
            if unknown:
                raise ValueError(f"{example.source}: tag {unknown[0]!r} is not in the label list {list(bio_labels)}")
            columns["id"].append(str(key))
            columns["tokens"].append(example.tokens)
            columns["ner_tags"].append([index[tag] for tag in example.tags])
        dataset[name] = Dataset.from_dict(columns, features=features)
    return DatasetDict(dataset)


def write_dataset(
    splits: Mapping[str, Sequence[tuple[str | int, Example]]],
    bio_labels: Sequence[str],
    out_dir: str | Path,
    progress: bool = False,
) -> Path:
    """``build_dataset(...).save_to_disk(out_dir)``; load it back with ``datasets.load_from_disk``.

    ``progress=False`` silences the datasets library's own per-split progress bars.
    """
    from datasets.utils import logging as datasets_logging

    out_dir = Path(out_dir)
    dataset = build_dataset(splits, bio_labels)
    was_enabled = datasets_logging.is_progress_bar_enabled()
    if not progress:
        datasets_logging.disable_progress_bar()
    try:
        # one shard per split: datasets writes an empty split as zero shards, which load_from_disk cannot read
        dataset.save_to_disk(str(out_dir), num_shards={name: 1 for name in dataset})
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()
    return out_dir
