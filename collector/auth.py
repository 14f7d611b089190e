"""PLACEHOLDER for the board's branch: the real module (roles, viewer tokens) comes from
helper H4b's branch and replaces this file at merge. Same names, same shapes: ``Principal``,
and the FastAPI dependencies ``reader`` and ``admin``, which accept ``Authorization: Bearer``
or the ``wardready_token`` cookie. Until then everyone is an anonymous admin.
"""

from __future__ import annotations

from dataclasses import dataclass

COOKIE = "wardready_token"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    ward: str | None


def reader() -> Principal:
    return Principal("anonymous", "admin", None)


def admin() -> Principal:
    return Principal("anonymous", "admin", None)
