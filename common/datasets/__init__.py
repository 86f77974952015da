"""The upload validator: stream an uploaded dataset (JSON Lines, a JSON array, CSV/TSV, Parquet or plain text,
optionally gzip), detect its format, report the first problems by line, and normalise rows into the shape each
training stage reads (`iter_stage_rows`)."""

from common.datasets.convert import (
    STAGE_FORMATS,
    check_stage,
    iter_chat_rows,
    iter_stage_records,
    iter_stage_rows,
    iter_valid_rows,
    to_chat,
    to_stage_row,
)
from common.datasets.formats import CHAT_FORMATS, FORMATS, STAGES, detect_format
from common.datasets.reader import CONTAINERS
from common.datasets.report import RowError, ValidationReport
from common.datasets.validate import validate_file

__all__ = [
    "CHAT_FORMATS",
    "CONTAINERS",
    "FORMATS",
    "STAGES",
    "STAGE_FORMATS",
    "RowError",
    "ValidationReport",
    "check_stage",
    "detect_format",
    "iter_chat_rows",
    "iter_stage_records",
    "iter_stage_rows",
    "iter_valid_rows",
    "to_chat",
    "to_stage_row",
    "validate_file",
]
