"""`python -m worker.serve`: the inference server on TUNEQUEUE_SERVE_HOST:TUNEQUEUE_SERVE_PORT."""

from __future__ import annotations

import logging
import os

import torch
import uvicorn

from common.serve_token import ServeTokenError
from common.settings import get_settings
from worker.serve.app import create_app


def default_threads() -> int:
    """On CPU, every core but one: the HTTP side needs one, and torch's spinning worker threads collapse (10×
    slower measured on 2 cores) when anything else runs on a core they expect to own."""
    if torch.cuda.is_available():
        return torch.get_num_threads()
    return max(1, (os.cpu_count() or 1) - 1)


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(settings.serve_threads or default_threads())
    try:
        app = create_app(settings)
    except ServeTokenError as exc:
        raise SystemExit(f"serve refuses to start: {exc}") from None
    uvicorn.run(app, host=settings.serve_host, port=settings.serve_port, log_level="info")


if __name__ == "__main__":
    main()
