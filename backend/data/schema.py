"""Which part of a Label Studio labelling config this backend works on: one Labels control bound to one Text object.

Built on label-studio-sdk's ``LabelInterface`` (it parses the XML); this module only chooses and validates.
"""
from __future__ import annotations

from dataclasses import dataclass

from backend.data.spans import OUTSIDE

# HyperText spans carry XPath offsets, not plain character offsets, so only <Text> is supported.
TEXT_OBJECT_TAGS = ("Text",)
LABELS_CONTROL_TAG = "Labels"


class LabelConfigError(ValueError):
    """The labelling config cannot be used for NER; the message says why and what to change."""


@dataclass(frozen=True)
class LabelSchema:
    """The NER part of a config: ``from_name`` (the Labels control), ``to_name`` (the Text object),
    ``data_key`` (the task data field holding the text, ``$text`` -> ``"text"``) and the labels in config order.

    >>> LabelSchema("label", "text", "text", ("Dish", "Price")).bio_labels
    ['O', 'B-Dish', 'I-Dish', 'B-Price', 'I-Price']
    """

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]

    @property
    def bio_labels(self) -> list[str]:
        """``O``, then ``B-x`` and ``I-x`` for each label in config order: the model's label ids."""
        return [OUTSIDE] + [f"{prefix}-{label}" for label in self.labels for prefix in ("B", "I")]


@dataclass(frozen=True)
class _Pair:
    from_name: str
    to_name: str
    value: str
    labels: tuple[str, ...]
    value_type: str = "text"


def _labels_text_pairs(interface) -> list[_Pair]:
    pairs = []
    for control in interface.controls:
        if control.tag != LABELS_CONTROL_TAG:
            continue
        for obj in control.objects:
            if obj.tag in TEXT_OBJECT_TAGS:
                value_type = str((getattr(obj, "attr", None) or {}).get("valueType") or "text")
                pairs.append(_Pair(control.name, obj.name, obj.value or "", tuple(control.labels or ()), value_type))
    return pairs


def parse_label_config(xml: str, from_name: str | None = None, to_name: str | None = None) -> LabelSchema:
    """Read a Label Studio config and return the one ``<Labels>`` control bound to a ``<Text>`` object.

    A config may hold other controls (Choices, TextArea, RectangleLabels, ...): they are ignored. When several
    Labels+Text pairs exist, pass ``from_name`` (the Labels ``name``) and, if that control points at several
    Text objects, ``to_name``; otherwise a ``LabelConfigError`` lists the names to choose from. Also raised for
    malformed XML, no pair at all, a Labels control without ``<Label>`` values, or a Text whose ``value``
    is not a task field (``$key``).

    >>> xml = '<View><Labels name="ner" toName="t"><Label value="Dish"/></Labels><Text name="t" value="$review"/></View>'
    >>> parse_label_config(xml)
    LabelSchema(from_name='ner', to_name='t', data_key='review', labels=('Dish',))
    """
    if not xml or not xml.strip():
        raise LabelConfigError("the label config is empty; give the project's labelling XML (<View>...</View>)")
    # imported here: the SDK's config parser takes about a second to import, and file conversions never need it
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(xml)
    except Exception as error:  # the SDK raises its own (non-ValueError) syntax errors
        raise LabelConfigError(f"the label config is not valid XML: {error}") from error

    pairs = _labels_text_pairs(interface)
    if not pairs:
        raise LabelConfigError(
            "the label config has no <Labels> control bound to a <Text> object (toName must name the Text tag); "
            'add e.g. <Labels name="label" toName="text">...</Labels><Text name="text" value="$text"/>'
        )
    if from_name is not None:
        chosen = [p for p in pairs if p.from_name == from_name]
        if not chosen:
            raise LabelConfigError(
                f"no <Labels name={from_name!r}> bound to a <Text> in the label config; "
                f"available: {', '.join(sorted({p.from_name for p in pairs}))}"
            )
        pairs = chosen
    if to_name is not None:
        chosen = [p for p in pairs if p.to_name == to_name]
        if not chosen:
            raise LabelConfigError(
                f"no <Labels> bound to <Text name={to_name!r}>; available: {', '.join(sorted({p.to_name for p in pairs}))}"
            )
        pairs = chosen
    if len(pairs) > 1:
        names = ", ".join(f"{p.from_name} -> {p.to_name}" for p in pairs)
        raise LabelConfigError(
            f"the label config has several <Labels>/<Text> pairs ({names}); the ML backend handles configs with one "
            "pair only (keep one in the project's config); for a conversion choose one by its Labels name "
            "(from_name: the exporter's --from-name)" + (" and Text name (to_name: --to-name)" if len({p.from_name for p in pairs}) == 1 else "")
        )

    pair = pairs[0]
    if not pair.value.startswith("$") or len(pair.value) < 2:
        raise LabelConfigError(
            f"<Text name={pair.to_name!r}> has value={pair.value!r}; it must name a task data field like \"$text\""
        )
    if pair.value_type.lower() != "text":
        raise LabelConfigError(
            f"<Text name={pair.to_name!r}> has valueType={pair.value_type!r}: its tasks hold a link that Label Studio "
            "loads, so the backend would label the link, not the text; put the text itself in the tasks and drop "
            "valueType (or set it to \"text\")"
        )
    if not pair.labels:
        raise LabelConfigError(f"<Labels name={pair.from_name!r}> has no <Label value=...> children; add the entity labels")
    return LabelSchema(pair.from_name, pair.to_name, pair.value[1:], pair.labels)


def load_label_config(path, from_name: str | None = None, to_name: str | None = None) -> LabelSchema:
    """``parse_label_config`` of an XML file; unreadable files raise ``LabelConfigError`` naming the path."""
    try:
        with open(path, encoding="utf-8") as handle:
            xml = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise LabelConfigError(f"cannot read label config {path}: {error}") from error
    try:
        return parse_label_config(xml, from_name, to_name)
    except LabelConfigError as error:
        raise LabelConfigError(f"{path}: {error}") from error
