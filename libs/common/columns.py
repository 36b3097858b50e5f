"""Columns of the services' tables named in runs: one call per run of columns of the same kind, in table order.

Every service's tables are SQLAlchemy Core with times as epoch micros and money as integer cents, so most columns
are a name, a type and whether the column may be null; a table lists them as ``*primary(...)``, ``*required(...)``
and ``*optional(...)`` runs. A column with more to say (a default, its own index) stays a ``Column``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column

PERSON_KEY = 300  # "anon:" + a 256-character anonymous_id
ID = 256  # event ids, order ids, coupon codes as posted


def primary(**types: Any) -> list[Column[Any]]:
    """Primary-key columns, in the order given."""
    return [Column(name, type_, primary_key=True) for name, type_ in types.items()]


def required(**types: Any) -> list[Column[Any]]:
    """NOT NULL columns, in the order given."""
    return [Column(name, type_, nullable=False) for name, type_ in types.items()]


def optional(**types: Any) -> list[Column[Any]]:
    """Nullable columns, in the order given."""
    return [Column(name, type_, nullable=True) for name, type_ in types.items()]
