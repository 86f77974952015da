"""Where a webhook may go (common/webhooks/allow.py): only globally routable addresses by default, and what
TUNEQUEUE_WEBHOOK_ALLOW adds: host names (wherever they resolve), addresses and CIDRs; the metadata addresses stay
refused unless listed one by one; a bad entry stops the process at start."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from common.settings import Settings
from common.webhooks.allow import DestinationRefused, address_allowed, destination, parse_allow, parse_url


def _ok(addr: str, allow: str = "") -> bool:
    return address_allowed(ipaddress.ip_address(addr), parse_allow(allow))


def test_by_default_only_globally_routable_addresses_are_allowed() -> None:
    assert _ok("93.184.215.14") and _ok("2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    for refused in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "100.64.0.1", "169.254.169.254",
                    "169.254.1.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fd00:ec2::254",
                    "fc00::1", "::ffff:10.0.0.1", "::"):
        assert not _ok(refused), refused


def test_an_allowed_cidr_opens_its_addresses_but_not_the_metadata_address_inside_it() -> None:
    assert _ok("10.20.3.4", "10.20.0.0/16") and not _ok("10.21.0.1", "10.20.0.0/16")
    assert _ok("169.254.1.1", "169.254.0.0/16") and not _ok("169.254.169.254", "169.254.0.0/16")
    assert not _ok("fd00:ec2::254", "fd00::/8") and _ok("fd00:ec2::254", "fd00:ec2::254")
    assert _ok("169.254.169.254", "169.254.169.254/32")


def test_an_allowed_host_name_is_allowed_wherever_it_resolves_and_other_names_are_checked_by_address() -> None:
    def resolver(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address("10.9.9.9")]

    target = parse_url("https://Hooks.Internal./x")
    assert destination(target, parse_allow("hooks.internal"), resolver) == [ipaddress.ip_address("10.9.9.9")]
    with pytest.raises(DestinationRefused) as refused:
        destination(parse_url("https://other.internal/x"), parse_allow("hooks.internal"), resolver)
    assert refused.value.code == "destination_not_allowed" and "10.9.9.9" in str(refused.value)


def test_a_bad_allow_entry_stops_the_process_at_start_naming_it() -> None:
    with pytest.raises(ValidationError) as bad:
        Settings(webhook_allow="10.0.0.0/8, http://x/")
    assert "TUNEQUEUE_WEBHOOK_ALLOW" in str(bad.value) and "http://x/" in str(bad.value)
    assert parse_allow(" 10.0.0.0/8 , ci.internal ,").hosts == {"ci.internal"}


def test_the_request_goes_to_the_urls_host_port_and_path() -> None:
    t = parse_url("https://h.example:8443/a/b?c=1")
    assert (t.scheme, t.host, t.port, t.target, t.host_header) == ("https", "h.example", 8443, "/a/b?c=1",
                                                                   "h.example:8443")
    assert parse_url("http://[2001:db8::1]/").host_header == "[2001:db8::1]"
    assert parse_url("http://h.example").target == "/"
