"""`/webhooks` (api/routes/webhooks.py): a tenant admin registers endpoints with a secret shown once, lists, reads,
rotates and deletes them; members are refused; another tenant's endpoint is a 404; every bad input is a 400 in
OpenAI's error shape naming the field and the fix. Deliveries are in tests/webhooks/test_delivery.py."""

from __future__ import annotations

from typing import Any

import pytest

from common.services.webhooks import MAX_ENDPOINTS_PER_TENANT
from common.webhooks.events import EVENT_TYPES
from tests.support.factories import make_tenant
from tests.support.http import assert_error, auth

PUBLIC_URL = "https://93.184.215.14/hooks/tunequeue"  # a globally routable literal: no DNS needed


@pytest.fixture
def admin() -> tuple[str, str]:
    return make_tenant(role="admin")


def _create(client: Any, key: str, **body: Any) -> dict[str, Any]:
    resp = client.post("/webhooks", json={"url": PUBLIC_URL, **body}, headers=auth(key))
    assert resp.status_code == 200, resp.text
    made: dict[str, Any] = resp.json()
    return made


def test_an_admin_registers_an_endpoint_whose_secret_is_shown_once(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _create(client, admin[1], events=["fine_tuning.job.failed", "fine_tuning.job.succeeded"],
                   description="ci")
    assert made["object"] == "webhook_endpoint" and made["url"] == PUBLIC_URL and made["description"] == "ci"
    assert made["events"] == ["fine_tuning.job.succeeded", "fine_tuning.job.failed"]
    assert made["secret"].startswith("whsec_") and len(made["secret"]) > 40
    got = client.get(f"/webhooks/{made['id']}", headers=auth(admin[1]))
    listed = client.get("/webhooks", headers=auth(admin[1]))
    assert got.status_code == 200 and got.json()["id"] == made["id"] and "secret" not in got.json()
    assert [w["id"] for w in listed.json()["data"]] == [made["id"]]
    assert made["secret"] not in got.text + listed.text


def test_events_left_out_subscribe_to_every_event(client, admin) -> None:  # type: ignore[no-untyped-def]
    assert _create(client, admin[1])["events"] == list(EVENT_TYPES)


def test_rotating_shows_a_new_secret_once_and_a_grace_period_keeps_the_old_one_signing(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _create(client, admin[1])
    rotated = client.post(f"/webhooks/{made['id']}/rotate_secret", headers=auth(admin[1]))
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != made["secret"] and rotated.json()["previous_secret_expires_at"] is None
    graced = client.post(f"/webhooks/{made['id']}/rotate_secret", json={"grace_seconds": 3600}, headers=auth(admin[1]))
    assert graced.json()["previous_secret_expires_at"] is not None
    assert_error(client.post(f"/webhooks/{made['id']}/rotate_secret", json={"grace_seconds": -1},
                             headers=auth(admin[1])), 422, "invalid_value", "grace_seconds")


def test_a_deleted_endpoint_is_not_found_and_not_listed(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _create(client, admin[1])
    assert client.delete(f"/webhooks/{made['id']}", headers=auth(admin[1])).status_code == 200
    assert_error(client.get(f"/webhooks/{made['id']}", headers=auth(admin[1])), 404, "webhook_not_found", "webhook_id")
    assert made["id"] not in client.get("/webhooks", headers=auth(admin[1])).text


def test_a_member_key_may_not_manage_webhooks(client, tenant) -> None:  # type: ignore[no-untyped-def]
    for resp in (client.get("/webhooks", headers=auth(tenant[1])),
                 client.post("/webhooks", json={"url": PUBLIC_URL}, headers=auth(tenant[1])),
                 client.get("/webhooks/wh-x/deliveries", headers=auth(tenant[1]))):
        assert_error(resp, 403, "permission_denied")
    assert_error(client.get("/webhooks"), 401)


def test_another_tenants_endpoint_is_not_found_for_every_route(client, admin) -> None:  # type: ignore[no-untyped-def]
    _, other_admin = make_tenant(role="admin")
    theirs = _create(client, other_admin)
    mine = auth(admin[1])
    assert theirs["id"] not in client.get("/webhooks", headers=mine).text
    for resp in (client.get(f"/webhooks/{theirs['id']}", headers=mine),
                 client.delete(f"/webhooks/{theirs['id']}", headers=mine),
                 client.post(f"/webhooks/{theirs['id']}/rotate_secret", headers=mine),
                 client.get(f"/webhooks/{theirs['id']}/deliveries", headers=mine),
                 client.post(f"/webhooks/{theirs['id']}/deliveries/whdel-x/redeliver", headers=mine)):
        assert_error(resp, 404, "webhook_not_found", "webhook_id")
    assert client.get(f"/webhooks/{theirs['id']}", headers=auth(other_admin)).status_code == 200  # still there


@pytest.mark.parametrize(("url", "code", "says"), [
    ("ftp://93.184.215.14/x", "invalid_url", "https://"),
    ("93.184.215.14/hook", "invalid_url", "https://"),
    ("https:///nohost", "invalid_url", "no host"),
    ("https://user:pw@93.184.215.14/x", "invalid_url", "user or password"),
    ("https://93.184.215.14/x#frag", "invalid_url", "fragment"),
    ("https://93.184.215.14/a b", "invalid_url", "printable"),
    ("https://93.184.215.14:99999/x", "invalid_url", "not a valid URL"),
    ("https://93.184.215.14/" + "a" * 2100, "invalid_url", "at most 2048"),
    ("https://nothing-here.invalid/hook", "invalid_url", "does not resolve"),
])
def test_a_malformed_url_is_400_on_url_with_the_fix(client, admin, url, code, says) -> None:  # type: ignore[no-untyped-def]
    err = assert_error(client.post("/webhooks", json={"url": url}, headers=auth(admin[1])), 400, code, "url")
    assert says in err["message"]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook",  # loopback
    "http://localhost:8000/hook",  # a name for loopback
    "http://[::1]/hook",
    "http://10.1.2.3/hook",  # private
    "http://192.168.1.10/hook",
    "http://100.64.0.1/hook",  # shared (CGNAT)
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[fd00:ec2::254]/",  # AWS's IPv6 metadata
    "http://[fe80::1]/",  # link-local
    "http://[::ffff:127.0.0.1]/",  # loopback in IPv4-mapped IPv6
    "http://0.0.0.0/",
    "http://224.0.0.1/",  # multicast
])
def test_a_destination_that_is_not_public_is_refused_by_default(client, admin, url) -> None:  # type: ignore[no-untyped-def]
    err = assert_error(client.post("/webhooks", json={"url": url}, headers=auth(admin[1])), 400,
                       "destination_not_allowed", "url")
    assert "TUNEQUEUE_WEBHOOK_ALLOW" in err["message"]


def test_an_unknown_event_name_is_400_on_that_element_listing_the_events(client, admin) -> None:  # type: ignore[no-untyped-def]
    err = assert_error(client.post("/webhooks", json={"url": PUBLIC_URL, "events": [
        "fine_tuning.job.succeeded", "fine_tuning.job.exploded"]}, headers=auth(admin[1])), 400, "unknown_event",
        "events[1]")
    assert "fine_tuning.job.checkpoint.created" in err["message"]
    assert_error(client.post("/webhooks", json={"url": PUBLIC_URL, "events": []}, headers=auth(admin[1])), 400,
                 "invalid_events", "events")


def test_unknown_fields_and_a_missing_url_are_schema_errors(client, admin) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.post("/webhooks", json={"url": PUBLIC_URL, "secret": "mine"}, headers=auth(admin[1])), 422,
                 "unknown_field", "secret")
    assert_error(client.post("/webhooks", json={}, headers=auth(admin[1])), 422, "missing_field", "url")


def test_a_tenant_may_have_at_most_the_cap_of_endpoints(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = [_create(client, admin[1]) for _ in range(MAX_ENDPOINTS_PER_TENANT)]
    err = assert_error(client.post("/webhooks", json={"url": PUBLIC_URL}, headers=auth(admin[1])), 400,
                       "too_many_webhooks")
    assert "delete one" in err["message"]
    client.delete(f"/webhooks/{made[0]['id']}", headers=auth(admin[1]))
    _create(client, admin[1])  # a deleted one frees its place


def test_deliveries_of_an_unknown_id_and_a_bad_state_filter_are_refused(client, admin) -> None:  # type: ignore[no-untyped-def]
    made = _create(client, admin[1])
    assert_error(client.post(f"/webhooks/{made['id']}/deliveries/whdel-nope/redeliver", headers=auth(admin[1])),
                 404, "delivery_not_found", "delivery_id")
    assert_error(client.get(f"/webhooks/{made['id']}/deliveries?state=lost", headers=auth(admin[1])), 400,
                 param="state")
    listed = client.get(f"/webhooks/{made['id']}/deliveries", headers=auth(admin[1]))
    assert listed.status_code == 200 and listed.json()["data"] == []
