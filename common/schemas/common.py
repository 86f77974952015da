from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class PublicModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def unix(ts: datetime | None) -> int | None:
    return int(ts.timestamp()) if ts is not None else None


def error_obj(error: dict[str, Any] | None) -> dict[str, Any] | None:
    if not error:
        return None
    return {"code": error.get("code"), "message": error.get("message"), "param": error.get("param")}
