"""The upload validator: stream an uploaded dataset (JSON Lines or a JSON array, optionally gzip), detect its
format, report the first problems by line, and normalize SFT rows to chat messages for training."""

from common.datasets.convert import iter_chat_rows, iter_valid_rows, to_chat
from common.datasets.formats import CHAT_FORMATS, FORMATS, STAGES, detect_format
from common.datasets.report import RowError, ValidationReport
from common.datasets.validate import validate_file

__all__ = [
    "CHAT_FORMATS",
    "FORMATS",
    "STAGES",
    "RowError",
    "ValidationReport",
    "detect_format",
    "iter_chat_rows",
    "iter_valid_rows",
    "to_chat",
    "validate_file",
]
