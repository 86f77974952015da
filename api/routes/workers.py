"""`GET /workers`: every GPU the workers registered in Redis, its memory, and what it runs.

The platform operator sees every job; everyone else (tenant admins included) sees every GPU and whether it is
busy, and the job only when it is their tenant's (capacity is shared knowledge in a team; another tenant's job
ids and tenant ids are not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentCaller
from common.errors import NotReady
from common.schemas.common import ListPage
from common.schemas.jobs import WorkerPublic
from common.worker_registry import WORKER_PREFIX, WorkerRegistry

router = APIRouter(prefix="/workers", tags=["workers"])


def worker_public(reg: dict[str, Any], *, tenant_id: str, operator: bool) -> WorkerPublic:
    job_id = reg.get("job_id")
    job = None
    if job_id and (operator or reg.get("tenant_id") == tenant_id):
        job = {"id": job_id, "attempt": reg.get("attempt"), "started_at": reg.get("job_started_at"),
               "process_rss_mb": reg.get("process_rss_mb")}
        if operator:
            job["organization_id"] = reg.get("tenant_id")
    return WorkerPublic(
        id=reg["key"].removeprefix(WORKER_PREFIX), host=reg.get("host"), worker=reg.get("worker"),
        gpu=reg.get("gpu"), host_memory_available_mb=reg.get("host_memory_available_mb"), busy=bool(job_id),
        job=job, updated_at=reg.get("updated_at"), expires_in=reg.get("expires_in"),
    )


@router.get("", response_model=ListPage[WorkerPublic])
def list_workers(caller: CurrentCaller) -> ListPage[WorkerPublic]:
    try:
        registrations = WorkerRegistry().registrations()
    except Exception as exc:
        raise NotReady(f"worker registrations live in Redis, which is not answering: {exc}",
                       code="redis_unavailable") from exc
    data = [worker_public(r, tenant_id=caller.tenant_id, operator=caller.is_operator) for r in registrations]
    return ListPage(data=data, has_more=False, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)
