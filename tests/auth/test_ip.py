"""Client addresses: allow-lists (IPv4, IPv6, mapped) and trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from keyservice.config import Settings
from keyservice.security.ip import _parse_ip_cached, client_ip, ip_allowed, parse_cidrs, parse_ip
from tests.conftest import client_for
from tests.factories import create_key, exchange, set_key, user_token

PROXY = [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.7", [], "203.0.113.7"),
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # untrusted peer: XFF ignored
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # spoofed left part ignored
        ("10.0.0.2", ["198.51.100.1, 10.0.0.9"], "198.51.100.1"),  # chain of proxies
        ("10.0.0.2", ["garbage"], "10.0.0.2"),
        ("10.0.0.2", [], "10.0.0.2"),
        ("::ffff:203.0.113.7", [], "203.0.113.7"),
    ],
)
def test_client_ip(peer, xff, expected):
    assert str(client_ip(peer, xff, PROXY)) == expected


def test_parse_ip_answers_the_same_cached_or_not():
    # Short texts are answered from a cache; long ones (an X-Forwarded-For hop is the
    # caller's text) are parsed each time and never kept.
    for text in ("203.0.113.7", " 203.0.113.7 ", "::ffff:203.0.113.7", "2001:db8::1", "x"):
        first, again = parse_ip(text), parse_ip(text)
        assert first == again
        assert first == (None if text == "x" else ipaddress.ip_address(str(first)))
    assert str(parse_ip("::ffff:203.0.113.7")) == "203.0.113.7"
    assert str(parse_ip(" " * 100 + "198.51.100.4")) == "198.51.100.4"
    huge = "1" * 10_000
    assert parse_ip(huge) is None
    kept = _parse_ip_cached.cache_info().currsize
    parse_ip("9" * 65)
    assert _parse_ip_cached.cache_info().currsize == kept  # not cached
    assert _parse_ip_cached.cache_info().maxsize == 4096  # bounded


def test_allow_lists():
    nets = parse_cidrs(["192.0.2.0/24", "2001:db8::/32", "::ffff:198.51.100.0/120"])
    assert ip_allowed(parse_ip("192.0.2.55"), nets)
    assert ip_allowed(parse_ip("2001:db8::1"), nets)
    assert ip_allowed(parse_ip("198.51.100.20"), nets)
    assert ip_allowed(parse_ip("::ffff:192.0.2.1"), nets)
    assert not ip_allowed(parse_ip("203.0.113.1"), nets)
    assert not ip_allowed(None, nets)
    assert ip_allowed(parse_ip("203.0.113.1"), [])
    with pytest.raises(ValueError, match="not an IPv4 or IPv6"):
        parse_cidrs(["300.1.1.1/8"])


@pytest.mark.parametrize("settings_overrides", [{"trusted_proxies": ["10.0.0.0/8"]}])
async def test_allow_list_at_the_token_endpoint(app, client, context, settings_overrides):
    token = await user_token(context, client, "alice", ["api_keys:manage"])
    key = await create_key(
        client, token, name="office", allowed_ips=["198.51.100.0/24", "2001:db8::/32"]
    )
    async with (
        client_for(app, ip="198.51.100.9") as office,
        client_for(app, ip="203.0.113.1") as away,
    ):
        assert (await exchange(office, key["api_key"])).status_code == 200
        assert (await exchange(away, key["api_key"])).status_code == 401
        # A client cannot spoof X-Forwarded-For: its peer is not a trusted proxy.
        spoofed = await away.post(
            "/token",
            data={"grant_type": "client_credentials", "api_key": key["api_key"]},
            headers={"X-Forwarded-For": "198.51.100.9"},
        )
        assert spoofed.status_code == 401
    async with client_for(app, ip="10.1.2.3") as proxy:
        via_proxy = await proxy.post(
            "/token",
            data={"grant_type": "client_credentials", "api_key": key["api_key"]},
            headers={"X-Forwarded-For": "6.6.6.6, 2001:db8::5"},
        )
        assert via_proxy.status_code == 200
        blocked = await proxy.post(
            "/token",
            data={"grant_type": "client_credentials", "api_key": key["api_key"]},
            headers={"X-Forwarded-For": "198.51.100.9, 6.6.6.6"},
        )
        assert blocked.status_code == 401


async def test_invalid_cidr_is_422(client, context):
    token = await user_token(context, client, "bob", ["api_keys:manage"])
    response = await client.post(
        "/api-keys",
        json={"name": "x", "allowed_ips": ["10.0.0.0/33"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 422
    assert "10.0.0.0/33" in response.json()["error_description"]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (
            "10.0.0.1/8",
            "10.0.0.1/8 has host bits set: write 10.0.0.0/8 for the network or 10.0.0.1/32 "
            "for the one address",
        ),
        (
            "2001:db8::1/64",
            "2001:db8::1/64 has host bits set: write 2001:db8::/64 for the network or "
            "2001:db8::1/128 for the one address",
        ),
        (
            "::ffff:10.0.0.1/104",
            "::ffff:10.0.0.1/104 has host bits set: write 10.0.0.0/8 for the network or "
            "10.0.0.1/32 for the one address",
        ),
        ("fe80::1%eth0", "fe80::1%eth0 has a zone id (%eth0); addresses are matched without one"),
        ("fe80::%en0/64", "write fe80::/64"),
        # The zone is refused first, whatever the prefix: the lenient network parse drops
        # it once host bits are set, and the host-bits message suggested fe80::1%eth0/128.
        (
            "fe80::1%eth0/64",
            "fe80::1%eth0/64 has a zone id (%eth0); addresses are matched without one: "
            "write fe80::/64 for the network or fe80::1/128 for the one address",
        ),
        (
            "::ffff:10.0.0.1%eth0/104",
            "::ffff:10.0.0.1%eth0/104 has a zone id (%eth0); addresses are matched without "
            "one: write 10.0.0.0/8 for the network or 10.0.0.1/32 for the one address",
        ),
    ],
)
async def test_cidrs_that_do_not_say_what_they_mean_are_422(client, context, written, message):
    """Read leniently these became a wider network (10.0.0.0/8) or a zoned entry."""
    token = await user_token(context, client, "carl", ["api_keys:manage"])
    response = await client.post(
        "/api-keys",
        json={"name": "x", "allowed_ips": ["192.0.2.0/24", written]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error_description"].startswith("allowed_ips: ")
    assert message in response.json()["error_description"]


@pytest.mark.parametrize(
    "written",
    ["fe80::1%eth0", "fe80::1%eth0/128", "fe80::%eth0/64", "fe80::1%eth0/64", "10.0.0.1/8"],
)
async def test_what_a_refusal_suggests_writing_is_accepted(client, context, written):
    token = await user_token(context, client, "cleo", ["api_keys:manage"])
    headers = {"Authorization": f"Bearer {token}"}
    response = await client.post(
        "/api-keys", json={"name": "x", "allowed_ips": [written]}, headers=headers
    )
    assert response.status_code == 422, response.text
    suggested = response.json()["error_description"].partition(": write ")[2]
    for instead in suggested.replace(" for the one address", "").split(" for the network or "):
        assert "%" not in instead, response.text
        response = await client.post(
            "/api-keys", json={"name": instead, "allowed_ips": [instead]}, headers=headers
        )
        assert response.status_code == 201, (written, instead, response.text)


async def test_bare_addresses_and_networks_are_kept_as_written(client, context):
    token = await user_token(context, client, "dora", ["api_keys:manage"])
    key = await create_key(
        client,
        token,
        name="x",
        allowed_ips=["192.0.2.7", "2001:db8::7", "::ffff:198.51.100.0/120", "10.0.0.0/8"],
    )
    assert key["allowed_ips"] == [
        "192.0.2.7/32",
        "2001:db8::7/128",
        "198.51.100.0/24",
        "10.0.0.0/8",
    ]


async def test_stored_allow_lists_from_before_the_checks_still_work(client, context):
    """Rows written by the lenient parser load, exchange and rotate as before."""
    token = await user_token(context, client, "eve", ["api_keys:manage"])
    key = await create_key(client, token, name="old")
    stored = ["fe80::1%eth0/128", "127.0.0.0/8"]
    await set_key(context, key["id"], allowed_ips=stored)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get(f"/api-keys/{key['id']}", headers=headers)).json()["allowed_ips"] == (
        stored
    )
    assert (await exchange(client, key["api_key"])).status_code == 200
    rotated = await client.post(f"/api-keys/{key['id']}/rotate", json={}, headers=headers)
    assert rotated.status_code == 201, rotated.text
    assert rotated.json()["allowed_ips"] == stored
    assert (await exchange(client, rotated.json()["api_key"])).status_code == 200


@pytest.mark.parametrize(
    ("proxies", "message"),
    [
        ("10.0.0.0/8, 192.168.1.1/24", "192.168.1.1/24 has host bits set: write 192.168.1.0/24"),
        ("fe80::1%eth0", "fe80::1%eth0 has a zone id"),
        ("fe80::1%eth0/64", "fe80::1%eth0/64 has a zone id (%eth0)"),
        ("proxy.internal", "'proxy.internal' is not an IPv4 or IPv6 address or CIDR"),
    ],
)
def test_trusted_proxies_written_ambiguously_stop_start_up(monkeypatch, proxies, message):
    monkeypatch.setenv("KEYSERVICE_TRUSTED_PROXIES", proxies)
    with pytest.raises(ValidationError) as refused:
        Settings()
    [error] = refused.value.errors()
    assert error["loc"] == ("trusted_proxies",) and message in error["msg"]


def test_trusted_proxies_are_read_as_allow_lists_are(monkeypatch):
    monkeypatch.setenv("KEYSERVICE_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7, ::ffff:198.51.100.9")
    proxies = Settings().trusted_proxies
    assert [str(net) for net in proxies] == ["10.0.0.0/8", "192.0.2.7/32", "198.51.100.9/32"]
    # An IPv4-mapped proxy address matches the peer it is (peers are unmapped too).
    assert str(client_ip("::ffff:198.51.100.9", ["203.0.113.5"], proxies)) == "203.0.113.5"
