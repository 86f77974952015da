"""The outbox and its sender, on the real Postgres and a real HTTP receiver that verifies every signature with the
`standardwebhooks` package: deliveries are written with their job event (and rolled back with it), signed, retried
on the outbox's schedule (driven through `next_attempt_at`, never by sleeping), claimed once by concurrent senders,
checked for where they lead at delivery time, and shown and redelivered through the API."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from sqlalchemy import select, update

from common import state
from common.db import session_scope
from common.models import WebhookDelivery, WebhookEndpoint
from common.services import webhooks as service
from common.settings import Settings, get_settings
from common.webhooks import events, outbox
from common.webhooks.events import EVENT_TYPES
from common.webhooks.signing import new_secret as new_secret_of_no_endpoint
from tests.support.factories import make_job_row, make_tenant
from tests.support.http import auth
from tests.support.webhook_receiver import Receiver
from worker.webhook_delivery import deliver_due


def _endpoint(tenant_id: str, url: str, kinds: list[str] | None = None) -> WebhookEndpoint:
    """Registered straight through the service, past the API's destination check (the sender checks again)."""
    with session_scope() as session:
        return service.create(session, tenant_id, url=url, events=kinds or list(EVENT_TYPES), description="",
                              user="default")


def _queue(job_id: str) -> None:
    with session_scope() as session:
        job = state.lock_job(session, job_id)
        assert job is not None
        state.mark_queued(session, job)


def _deliveries(endpoint_id: str) -> list[WebhookDelivery]:
    with session_scope() as session:
        return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
                                    .order_by(WebhookDelivery.created_at)))


def _make_due(delivery_id: str) -> None:
    """Time passes: the delivery's next attempt is now."""
    with session_scope() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                        .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))


@pytest.fixture
def hooked(receiver: Receiver) -> tuple[str, WebhookEndpoint]:
    """A tenant with an endpoint at the receiver, whose secret the receiver verifies with."""
    tenant_id, _ = make_tenant()
    endpoint = _endpoint(tenant_id, receiver.url)
    receiver.secrets.append(endpoint.secret)
    return tenant_id, endpoint


def test_a_transition_writes_its_delivery_in_its_transaction_and_a_rollback_writes_none(hooked) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    rolled_back = make_job_row(tenant_id, "validating_files")
    with pytest.raises(RuntimeError), session_scope() as session:
        job = state.lock_job(session, rolled_back)
        assert job is not None
        state.mark_queued(session, job)
        assert session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.job_id == rolled_back))  # written…
        raise RuntimeError("the transaction fails after the transition")
    assert _deliveries(endpoint.id) == []  # …and gone with the event
    committed = make_job_row(tenant_id, "validating_files")
    _queue(committed)
    [delivery] = _deliveries(endpoint.id)
    assert (delivery.job_id, delivery.event_type, delivery.state) == (committed, events.QUEUED, "pending")
    assert delivery.next_attempt_at is not None and delivery.attempts == 0


def test_only_subscribed_events_of_the_endpoints_own_tenant_are_written(receiver: Receiver) -> None:
    tenant_id, _ = make_tenant()
    other_tenant, _ = make_tenant()
    only_failed = _endpoint(tenant_id, receiver.url, [events.FAILED])
    others = _endpoint(other_tenant, receiver.url)
    _queue(make_job_row(tenant_id, "validating_files"))
    assert _deliveries(only_failed.id) == [] and _deliveries(others.id) == []


