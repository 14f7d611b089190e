"""PLACEHOLDER for the audit branch: the real module (roles, viewer and admin tokens) comes
from helper H4b's branch and replaces this file at merge. Same names and shapes: ``Principal``
and the FastAPI dependencies ``reader`` and ``admin``. Until then everyone is an anonymous
admin.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    ward: str | None


def reader() -> Principal:
    return Principal("anonymous", "admin", None)


def admin() -> Principal:
    return Principal("anonymous", "admin", None)
