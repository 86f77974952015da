"""`GET /workers`: every GPU the workers registered in Redis, its memory, and what it runs; and every device that
ever registered in Postgres, with what it can run (placement by fit).

The platform operator sees every job; everyone else (tenant admins included) sees every GPU and whether it is
busy, and the job only when it is their tenant's (capacity is shared knowledge in a team; another tenant's job
ids and tenant ids are not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import CurrentCaller
from common.db import session_scope
from common.errors import NotReady
from common.models import Worker
from common.schemas.common import ListPage, unix
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


def device_id(registration_id: str) -> str:
    """The id of a live registration's device in Postgres: `<host>:<gpu index>`, `<host>:cpu` for `cpu-<pid>`."""
    host, _, slot = registration_id.rpartition(":")
    return f"{host}:cpu" if slot.startswith("cpu-") else registration_id


def device_public(row: Worker) -> dict[str, Any]:
    return {"id": row.id, "pool": row.queue, "kind": row.kind, "name": row.device_name,
            "memory_bytes": row.memory_bytes, "compute_capability": row.compute_capability, "bf16": row.bf16,
            "bitsandbytes": row.bitsandbytes, "flash_attention": row.flash_attention,
            "devices": row.devices,  # how many devices its worker trains one job on (resources.devices)
            "first_seen_at": unix(row.first_seen_at), "last_seen_at": unix(row.last_seen_at)}


@router.get("", response_model=ListPage[WorkerPublic])
def list_workers(caller: CurrentCaller) -> ListPage[WorkerPublic]:
    """Live workers (Redis) with what their device can run (Postgres), then devices that registered before and
    are not live now (`online: false`): placement by fit still counts them (docs/scheduling.md)."""
    try:
        registrations = WorkerRegistry().registrations()
    except Exception as exc:
        raise NotReady(f"worker registrations live in Redis, which is not answering: {exc}",
                       code="redis_unavailable") from exc
    with session_scope() as session:
        devices = {row.id: device_public(row) for row in session.scalars(select(Worker).order_by(Worker.id))}
    data = [worker_public(r, tenant_id=caller.tenant_id, operator=caller.is_operator) for r in registrations]
    live = set()
    for worker in data:
        worker.device = devices.get(device_id(worker.id))
        live.add(device_id(worker.id))
    data += [WorkerPublic(id=d["id"], host=d["id"].rpartition(":")[0], worker=None, gpu=None, busy=False, job=None,
                          updated_at=d["last_seen_at"], expires_in=None, online=False, device=d)
             for key, d in devices.items() if key not in live]
    return ListPage(data=data, has_more=False, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)
