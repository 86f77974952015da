"""The API's hot reads on the asyncio engine (common/db.py `read`): a job with its queue position, a file, and
pages of jobs and files. The same statements and errors as the sync side (common/services/queries.py,
common/services/jobs.py), so both answer alike; one round trip each (two for a page after a cursor).

They run on a Core connection, not an ORM session (whose bookkeeping costs more than the query here), and hand
back detached model objects built from the row: the same objects the sync services return."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Row, Select
from sqlalchemy.ext.asyncio import AsyncConnection

from common.models import Job
from common.services.jobs import job_with_queue_position_statement, jobs_statement
from common.services.queries import (
    anchor_statement,
    bad_cursor,
    check_limit,
    not_found,
    owned_by_id_statement,
    page_statement,
)

T = TypeVar("T")


def _of(model: type[T], row: Row[Any]) -> T:
    """A detached `model` object with the row's columns (the mapped attributes are named as the columns)."""
    columns = model.__table__.columns.keys()  # type: ignore[attr-defined]
    return model(**{name: row._mapping[name] for name in columns})


async def get_owned(connection: AsyncConnection, model: type[T], obj_id: str, tenant_id: str, *, what: str,
                    param: str | None = None) -> T:
    """The row if it exists and belongs to the tenant; otherwise 404 (never 403)."""
    row = (await connection.execute(owned_by_id_statement(model), {"obj_id": obj_id, "tenant_id": tenant_id})).first()
    if row is None:
        raise not_found(what, obj_id, param)
    return _of(model, row)


async def get_job(connection: AsyncConnection, job_id: str, tenant_id: str) -> tuple[Job, int | None]:
    """The tenant's job and its queue position (None unless queued), in one query."""
    row = (await connection.execute(job_with_queue_position_statement(),
                                    {"job_id": job_id, "tenant_id": tenant_id})).first()
    if row is None:
        raise not_found("job", job_id, "job_id")
    position = row[-1]
    return _of(Job, row), None if position is None else int(position)


async def paginate(connection: AsyncConnection, stmt: Select[Any], model: Any, *, after: str | None, limit: int,
                   tenant_id: str) -> tuple[list[Any], bool]:
    """Newest first; `after` is the id of the last row of the previous page."""
    check_limit(limit)
    anchor = None
    if after is not None:
        anchor = (await connection.execute(anchor_statement(model, after, tenant_id))).first()
        if anchor is None:
            raise bad_cursor(after)
    rows = [_of(model, row) for row in await connection.execute(page_statement(stmt, model, anchor, limit))]
    return rows[:limit], len(rows) > limit


async def list_jobs(connection: AsyncConnection, tenant_id: str, *, after: str | None, limit: int,
                    status: str | None = None) -> tuple[list[Job], bool]:
    return await paginate(connection, jobs_statement(tenant_id, status), Job, after=after, limit=limit,
                          tenant_id=tenant_id)
