"""Where a webhook may go: a URL is checked when it is registered and the address it resolves to again at each
delivery (a name can be pointed somewhere else after the check: DNS rebinding), and the sender connects to the very
address it checked.

By default only globally routable addresses are allowed: loopback, private (RFC 1918, fc00::/7), shared (CGNAT
100.64/10), link-local (169.254/16, fe80::/10, so the cloud metadata address 169.254.169.254), multicast, reserved
and unspecified addresses are refused, and an IPv4-mapped IPv6 address is judged as its IPv4 address. The operator
allows more with TUNEQUEUE_WEBHOOK_ALLOW, a comma-separated list of:
- host names (exact, any case; `ci.internal`): that name is allowed wherever it resolves (the operator vouches
  for the name, so it is not re-checked by address);
- IP addresses and CIDRs (`10.20.0.0/16`, `127.0.0.1`, `fd12::/16`): those addresses are allowed.
The metadata addresses (169.254.169.254, fd00:ec2::254) stay refused unless listed as a single address: allowing
169.254.0.0/16 does not open them."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
SETTING = "TUNEQUEUE_WEBHOOK_ALLOW"


class DestinationRefused(ValueError):
    """A URL that cannot be a webhook destination; the message says why and what to do. `code`: `invalid_url`
    (the URL itself) or `destination_not_allowed` (where it leads)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AllowList:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()


def parse_allow(text: str) -> AllowList:
    """TUNEQUEUE_WEBHOOK_ALLOW's value; ValueError names an entry that is neither a host name nor an address."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        if not name or any(c in name for c in "/:@ []") or not name.isascii():
            raise ValueError(f"{SETTING}: {entry!r} is neither a host name nor an IP address or CIDR")
        hosts.add(name)
    return AllowList(frozenset(hosts), tuple(networks))


def _plain(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_allowed(addr: IPAddress, allow: AllowList) -> bool:
    addr = _plain(addr)
    if addr in METADATA_ADDRESSES:
        return any(net.num_addresses == 1 and addr in net for net in allow.networks)
    if any(addr in net for net in allow.networks):
        return True
    return addr.is_global and not addr.is_multicast


@dataclass(frozen=True)
class Target:
    """A checked URL, split for the sender: it connects to an address of `host` itself and sends `Host`."""

    scheme: str
    host: str  # lower case, no brackets around an IPv6 literal
    port: int
    target: str  # path and query, as sent on the request line
    host_header: str


def parse_url(url: str) -> Target:
    """The URL's own rules: http or https, a host, no user or password, no fragment, printable ASCII."""
    fix = "give the full URL of your receiver, e.g. https://hooks.example.com/tunequeue"
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefused(f"the url is {len(url)} characters long; at most {MAX_URL_LENGTH}", "invalid_url")
    if not url.isascii() or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise DestinationRefused("the url must be printable ASCII without spaces: percent-encode the path and "
                                 "write an international host name in its xn-- form", "invalid_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"the url is not a valid URL ({exc}): {fix}", "invalid_url") from None
    if parts.scheme not in ("http", "https"):
        raise DestinationRefused(f"the url must start with https:// or http://; got {parts.scheme or 'no'} scheme: "
                                 f"{fix}", "invalid_url")
    if not parts.hostname:
        raise DestinationRefused(f"the url has no host: {fix}", "invalid_url")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("the url must not carry a user or password: remove them; the webhook-signature "
                                 "header proves to your receiver that TuneQueue sent the request", "invalid_url")
    if parts.fragment:
        raise DestinationRefused("the url must not have a #fragment (it is never sent): remove it", "invalid_url")
    host = parts.hostname.rstrip(".")
    if not host:
        raise DestinationRefused(f"the url has no host: {fix}", "invalid_url")
    port = port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc_host = f"[{host}]" if ":" in host else host
    default_port = port == (443 if parts.scheme == "https" else 80)
    return Target(parts.scheme, host, port, target, netloc_host if default_port else f"{netloc_host}:{port}")


Resolver = Callable[[str, int], list[IPAddress]]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives `host` (TCP), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        seen[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return list(seen)


def destination(target: Target, allow: AllowList, resolver: Resolver = resolve) -> list[IPAddress]:
    """The addresses the sender may connect to for `target`, every one of them allowed; otherwise
    DestinationRefused saying which address is refused and how the operator allows it."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = resolver(target.host, target.port)
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            raise DestinationRefused(f"the host {target.host!r} does not resolve to an address: check the name "
                                     "(a webhook goes to a host this server can reach)", "invalid_url")
        if target.host.lower() in allow.hosts:
            return addresses
    refused = [a for a in addresses if not address_allowed(a, allow)]
    if refused:
        where = "" if literal is not None else f" ({target.host} resolves to it)"
        raise DestinationRefused(
            f"webhooks may not go to {refused[0]}{where}: loopback, private, link-local, metadata and other "
            "addresses that are not globally routable are refused. Use a public address, or ask the operator to "
            f"add the host or its network to {SETTING} (docs/webhooks.md)", "destination_not_allowed")
    return addresses
