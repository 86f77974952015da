from __future__ import annotations

from typing import Any, Literal

from common.models import File
from common.schemas.common import PublicModel, unix


class FilePublic(PublicModel):
    """The OpenAI file object, plus what validation found."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    user: str  # who uploaded it within the organization: its key's user
    status: str
    status_details: str | None = None
    sha256: str
    format: str | None
    stages: list[str]
    row_count: int
    errors: list[dict[str, Any]]

    @classmethod
    def of(cls, row: File) -> FilePublic:
        details = None
        if row.status == "error" and row.errors:
            details = "; ".join(e["message"] for e in row.errors[:3])
        return cls(
            id=row.id, bytes=row.bytes, created_at=unix(row.created_at) or 0, filename=row.filename,
            purpose=row.purpose, user=row.user_name, status=row.status, status_details=details, sha256=row.sha256,
            format=row.format,
            stages=list(row.stages or []), row_count=row.row_count, errors=list(row.errors or []),
        )


class PreviewSegment(PublicModel):
    """A run of consecutive tokens that all carry loss (`trained`) or all do not."""

    text: str
    trained: bool
    tokens: int


class PreviewSequence(PublicModel):
    """One token sequence of a row: "text" (sft, pt), "chosen"/"rejected" (dpo, orpo, rm), "completion" (kto)."""

    name: str
    tokens: int
    trained_tokens: int
    segments: list[PreviewSegment]


class PreviewRow(PublicModel):
    line: int
    row: dict[str, Any]
    sequences: list[PreviewSequence]
    error: str | None = None


class FilePreview(PublicModel):
    """`GET /files/{id}/preview`: the first rows as the trainer will see them."""

    object: Literal["file.preview"] = "file.preview"
    file_id: str
    format: str
    stage: str
    base_model: str
    template: str | None
    train_on_inputs: bool
    data: list[PreviewRow]


class FileDeleted(PublicModel):
    """OpenAI's answer to DELETE /v1/files/{file_id}."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
