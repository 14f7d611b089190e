"""The shared loader for hand-written YAML: lines by path, duplicate keys, aliases, durations."""

from __future__ import annotations

import math

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.confload import (
    DuplicateKeyError,
    dotted,
    field_errors,
    line_of,
    load,
    located,
    model_at,
    parse_duration,
    yaml_error_line,
)

DOC = """\
ward: phường-bến-thành
checks:
  - name: wan
    params:
      count: 3
  - name: mail
"""


def test_every_key_and_item_has_its_line() -> None:
    data, lines = load(DOC)
    assert data["checks"][0]["params"] == {"count": 3}
    assert lines[()] == 1
    assert lines[("ward",)] == 1
    assert lines[("checks", 0)] == 3
    assert lines[("checks", 0, "params", "count")] == 5
    assert lines[("checks", 1, "name")] == 6


def test_line_of_falls_back_to_the_nearest_ancestor() -> None:
    _, lines = load(DOC)
    # a key that is missing has no line of its own: its mapping's is the best there is
    assert line_of(lines, ("checks", 1, "target")) == 6
    assert line_of(lines, ("checks", 0, "params", "size", 2)) == 4
    assert line_of(lines, ("nowhere", "at", "all")) == 1
    assert line_of({}, ("x",)) == 1


def test_an_empty_document_is_none_on_line_one() -> None:
    assert load("# only a comment\n") == (None, {(): 1})


def test_duplicate_keys_are_all_listed_with_their_first_line() -> None:
    text = "a: 1\nb:\n  x: 1\n  x: 2\na: 3\na: 4\n"
    with pytest.raises(DuplicateKeyError) as caught:
        load(text)
    found = [(d.loc, d.line, d.first_line) for d in caught.value.duplicates]
    # a mapping's own duplicates come before those of the mappings inside it
    assert found == [(("a",), 5, 1), (("a",), 6, 1), (("b", "x"), 4, 3)]
    # read as a YAML error, it names the first one
    assert yaml_error_line(caught.value) == (5, "duplicate key 'a' (first at line 1)")


def test_keys_are_compared_as_values_not_spellings() -> None:
    with pytest.raises(DuplicateKeyError) as caught:
        load("port: 1\n'port': 2\n")
    assert caught.value.duplicates[0].loc == ("port",)
    # 1 and "1" are two different keys of the mapping, so neither hides the other
    data, lines = load("1: a\n'1': b\n")
    assert data == {1: "a", "1": "b"}
    assert (lines[(1,)], lines[("1",)]) == (1, 2)


def test_merged_keys_take_their_anchor_line_and_overrides_theirs() -> None:
    text = "base: &b {count: 3, size: 56}\nprobe:\n  <<: *b\n  count: 0\n"
    data, lines = load(text)
    assert data["probe"] == {"count": 0, "size": 56}
    assert lines[("probe", "size")] == 1  # written once, in the anchor
    assert lines[("probe", "count")] == 4  # the override is no duplicate
    assert ("probe", "<<") not in lines


def test_aliases_are_walked_at_every_use() -> None:
    data, lines = load("a: &x\n  - 1\n  - 2\nb: *x\n")
    assert data == {"a": [1, 2], "b": [1, 2]}
    assert lines[("b", 1)] == 3  # the item's line is where it was written


def test_a_self_containing_alias_ends() -> None:
    data, lines = load("a: &x [1, *x]\n")
    assert data["a"][1] is data["a"]
    assert lines[("a", 0)] == 1


def test_yaml_errors_carry_a_line() -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        load("a: 1\nb: [2\nc: 3\n")
    # the problem is seen where the unclosed list runs into the next key
    assert yaml_error_line(caught.value) == (
        3,
        "while parsing a flow sequence: expected ',' or ']', but got ':'",
    )


def test_unsafe_tags_are_refused() -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        load("a: !!python/object/apply:os.system ['true']\n")
    line, text = yaml_error_line(caught.value)
    assert line == 1
    assert "could not determine a constructor" in text


def test_dotted_and_located() -> None:
    assert dotted(("checks", 1, "params", "count")) == "checks[1].params.count"
    assert dotted((0, "a")) == "[0].a"
    assert dotted(()) == ""
    lines = {(): 1, ("checks",): 2, ("checks", 0): 3}
    assert located("a.yaml", lines, ("checks", 0, "name"), "bad") == "a.yaml:3: checks[0].name: bad"
    assert located("a.yaml", lines, (), "not a mapping") == "a.yaml:1: not a mapping"
    assert located("a.yaml", lines, (), "empty", root="(file)") == "a.yaml:1: (file): empty"


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = 1
    tags: dict[str, int] = {}


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[_Inner] = []
    one: _Inner = _Inner()


def test_field_errors_point_at_a_bad_key_itself() -> None:
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate({"items": [{"count": "x", "tags": {1: 2}}]})
    got = {(loc, bad_key, err["type"]) for loc, bad_key, err in field_errors(caught.value)}
    assert got == {
        (("items", 0, "count"), False, "int_parsing"),
        (("items", 0, "tags", 1), True, "string_type"),
    }


def test_model_at_follows_lists_and_nested_models() -> None:
    assert model_at(_Outer, ()) is _Outer
    assert model_at(_Outer, ("items", 3)) is _Inner
    assert model_at(_Outer, ("one",)) is _Inner
    assert model_at(_Outer, ("one", "tags")) is None
    assert model_at(_Outer, ("nothing",)) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        (" 30s ", 30.0),
        ("30 s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2.5", 2.5),
        (".5s", 0.5),
        ("5.", 5.0),
        (7, 7.0),
        (0.25, 0.25),
        ("0", 0.0),  # the range is the caller's to judge
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "s", "30 sec", "5 minutes", "1d", "-1s", "5S", "1h30m", "1e3", True, None, []]
)
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*: use e\.g\. 500ms, 30s, 5m, 1h"):
        parse_duration(value)


def test_duration_units_are_the_callers_choice() -> None:
    days = {"s": 1.0, "d": 86400.0}
    assert parse_duration("2d", days) == 172800.0
    assert parse_duration("90", days) == 90.0  # a bare number is seconds
    with pytest.raises(ValueError):
        parse_duration("5m", days)


def test_a_huge_number_is_infinite_not_an_error() -> None:
    assert math.isinf(parse_duration("9" * 400))
