"""A small Python client for TuneQueue's native API (issue 15): files, jobs, their events (followed live over
Server-Sent Events, resumed with Last-Event-ID after a dropped connection), metrics, checkpoints, models, workers,
estimates and quotas. It speaks only the public HTTP API, with the caller's key, so every tenant rule holds.

    from tunequeue_client import Client

    client = Client.from_env()  # TUNEQUEUE_URL, TUNEQUEUE_API_KEY
    file = client.upload_file("train.jsonl")
    job = client.create_job({"base_model": "smollm2-135m-instruct", "training_file": file["id"]})
    for event in client.follow_events(job["id"]):
        print(event["message"])
"""

from tunequeue_client.client import Client
from tunequeue_client.errors import ApiError
from tunequeue_client.sse import Frame

__all__ = ["ApiError", "Client", "Frame"]
