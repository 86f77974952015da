from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base


class Worker(Base):
    """A device a worker registered (common/scheduling/placement.py), kept across restarts: what it can run. `id`
    is `<host>:<gpu index>`, or `<host>:cpu` for the CPU workers of a host. `memory_bytes` is what a job may use:
    the GPU's memory, or a CPU worker's budget (TUNEQUEUE_CPU_MEMORY_BUDGET_MB). `devices` is how many devices the
    worker that registered it trains one job on at most: its visible GPUs, or TUNEQUEUE_WORKER_DEVICES on a CPU."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    queue: Mapped[str] = mapped_column(String(200), index=True)
    host: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(8))  # cuda | cpu
    device_name: Mapped[str] = mapped_column(String(256))
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    compute_capability: Mapped[str | None] = mapped_column(String(16), default=None)
    bf16: Mapped[bool] = mapped_column(Boolean)
    bitsandbytes: Mapped[bool] = mapped_column(Boolean)
    flash_attention: Mapped[bool] = mapped_column(Boolean)
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
