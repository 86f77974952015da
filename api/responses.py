"""A model as the response body, serialised once.

A route that returns a model instance has FastAPI validate it a second time against its `response_model` and
then serialise it; for a page of twenty jobs that second pass costs more CPU than the database read. The hot
read routes build their model once (so it is valid) and return `model_response(model)`; `response_model=` on
the route still documents the shape in the OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response


def model_response(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")