def test_every_attempt_is_signed_the_standard_webhooks_way_and_openais_sdk_reads_the_openai_events(
        hooked, receiver: Receiver, loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    job_id = make_job_row(tenant_id, "validating_files")
    _queue(job_id)
    with session_scope() as session:
        attempt = state.claim(session, job_id, worker="w1", lease_seconds=60)
    assert attempt == 1
    with session_scope() as session:
        assert state.finish(session, job_id, attempt, "succeeded", fine_tuned_model="ft:x")
    deliver_due(loopback_allowed)
    assert [r.verified for r in receiver.received] == [True, True, True]
    bodies = [r.body for r in receiver.received]
    kinds = sorted(b.decode().split('"type":"', 1)[1].split('"', 1)[0] for b in bodies)
    assert kinds == sorted([events.QUEUED, events.RUNNING, events.SUCCEEDED])
    [succeeded] = [r for r in receiver.received if events.SUCCEEDED.encode() in r.body]
    unwrapped: Any = OpenAI(api_key="unused").webhooks.unwrap(succeeded.body, succeeded.headers,
                                                              secret=endpoint.secret)
    assert type(unwrapped).__name__ == "FineTuningJobSucceededWebhookEvent"
    assert unwrapped.data.id == job_id and unwrapped.id == succeeded.webhook_id
    assert all(d.state == "delivered" and d.attempts == 1 and d.last_status_code == 200
               for d in _deliveries(endpoint.id))


def test_a_receiver_failing_three_times_then_succeeding_gets_one_accepted_delivery_under_one_webhook_id(
        hooked, receiver: Receiver, loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    receiver.statuses = [500, 503, 500, 200]
    receiver.response_body = b"busy, try later"
    _queue(make_job_row(tenant_id, "validating_files"))
    [delivery] = _deliveries(endpoint.id)
    for n in (1, 2, 3):
        deliver_due(loopback_allowed)
        [row] = _deliveries(endpoint.id)
        assert (row.state, row.attempts, row.last_response) == ("pending", n, "busy, try later")
        assert row.last_status_code in (500, 503) and row.last_attempt_at and row.next_attempt_at
        assert row.next_attempt_at - row.last_attempt_at == outbox.FIRST_DELAY * 2 ** (n - 1)  # 15 s, 30 s, 1 min
        deliver_due(loopback_allowed)  # not due yet: nothing is sent
        assert len(receiver.received) == n
        _make_due(delivery.id)
    deliver_due(loopback_allowed)
    [row] = _deliveries(endpoint.id)
    assert (row.state, row.attempts, row.last_status_code, row.next_attempt_at) == ("delivered", 4, 200, None)
    assert [r.status for r in receiver.received] == [500, 503, 500, 200]
    assert {r.webhook_id for r in receiver.received} == {row.event_id}
    assert len({r.body for r in receiver.received}) == 1 and all(r.verified for r in receiver.received)
    deliver_due(loopback_allowed)  # a later pass (or a restarted sender) sends nothing more
    assert len(receiver.received) == 4


def test_the_retry_schedule_doubles_from_15_seconds_to_4_hours_and_ends_a_day_after_the_first_attempt() -> None:
    first = datetime(2026, 1, 1, tzinfo=UTC)
    at, times, attempts = first, [first], 1
    while (nxt := outbox.next_attempt(first, at, attempts)) is not None:
        at, attempts = nxt, attempts + 1
        times.append(at)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert gaps[:10] == [15 * 2 ** i for i in range(10)]
    assert max(gaps) == 4 * 3600 and times[-1] - first == timedelta(hours=24) and len(times) == 16


def test_a_delivery_still_failing_a_day_after_its_first_attempt_is_marked_failed(
        hooked, receiver: Receiver, loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    receiver.statuses = [500]
    _queue(make_job_row(tenant_id, "validating_files"))
    deliver_due(loopback_allowed)
    [row] = _deliveries(endpoint.id)
    with session_scope() as session:  # a day has passed since the first attempt
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(
            first_attempt_at=datetime.now(UTC) - timedelta(hours=24, seconds=1),
            next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))
    deliver_due(loopback_allowed)
    [row] = _deliveries(endpoint.id)
    assert (row.state, row.attempts, row.next_attempt_at, row.last_status_code) == ("failed", 2, None, 500)


def test_two_senders_at_once_send_each_delivery_exactly_once(hooked, receiver: Receiver,
                                                             loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    """Each sender passes until nothing is due: the outbox is shared with the session's earlier tests, whose due
    rows go first, so one pass of 100 may not reach these. The timeout is generous, so that a loaded machine's slow
    answer is not taken for a failure and moved to a later attempt."""
    tenant_id, endpoint = hooked
    for _ in range(12):
        _queue(make_job_row(tenant_id, "validating_files"))
    start = threading.Barrier(2)
    patient = loopback_allowed.model_copy(update={"webhook_timeout_seconds": 30.0})

    def sender() -> None:
        start.wait()
        while deliver_due(patient):
            pass

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    rows = _deliveries(endpoint.id)
    outcomes = [(r.state, r.attempts, r.last_status_code, r.last_error) for r in rows]
    ids = [r.webhook_id for r in receiver.received]
    assert sorted(ids) == sorted(r.event_id for r in rows) and len(set(ids)) == 12, outcomes
    assert all(r.state == "delivered" and r.attempts == 1 for r in rows), outcomes


def test_a_name_that_resolves_to_a_refused_address_is_not_sent_at_delivery(receiver: Receiver) -> None:
    """`localhost` passed the check when it was registered (say the API's allowlist named it then); the sender
    resolves it again at each attempt and, under the default allowlist, refuses 127.0.0.1."""
    tenant_id, _ = make_tenant()
    endpoint = _endpoint(tenant_id, f"http://localhost:{receiver.port}/hook")
    _queue(make_job_row(tenant_id, "validating_files"))
    deliver_due(get_settings().model_copy(update={"webhook_allow": ""}))
    [row] = _deliveries(endpoint.id)
    assert receiver.received == []
    assert row.state == "pending" and row.attempts == 1 and row.last_status_code is None
    assert row.last_error and "127.0.0.1" in row.last_error and "TUNEQUEUE_WEBHOOK_ALLOW" in row.last_error
    _make_due(row.id)
    deliver_due(get_settings().model_copy(update={"webhook_allow": "localhost"}))  # the operator allows the name
    assert len(receiver.received) == 1 and _deliveries(endpoint.id)[0].state == "delivered"


def test_a_redirect_is_not_followed(hooked, receiver: Receiver, loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    receiver.statuses = [302]
    receiver.extra_headers = {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}
    _queue(make_job_row(tenant_id, "validating_files"))
    deliver_due(loopback_allowed)
    [row] = _deliveries(endpoint.id)
    assert [r.path for r in receiver.received] == ["/hook"]
    assert row.state == "pending" and row.last_status_code == 302 and "not followed" in (row.last_error or "")


def test_only_the_first_kilobyte_of_an_answer_is_kept(hooked, receiver: Receiver,
                                                      loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    receiver.statuses = [500]
    receiver.response_body = b"x" * 200_000
    _queue(make_job_row(tenant_id, "validating_files"))
    deliver_due(loopback_allowed)
    [row] = _deliveries(endpoint.id)
    assert row.last_response == "x" * 1024


def test_a_receiver_that_does_not_answer_is_cut_off_at_the_timeout(hooked, receiver: Receiver,
                                                                   loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    receiver.hold_next()
    _queue(make_job_row(tenant_id, "validating_files"))
    deliver_due(loopback_allowed.model_copy(update={"webhook_timeout_seconds": 1.0}))
    receiver.release()
    [row] = _deliveries(endpoint.id)
    assert row.state == "pending" and row.last_status_code is None and "within 1 s" in (row.last_error or "")


def test_during_a_rotations_grace_period_both_secrets_verify(hooked, receiver: Receiver,
                                                            loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    with session_scope() as session:
        new_secret = service.rotate(session, tenant_id, endpoint.id, grace_seconds=3600).secret
    _queue(make_job_row(tenant_id, "validating_files"))
    deliver_due(loopback_allowed)
    [request] = receiver.received
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (endpoint.secret, new_secret):  # each alone verifies
        receiver.secrets = [secret]
        assert receiver.verify(request.body, request.headers) is True
    receiver.secrets = [new_secret_of_no_endpoint()]  # and a secret not in force does not
    assert receiver.verify(request.body, request.headers) is False


def test_a_deleted_endpoints_pending_deliveries_are_cancelled_and_never_sent(hooked, receiver: Receiver,
                                                                            loopback_allowed: Settings) -> None:  # type: ignore[no-untyped-def]
    tenant_id, endpoint = hooked
    _queue(make_job_row(tenant_id, "validating_files"))
    with session_scope() as session:
        service.delete(session, tenant_id, endpoint.id)
    deliver_due(loopback_allowed)
    assert receiver.received == [] and [d.state for d in _deliveries(endpoint.id)] == ["cancelled"]


def test_the_api_shows_attempts_and_answers_and_a_redelivery_resends_under_the_same_webhook_id(
        receiver: Receiver, loopback_allowed: Settings) -> None:
    from api.main import create_app

    tenant_id, key = make_tenant(role="admin")
    endpoint = _endpoint(tenant_id, receiver.url)
    receiver.secrets.append(endpoint.secret)
    receiver.statuses = [500, 200, 200]
    receiver.response_body = b'{"ok": false}'
    _queue(make_job_row(tenant_id, "validating_files"))
    deliver_due(loopback_allowed)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        page = client.get(f"/webhooks/{endpoint.id}/deliveries", headers=auth(key)).json()
        [shown] = page["data"]
        assert shown["state"] == "pending" and shown["attempts"] == 1 and shown["last_status_code"] == 500
        assert shown["last_response"] == '{"ok": false}' and shown["next_attempt_at"] > shown["last_attempt_at"]
        assert shown["payload"]["type"] == events.QUEUED and shown["payload"]["id"] == shown["event_id"]
        _make_due(shown["id"])
        deliver_due(loopback_allowed)
        delivered = client.get(f"/webhooks/{endpoint.id}/deliveries?state=delivered", headers=auth(key)).json()
        assert [d["id"] for d in delivered["data"]] == [shown["id"]]
        again = client.post(f"/webhooks/{endpoint.id}/deliveries/{shown['id']}/redeliver", headers=auth(key))
        assert again.status_code == 200 and again.json()["state"] == "pending", again.text
        deliver_due(loopback_allowed)
    assert [r.webhook_id for r in receiver.received] == [shown["event_id"]] * 3
    assert all(r.verified for r in receiver.received)
    assert _deliveries(endpoint.id)[0].attempts == 3


def test_a_preemption_and_a_checkpoint_become_their_own_events_with_their_data(hooked) -> None:  # type: ignore[no-untyped-def]
    import json

    from worker.checkpoints import record_checkpoint

    tenant_id, endpoint = hooked
    job_id = make_job_row(tenant_id, "validating_files")
    _queue(job_id)
    with session_scope() as session:
        attempt = state.claim(session, job_id, worker="w1", lease_seconds=60)
        assert attempt == 1
    with session_scope() as session:
        job = state.lock_job(session, job_id)
        assert job is not None
        checkpoint = record_checkpoint(session, job, attempt, 5, "checkpoints/x", {"train_loss": 1.5})
        assert checkpoint is not None
        checkpoint_id = checkpoint.id
    with session_scope() as session:
        assert state.preempt(session, job_id, attempt)
    bodies = [json.loads(d.payload) for d in _deliveries(endpoint.id)]
    expected = [(events.QUEUED, {"id": job_id}),
                (events.RUNNING, {"id": job_id, "attempt": 1}),
                (events.CHECKPOINT, {"id": job_id, "checkpoint_id": checkpoint_id, "step": 5}),
                (events.PREEMPTED, {"id": job_id}),
                (events.QUEUED, {"id": job_id, "reason": "preempted"})]
    assert sorted(json.dumps([b["type"], b["data"]]) for b in bodies) == sorted(json.dumps(e) for e in expected)
    assert all(b["object"] == "event" and b["id"].startswith("evt_") for b in bodies)
    assert len({b["id"] for b in bodies}) == 5


@pytest.fixture
def self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that no system trusts."""
    import subprocess

    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def test_https_checks_the_receivers_certificate_against_the_urls_host(
        self_signed: tuple[str, str], loopback_allowed: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = Receiver(tls=self_signed)
    try:
        tenant_id, _ = make_tenant()
        endpoint = _endpoint(tenant_id, receiver.url)
        receiver.secrets.append(endpoint.secret)
        _queue(make_job_row(tenant_id, "validating_files"))
        deliver_due(loopback_allowed)
        [row] = _deliveries(endpoint.id)
        assert receiver.received == [] and row.state == "pending" and "CERTIFICATE_VERIFY_FAILED" in (row.last_error
                                                                                                     or "")
        monkeypatch.setenv("SSL_CERT_FILE", self_signed[0])  # now this host trusts it
        _make_due(row.id)
        deliver_due(loopback_allowed)
        assert [r.verified for r in receiver.received] == [True] and _deliveries(endpoint.id)[0].state == "delivered"
    finally:
        receiver.close()
