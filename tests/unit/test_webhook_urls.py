"""The SSRF guard for webhook URLs: what it refuses, why it says so, and what it lets through.

Literals and `localhost` go through the real `getaddrinfo`, so the encoded forms of 127.0.0.1 are
judged as this machine's resolver reads them; DNS names are answered by fake resolvers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from backend.errors import InvalidInput
from backend.webhook_urls import MAX_URL_LENGTH, Allowance, Destination, check_url, resolve_host

NOTHING = Allowance.parse("")
PUBLIC_V4 = "93.184.216.34"


def answers(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A fake resolver: the addresses `table` gives a host; a host not in it does not resolve."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def refusal(
    url: str, *, allow: Allowance = NOTHING, resolve: Callable[[str, int], list[str]] | None = None
) -> str:
    """The detail of the InvalidInput that `check_url` raises for `url` (failing if it accepts it)."""
    with pytest.raises(InvalidInput) as caught:
        check_url(url, allow=allow, resolve=resolve)
    assert caught.value.code == "invalid_webhook_url"
    assert caught.value.status_code == 422
    detail = caught.value.detail
    assert isinstance(detail, str)
    assert detail.startswith("webhook_url refused: ")
    return detail


HOSTILE = [
    ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://localhost/", "loopback"),
    ("http://127.1/", "host '127.1' resolves to 127.0.0.1, a loopback address"),
    ("http://2130706433/", "resolves to 127.0.0.1, a loopback address"),
    ("http://0x7f000001/", "resolves to 127.0.0.1, a loopback address"),
    ("http://0177.0.0.1/", "resolves to 127.0.0.1, a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped IPv6"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped IPv6"),
    ("http://[::ffff:93.184.216.34]/", "IPv4-mapped IPv6"),
    ("http://[64:ff9b::7f00:1]/", "NAT64"),
    ("http://[2002:7f00:1::]/", "6to4"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ("http://[::]/", "unspecified"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.2.1/", "192.0.2.1 is not a public address"),
    ("ftp://example.com/", "only http and https URLs are allowed"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://x/", "only http and https"),
    ("javascript:alert(1)", "only http and https"),
    ("data:text/plain,hi", "only http and https"),
    ("//example.com/", "only http and https"),
    ("example.com/hook", "only http and https"),
    ("http://user:pw@93.184.216.34/", "credentials in the URL are not allowed"),
    ("http://user@93.184.216.34/", "credentials"),
    ("http://@93.184.216.34/", "credentials"),
    ("http://93.184.216.34:99999/", "the port must be a number from 1 to 65535"),
    ("http://93.184.216.34:0/", "port"),
    ("http://93.184.216.34:8o/", "port"),
    ("http:///path", "the URL has no host"),
    ("http://:80/", "no host"),
    ("http://[::1/", "not a valid URL"),
    ("http://93.184.216.34/a b", "whitespace and control characters are not allowed"),
    ("http://93.184.216.34/\n", "whitespace"),
    ("http://127.0.0.1\t/", "whitespace"),
    ("http://93.184.216.34/\x00", "control characters"),
    ("http://nonexistent.invalid/", "host 'nonexistent.invalid' does not resolve"),
    (f"http://{'a' * 64}.test/", "does not resolve"),
    ("http://" + "a" * MAX_URL_LENGTH + ".com/", f"longer than {MAX_URL_LENGTH} characters"),
]


@pytest.mark.parametrize(("url", "reason"), HOSTILE, ids=[url[:60] for url, _ in HOSTILE])
def test_a_hostile_url_is_refused_naming_the_reason(url: str, reason: str) -> None:
    assert reason in refusal(url)


def test_a_url_of_exactly_the_maximum_length_is_still_considered() -> None:
    url = f"http://{PUBLIC_V4}/"
    url += "a" * (MAX_URL_LENGTH - len(url))
    assert len(url) == MAX_URL_LENGTH
    assert check_url(url, allow=NOTHING).addresses == (PUBLIC_V4,)


def test_a_value_that_is_not_a_string_is_refused() -> None:
    assert "must be a string" in refusal(b"http://93.184.216.34/")  # type: ignore[arg-type]


def test_a_host_is_refused_when_any_one_of_its_addresses_is_not_public() -> None:
    resolve = answers({"mixed.example": [PUBLIC_V4, "10.0.0.5"]})
    detail = refusal("http://mixed.example/", resolve=resolve)
    assert detail == "webhook_url refused: host 'mixed.example' resolves to 10.0.0.5, a private address"


def test_a_dns_name_is_judged_by_the_addresses_it_resolves_to() -> None:
    resolve = answers({"inside.example": ["10.0.0.5"], "outside.example": [PUBLIC_V4]})
    assert "10.0.0.5, a private address" in refusal("https://inside.example/hook", resolve=resolve)
    destination = check_url("https://outside.example/hook", allow=NOTHING, resolve=resolve)
    assert destination.host == "outside.example"
    assert destination.addresses == (PUBLIC_V4,)


def test_the_resolver_is_asked_for_the_host_and_the_port_that_will_be_used() -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return [PUBLIC_V4]

    check_url("https://Hooks.Example.COM/", allow=NOTHING, resolve=resolve)
    check_url("http://hooks.example.com:8080/", allow=NOTHING, resolve=resolve)
    assert asked == [("hooks.example.com", 443), ("hooks.example.com", 8080)]


def test_a_resolver_answering_nothing_or_garbage_is_a_refusal() -> None:
    assert "does not resolve" in refusal("http://empty.example/", resolve=answers({"empty.example": []}))
    detail = refusal("http://junk.example/", resolve=answers({"junk.example": ["not-an-ip"]}))
    assert "resolves to 'not-an-ip', which is not an IP address" in detail


def test_a_public_ipv4_literal_is_accepted_with_its_port_target_and_address() -> None:
    url = f"http://{PUBLIC_V4}/x?y=1"
    assert check_url(url, allow=NOTHING) == Destination(
        url=url, scheme="http", host=PUBLIC_V4, port=80, target="/x?y=1", addresses=(PUBLIC_V4,)
    )


def test_https_defaults_to_port_443_and_an_empty_path_to_slash() -> None:
    destination = check_url(f"HTTPS://{PUBLIC_V4}", allow=NOTHING)
    assert (destination.scheme, destination.port, destination.target) == ("https", 443, "/")


def test_a_public_ipv6_literal_is_accepted_with_its_host_unbracketed() -> None:
    destination = check_url("http://[2606:2800:220:1::1]:8080/", allow=NOTHING)
    assert destination.host == "2606:2800:220:1::1"
    assert destination.port == 8080
    assert destination.addresses == ("2606:2800:220:1::1",)


def test_the_fragment_is_dropped_from_the_target_but_kept_in_the_url() -> None:
    url = f"http://{PUBLIC_V4}/hook?a=1&b=2#section"
    destination = check_url(url, allow=NOTHING)
    assert destination.target == "/hook?a=1&b=2"
    assert destination.url == url
    assert check_url(f"http://{PUBLIC_V4}?q=1#f", allow=NOTHING).target == "/?q=1"


def test_the_allowance_lists_networks_and_lower_case_host_names_and_skips_empty_items() -> None:
    allow = Allowance.parse(" 127.0.0.0/8, ::1, , Receiver.TEST,10.1.2.3 ,")
    assert allow.hosts == frozenset({"receiver.test"})
    assert [str(network) for network in allow.networks] == ["127.0.0.0/8", "::1/128", "10.1.2.3/32"]
    assert Allowance.parse("") == Allowance(hosts=frozenset(), networks=())


@pytest.mark.parametrize("item", ["http://receiver.test", "10.0.0.0/33", "host name", "-x"])
def test_an_allowance_item_that_is_neither_a_network_nor_a_host_name_is_an_error(item: str) -> None:
    with pytest.raises(ValueError, match="neither an IP network nor a host name"):
        Allowance.parse(f"127.0.0.1,{item}")


TEST_RECEIVERS = Allowance.parse("127.0.0.0/8, ::1, receiver.test")


def test_the_allowance_admits_loopback_receivers_for_tests() -> None:
    destination = check_url("http://127.0.0.1:8080/hook", allow=TEST_RECEIVERS)
    assert (destination.port, destination.target, destination.addresses) == (8080, "/hook", ("127.0.0.1",))
    assert check_url("http://[::1]/", allow=TEST_RECEIVERS).addresses == ("::1",)


def test_an_allowed_host_name_skips_the_address_checks_but_must_resolve() -> None:
    resolve = answers({"receiver.test": ["10.1.1.1"]})
    destination = check_url("http://RECEIVER.test/hook", allow=TEST_RECEIVERS, resolve=resolve)
    assert (destination.host, destination.addresses) == ("receiver.test", ("10.1.1.1",))
    assert "does not resolve" in refusal("http://receiver.test/", allow=TEST_RECEIVERS, resolve=answers({}))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "private"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped IPv6"),
        ("ftp://127.0.0.1/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://user@receiver.test/", "credentials"),
    ],
)
def test_the_allowance_admits_nothing_beyond_its_networks_and_hosts(url: str, reason: str) -> None:
    assert reason in refusal(url, allow=TEST_RECEIVERS)


def test_the_default_resolver_gives_distinct_addresses_without_ipv6_scope_ids() -> None:
    assert resolve_host("127.0.0.1", 80) == ["127.0.0.1"]
    interface = socket.if_nameindex()[0][1]
    assert resolve_host(f"fe80::1%{interface}", 80) == ["fe80::1"]
    assert resolve_host("0x7f000001", 80) == ["127.0.0.1"]
