"""PLACEHOLDER for branch h8-fleet only: the lead keeps H4b's real ``collector/auth.py``.

Stands in for the FastAPI dependencies ``reader`` and ``admin`` so the fleet's admin-only
routes can be written against them; here every caller is an anonymous admin.
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
