"""Ownership and pagination: one helper each, used by every resource."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from common.errors import InvalidRequest, NotFound

T = TypeVar("T")

MAX_LIMIT = 100


def get_owned(session: Session, model: type[T], obj_id: str, tenant_id: str, *, what: str, param: str | None = None,
              for_update: bool = False) -> T:
    """The row if it exists and belongs to the tenant; otherwise 404 (never 403: no one learns what others have)."""
    stmt = select(model).where(model.id == obj_id, model.tenant_id == tenant_id)  # type: ignore[attr-defined]
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None:
        raise NotFound(f"no {what} with id {obj_id!r}", param=param, code=f"{what.replace(' ', '_')}_not_found")
    return row


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}; got {limit}", param="limit")
    return limit


def paginate(session: Session, stmt: Select[Any], model: Any, *, after: str | None, limit: int,
             tenant_id: str) -> tuple[list[Any], bool]:
    """Newest first; `after` is the id of the last row of the previous page."""
    check_limit(limit)
    if after is not None:
        anchor = session.execute(
            select(model.created_at, model.id).where(model.id == after, model.tenant_id == tenant_id)
        ).one_or_none()
        if anchor is None:
            raise InvalidRequest(f"`after` names no object of yours: {after!r}", param="after", code="invalid_cursor")
        stmt = stmt.where(
            or_(model.created_at < anchor.created_at, and_(model.created_at == anchor.created_at, model.id < anchor.id))
        )
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
