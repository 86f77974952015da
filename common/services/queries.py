"""Ownership and pagination: one helper each, used by every resource. The statements and errors are shared with
the asyncio read side (common/services/reads.py), so both answer alike."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from common.errors import InvalidRequest, NotFound

T = TypeVar("T")

MAX_LIMIT = 100


def _not_deleted(model: type[Any], stmt: Select[Any]) -> Select[Any]:
    """A deleted file or model (`deleted_at` set) is not found, as if it never existed."""
    return stmt.where(model.deleted_at.is_(None)) if hasattr(model, "deleted_at") else stmt


def owned_statement(model: type[T], obj_id: str, tenant_id: str) -> Select[Any]:
    return _not_deleted(model, select(model).where(model.id == obj_id,  # type: ignore[attr-defined]
                                                   model.tenant_id == tenant_id))  # type: ignore[attr-defined]


_OWNED_BY_ID: dict[type[Any], Select[Any]] = {}


def owned_by_id_statement(model: type[Any]) -> Select[Any]:
    """`owned_statement` with bound parameters `obj_id`, `tenant_id`: one statement object per model, whose
    SQLAlchemy cache key is computed once (a new statement per request costs more than its query here)."""
    stmt = _OWNED_BY_ID.get(model)
    if stmt is None:
        stmt = _OWNED_BY_ID[model] = _not_deleted(model, select(model).where(
            model.id == bindparam("obj_id"), model.tenant_id == bindparam("tenant_id")))
    return stmt


def not_found(what: str, obj_id: str, param: str | None) -> NotFound:
    return NotFound(f"no {what} with id {obj_id!r}", param=param, code=f"{what.replace(' ', '_')}_not_found")


def get_owned(session: Session, model: type[T], obj_id: str, tenant_id: str, *, what: str, param: str | None = None,
              for_update: bool = False, for_share: bool = False) -> T:
    """The row if it exists and belongs to the tenant; otherwise 404 (never 403: no one learns what others have).
    Locked until the transaction ends: `for_update` against every other lock, `for_share` only against those."""
    stmt = owned_statement(model, obj_id, tenant_id)
    if for_update or for_share:
        stmt = stmt.with_for_update(read=not for_update)
    row = session.scalar(stmt)
    if row is None:
        raise not_found(what, obj_id, param)
    return row


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}; got {limit}", param="limit")
    return limit


def anchor_statement(model: Any, after: str, tenant_id: str) -> Select[Any]:
    return select(model.created_at, model.id).where(model.id == after, model.tenant_id == tenant_id)


def bad_cursor(after: str) -> InvalidRequest:
    return InvalidRequest(f"`after` names no object of yours: {after!r}", param="after", code="invalid_cursor")


def page_statement(stmt: Select[Any], model: Any, anchor: Any, limit: int) -> Select[Any]:
    """Newest first, after the `anchor` row (created_at, id) when there is one, one row more than a page."""
    if anchor is not None:
        created_at, anchor_id = anchor
        stmt = stmt.where(
            or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < anchor_id))
        )
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def paginate(session: Session, stmt: Select[Any], model: Any, *, after: str | None, limit: int,
             tenant_id: str) -> tuple[list[Any], bool]:
    """Newest first; `after` is the id of the last row of the previous page."""
    check_limit(limit)
    anchor = None
    if after is not None:
        anchor = session.execute(anchor_statement(model, after, tenant_id)).one_or_none()
        if anchor is None:
            raise bad_cursor(after)
    rows = list(session.scalars(page_statement(stmt, model, anchor, limit)))
    return rows[:limit], len(rows) > limit
