"""Specification of backend/data/schema.py: which Labels/Text pair of a Label Studio config the backend uses."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.data.schema import LabelConfigError, LabelSchema, load_label_config, parse_label_config

REPO = Path(__file__).resolve().parents[2]
RESTAURANT_LABELS = ("Amenity", "Cuisine", "Dish", "Hours", "Location", "Price", "Rating", "Restaurant_Name")


def _labels(name: str, to_name: str, *values: str) -> str:
    inner = "".join(f'<Label value="{v}"/>' for v in values)
    return f'<Labels name="{name}" toName="{to_name}">{inner}</Labels>'


def test_restaurant_config_gives_names_data_key_and_labels_in_config_order():
    schema = load_label_config(REPO / "label_config" / "restaurant.xml")
    assert schema == LabelSchema("label", "text", "text", RESTAURANT_LABELS)


def test_bio_labels_are_o_then_b_and_i_per_label_in_config_order():
    schema = LabelSchema("ner", "t", "review", ("Zeta", "Alpha"))
    assert schema.bio_labels == ["O", "B-Zeta", "I-Zeta", "B-Alpha", "I-Alpha"]


def test_other_controls_and_objects_are_ignored():
    xml = (
        "<View>"
        '<Image name="img" value="$image"/>'
        '<RectangleLabels name="box" toName="img"><Label value="Car"/></RectangleLabels>'
        '<Choices name="sentiment" toName="review"><Choice value="good"/></Choices>'
        + _labels("ner", "review", "Dish", "Price")
        + '<Text name="review" value="$body"/>'
        "</View>"
    )
    assert parse_label_config(xml) == LabelSchema("ner", "review", "body", ("Dish", "Price"))


def test_config_without_a_labels_text_pair_is_refused_with_a_hint():
    xml = '<View><Choices name="c" toName="t"><Choice value="a"/></Choices><Text name="t" value="$text"/></View>'
    with pytest.raises(LabelConfigError, match="no <Labels> control bound to a <Text>"):
        parse_label_config(xml)


def test_labels_bound_to_an_image_do_not_count():
    xml = '<View>' + _labels("l", "img", "A") + '<Image name="img" value="$image"/></View>'
    with pytest.raises(LabelConfigError, match="no <Labels>"):
        parse_label_config(xml)


def test_several_pairs_are_refused_listing_the_names_to_choose_from():
    xml = "<View>" + _labels("who", "t", "Person") + _labels("what", "t", "Dish") + '<Text name="t" value="$text"/></View>'
    with pytest.raises(LabelConfigError) as error:
        parse_label_config(xml)
    assert "who -> t" in str(error.value) and "what -> t" in str(error.value) and "from_name" in str(error.value)


def test_from_name_chooses_among_several_pairs():
    xml = "<View>" + _labels("who", "t", "Person") + _labels("what", "t", "Dish") + '<Text name="t" value="$text"/></View>'
    assert parse_label_config(xml, from_name="what").labels == ("Dish",)


def test_unknown_from_name_is_refused_listing_the_available_ones():
    xml = "<View>" + _labels("who", "t", "Person") + '<Text name="t" value="$text"/></View>'
    with pytest.raises(LabelConfigError, match="available: who"):
        parse_label_config(xml, from_name="what")


def test_one_labels_control_on_two_texts_needs_to_name():
    xml = "<View>" + _labels("ner", "a,b", "Dish") + '<Text name="a" value="$title"/><Text name="b" value="$body"/></View>'
    with pytest.raises(LabelConfigError, match="to_name"):
        parse_label_config(xml)
    assert parse_label_config(xml, to_name="b").data_key == "body"


def test_a_text_loaded_from_a_url_is_refused_saying_why():
    # The task holds only the link: spans would be placed on the link's characters, not on the text shown.
    xml = "<View>" + _labels("l", "t", "A") + '<Text name="t" value="$doc" valueType="url"/></View>'
    with pytest.raises(LabelConfigError, match=r"valueType='url'.*would label the link"):
        parse_label_config(xml)
    assert parse_label_config(xml.replace('valueType="url"', 'valueType="text"')).data_key == "doc"


@pytest.mark.parametrize("xml", ["", "   ", "<View><Labels name='l' toName='t'>", "not xml at all"])
def test_malformed_or_empty_xml_is_a_label_config_error(xml):
    with pytest.raises(LabelConfigError):
        parse_label_config(xml)


def test_labels_without_label_values_are_refused():
    xml = '<View><Labels name="l" toName="t"></Labels><Text name="t" value="$text"/></View>'
    with pytest.raises(LabelConfigError, match="no <Label"):
        parse_label_config(xml)


def test_text_with_a_literal_value_instead_of_a_data_field_is_refused():
    xml = "<View>" + _labels("l", "t", "A") + '<Text name="t" value="hello"/></View>'
    with pytest.raises(LabelConfigError, match=r"\$text"):
        parse_label_config(xml)


def test_unreadable_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.xml"
    with pytest.raises(LabelConfigError, match="nope.xml"):
        load_label_config(missing)


def test_label_config_error_is_a_value_error():
    assert issubclass(LabelConfigError, ValueError)
