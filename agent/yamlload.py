"""YAML loading that remembers the line of every mapping key and sequence item.

Config errors must point at a line. pydantic reports a location as a path (``("checks", 1,
"params", "count")``); the loader records the line of each such path, and ``line_of`` maps an
error's path to the nearest recorded one. Duplicate keys are refused: plain PyYAML keeps the
last one silently, which hides typos such as two ``interval:`` lines.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

Loc = tuple[int | str, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class LineLoader(yaml.SafeLoader):
    """SafeLoader that fills ``lines`` with the 1-based line of every key and item, by path."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[Loc, int] = {}

    def record(self, node: Node, path: Loc, active: frozenset[int] = frozenset()) -> None:
        # An alias can make a node its own descendant; walking it again would never end.
        if id(node) in active:
            return
        active = active | {id(node)}
        if isinstance(node, MappingNode):
            seen: dict[int | str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # keys written here override merged ones: that is no duplicate
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, int | str):
                    continue  # construction reports unhashable keys; config keys are words
                if key in seen:
                    raise ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {seen[key]})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
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

    Raises ``yaml.YAMLError`` (with a ``problem_mark`` where PyYAML knows one) on bad input.
    """
    loader = LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {(): 1}
        loader.record(node, ())
        data = loader.construct_document(node)
        loader.lines[()] = node.start_mark.line + 1
        return data, loader.lines
    finally:
        loader.dispose()


def line_of(lines: dict[Loc, int], loc: Loc) -> int:
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
