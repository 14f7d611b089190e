"""Loading YAML files that people write by hand: the agent config and the collector profile.

Errors in such files must point at a line. pydantic reports a location as a path
(``("checks", 1, "params", "count")``); ``load`` records the line of each such path, and
``line_of`` maps an error's path to the nearest recorded one. Duplicate keys are refused:
plain PyYAML keeps the last one silently, which hides typos such as two ``interval:`` lines.
Durations ("30s") are read here too. Each caller words its own messages and hints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

Loc = tuple[int | str, ...]

UNITS: Mapping[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_MERGE_TAG = "tag:yaml.org,2002:merge"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)?\s*$")


class LoadError(Exception):
    """A file that cannot be used; ``messages`` holds one ``file:line: field: problem`` each."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class Duplicate:
    """A mapping key written again: where, and the line of its first spelling."""

    loc: Loc
    line: int
    first_line: int
    mark: yaml.Mark = field(repr=False, compare=False)


class DuplicateKeyError(ConstructorError):
    """Every duplicate key of a document; reads as a YAML error about the first one."""

    def __init__(self, duplicates: list[Duplicate]) -> None:
        first = duplicates[0]
        problem = f"duplicate key {first.loc[-1]!r} (first at line {first.first_line})"
        super().__init__(None, None, problem, first.mark)
        self.duplicates = duplicates


class _LineLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[Duplicate] = []

    def record(self, node: Node, path: Loc, active: frozenset[int] = frozenset()) -> None:
        # An alias can make a node its own descendant; walking it again would never end.
        if id(node) in active:
            return
        active = active | {id(node)}
        if isinstance(node, MappingNode):
            first: dict[int | str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # keys written here override merged ones: that is no duplicate
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, int | str):
                    continue  # construction reports unhashable keys; config keys are words
                line = key_node.start_mark.line + 1
                if key in first:
                    dupe = Duplicate((*path, key), line, first[key], key_node.start_mark)
                    self.duplicates.append(dupe)
                else:
                    first[key] = line
            self.flatten_mapping(node)  # resolves "<<" merge keys the way construction will
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, int | str):
                    self.lines[(*path, key)] = key_node.start_mark.line + 1
                    self.record(value_node, (*path, key), active)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self.record(item, (*path, i), active)


def load(text: str) -> tuple[Any, dict[Loc, int]]:
    """Parse one YAML document; return the data and the line of every key and item.

    Raises ``DuplicateKeyError`` listing every duplicate key, or another ``yaml.YAMLError``
    (with a ``problem_mark`` where PyYAML knows one) on bad input.
    """
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {(): 1}
        try:
            loader.record(node, ())
        except yaml.YAMLError:
            # The duplicates come earlier in the walk, so they are the first problem to show.
            if loader.duplicates:
                raise DuplicateKeyError(loader.duplicates) from None
            raise
        if loader.duplicates:
            raise DuplicateKeyError(loader.duplicates)
        data = loader.construct_document(node)
        loader.lines[()] = node.start_mark.line + 1
        return data, loader.lines
    finally:
        loader.dispose()


def read_mapping(
    path: str | os.PathLike[str], error: type[LoadError], keys: str
) -> tuple[dict[Any, Any], dict[Loc, int]]:
    """Read a YAML file that must hold a mapping; raise ``error`` saying what is wrong, where.
    ``keys`` names the top-level keys expected, for the message when it is no mapping."""
    shown = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error([f"{shown}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise error([f"{shown}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        raw, lines = load(text)
    except yaml.YAMLError as exc:
        line, problem = yaml_error_line(exc)
        raise error([f"{shown}:{line}: YAML: {problem}"]) from None
    if not isinstance(raw, dict):
        raise error([f"{shown}:1: the file must be a YAML mapping ({keys})"])
    return raw, lines


def line_of(lines: Mapping[Loc, int], loc: Loc) -> int:
    """The line of ``loc``, or of its nearest recorded ancestor (a missing key has no line)."""
    for n in range(len(loc), -1, -1):
        line = lines.get(loc[:n])
        if line is not None:
            return line
    return 1


def yaml_error_line(exc: yaml.YAMLError) -> tuple[int, str]:
    """The line and a one-line description of a PyYAML error."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        text = ": ".join(parts) or "invalid YAML"
        return (mark.line + 1 if mark else 1), text
    return 1, str(exc).splitlines()[0] if str(exc) else "invalid YAML"


def dotted(loc: Loc) -> str:
    """A location as people write it: ``checks[1].params.count``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out


def located(source: str, lines: Mapping[Loc, int], loc: Loc, text: str, root: str = "") -> str:
    """One ``file:line: field.path: problem`` message; ``root`` names an empty path."""
    path = dotted(loc) or root
    line = line_of(lines, loc)
    return f"{source}:{line}: {path}: {text}" if path else f"{source}:{line}: {text}"


def field_errors(exc: ValidationError) -> Iterator[tuple[Loc, bool, ErrorDetails]]:
    """Each pydantic error with its location, and whether a dict key (not its value) is wrong.

    pydantic puts a bad dict key at ``(..., key, "[key]")``; the location given is the key's.
    """
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        bad_key = len(loc) >= 2 and loc[-1] == "[key]"
        yield (loc[:-1] if bad_key else loc), bad_key, err


def model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model a location points into, for naming the keys it allows."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = info.annotation
        args = getattr(current, "__args__", ())
        if getattr(current, "__origin__", None) is list and args:
            current = args[0]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def parse_duration(value: object, units: Mapping[str, float] = UNITS) -> float:
    """Seconds from "500ms", "30s", "5m", "1h" (the suffixes of ``units``) or a plain number.

    Raises ValueError; the range a duration may take is the caller's to check.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        size = units.get(m.group(2) or "s")
        if size is not None:
            return float(m.group(1)) * size
    raise ValueError(
        f"invalid duration {value!r}: use e.g. 500ms, 30s, 5m, 1h or a number of seconds"
    )
