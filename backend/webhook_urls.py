"""The SSRF guard for outgoing webhook URLs: a job's `webhook_url` may only point at the public internet.

`check_url` is called when a job is submitted and again just before each delivery, because a DNS
answer may change in between. It refuses, with `InvalidInput(code="invalid_webhook_url")` naming
the reason:

- anything but a `str` of at most `MAX_URL_LENGTH` characters free of whitespace and control
  characters (`urlsplit` would silently drop a tab or newline, and the sender might not);
- any scheme but `http` and `https` (no `file:`, `ftp:`, `gopher:`, `javascript:`, `data:` …);
- credentials (`user:pass@`, `user@`, any `@` before the host): they would be sent to the receiver,
  and `@` is where URL parsers disagree about which part is the host;
- a missing host, or a port that is not a number from 1 to 65535;
- a host that does not resolve, or resolves to any address that is not public: unspecified,
  loopback, cloud metadata, link-local, carrier-grade NAT, multicast, private, reserved, or anything
  else that is not globally routable. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64,
  6to4, Teredo) are refused outright, since the IPv4 address inside may be any of those.

Every host is resolved, literals included, with `getaddrinfo` — what the sender's connect uses — so
encoded forms such as `2130706433`, `0x7f000001`, `0177.0.0.1` or `127.1` are judged by the address
they really name. Every address in the answer must pass, not only the first. The sender then
connects to `Destination.addresses[0]` (sending `Destination.host` as the Host header and the TLS
server name), never to the name again, so neither a DNS answer that changes after the check
(DNS rebinding) nor a parser that reads the URL differently can move the request elsewhere.

`Allowance` (`LANES_WEBHOOK_ALLOW`) admits destinations that are not public, for receivers on a
private network or in tests: a listed host name skips the address checks (it must still resolve),
and an address inside a listed network is admitted whatever it is.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import SplitResult, urlsplit

from backend.errors import InvalidInput

MAX_URL_LENGTH = 2048
ERROR_CODE = "invalid_webhook_url"
SCHEMES = {"http": 80, "https": 443}

#: Addresses of the instance metadata services of AWS (IPv4 and IPv6) and Alibaba Cloud. They are
#: link-local or carrier-grade NAT too; they are named first because they hand out credentials.
CLOUD_METADATA = frozenset(
    {ip_address("169.254.169.254"), ip_address("fd00:ec2::254"), ip_address("100.100.100.200")}
)
CARRIER_GRADE_NAT = ip_network("100.64.0.0/10")
#: RFC 1918 and IPv6 unique-local: spelled out because `is_private` also covers documentation,
#: reserved and "this network" ranges, and differs between Python versions.
PRIVATE_NETWORKS = (
    ip_network("10.0.0.0/8"),
    ip_network("172.16.0.0/12"),
    ip_network("192.168.0.0/16"),
    ip_network("fc00::/7"),
)
#: NAT64 (RFC 6052 well-known prefix, RFC 8215 local-use): the last 32 bits are an IPv4 address.
NAT64_NETWORKS = (ip_network("64:ff9b::/96"), ip_network("64:ff9b:1::/48"))
SIX_TO_FOUR = ip_network("2002::/16")

#: A host name in `LANES_WEBHOOK_ALLOW`: letters, digits, `-`, `_` and dots.
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_.])?")

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class Allowance:
    """Destinations admitted although not public (LANES_WEBHOOK_ALLOW): host names and networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowance:
        """Read a comma-separated list of IP networks or addresses (a network of one) and host names.

        Empty items are skipped; an item that is neither a network nor a host name raises ValueError.
        """
        hosts: set[str] = set()
        networks: list[IPv4Network | IPv6Network] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            name = item.lower()
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(f"{item!r} is neither an IP network nor a host name")
            hosts.add(name)
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def admits(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class Destination:
    """A checked webhook URL, and the addresses to connect to (the first one) instead of the host."""

    url: str
    scheme: str
    host: str
    port: int
    target: str
    addresses: tuple[str, ...]


def resolve_host(host: str, port: int) -> list[str]:
    """The distinct addresses `getaddrinfo` gives for a TCP connection to `host`, in its order."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = (str(sockaddr[0]).split("%", 1)[0] for *_, sockaddr in answers)
    return list(dict.fromkeys(addresses))


def check_url(url: str, *, allow: Allowance, resolve: Resolver | None = None) -> Destination:
    """The Destination of a webhook URL that may be called, or InvalidInput naming why not.

    Raises `backend.errors.InvalidInput(detail, code="invalid_webhook_url")`. `resolve(host, port)`
    returns the host's addresses (default `resolve_host`); tests pass a fake.
    """
    parts = _split(url)
    scheme = parts.scheme
    if scheme not in SCHEMES:
        raise _refused("only http and https URLs are allowed")
    if "@" in parts.netloc:
        raise _refused("credentials in the URL are not allowed")
    host = parts.hostname
    if not host:
        raise _refused("the URL has no host")
    port = _port(parts)
    addresses = _resolve(host, port, resolve or resolve_host)
    if host not in allow.hosts:
        for text in addresses:
            _check_address(host, text, allow)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(url=url, scheme=scheme, host=host, port=port, target=target, addresses=addresses)


def _split(url: str) -> SplitResult:
    if not isinstance(url, str):
        raise _refused("the URL must be a string")
    if len(url) > MAX_URL_LENGTH:
        raise _refused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    # Checked before parsing: urlsplit silently removes tabs and newlines, and strips the ends.
    if any(char.isspace() or not char.isprintable() for char in url):
        raise _refused("whitespace and control characters are not allowed")
    try:
        return urlsplit(url)
    except ValueError:
        raise _refused("not a valid URL") from None


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port  # ValueError when not digits, or over 65535
    except ValueError:
        port = 0
    if port is None:
        return SCHEMES[parts.scheme]
    if port == 0:
        raise _refused("the port must be a number from 1 to 65535")
    return port


def _resolve(host: str, port: int, resolve: Resolver) -> tuple[str, ...]:
    try:
        addresses = tuple(resolve(host, port))
    except (OSError, UnicodeError, ValueError):  # socket.gaierror is an OSError
        addresses = ()
    if not addresses:
        raise _refused(f"host {host!r} does not resolve")
    return addresses


def _check_address(host: str, text: str, allow: Allowance) -> None:
    """Raise unless the address `host` resolved to is public or admitted by `allow`."""
    try:
        address = ip_address(text)
    except ValueError:
        raise _refused(f"host {host!r} resolves to {text!r}, which is not an IP address") from None
    if allow.admits(address):
        return
    reason = _not_public(address)
    if reason is None:
        return
    if host == text:
        raise _refused(f"{text} is {reason}")
    raise _refused(f"host {host!r} resolves to {text}, {reason}")


def _not_public(address: IPAddress) -> str | None:
    """Why `address` is not a public destination, or None when it is."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if any(address in network for network in NAT64_NETWORKS):
            return "a NAT64 address"
        if address in SIX_TO_FOUR:
            return "a 6to4 address"
        if address.teredo is not None:
            return "a Teredo address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address in CLOUD_METADATA:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address in CARRIER_GRADE_NAT:
        return "a carrier-grade NAT address"
    if address.is_multicast:
        return "a multicast address"
    if any(address in network for network in PRIVATE_NETWORKS):
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a public address"
    return None


def _refused(reason: str) -> InvalidInput:
    return InvalidInput(f"webhook_url refused: {reason}", code=ERROR_CODE)
