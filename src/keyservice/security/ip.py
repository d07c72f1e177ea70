"""Client addresses and allow-lists (RFC 7239's concerns, applied to X-Forwarded-For)."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from keyservice.exceptions import echoable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# What people write in an allow-list, right or wrong (host names included): quoted back in
# an error only if it is this and short of a credential (exceptions.echoable).
_ADDRESS_TEXT = re.compile(r"[0-9A-Za-z:./%_-]+")


def parse_ip(value: str) -> IPAddress | None:
    """Parse an address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes the IPv4 address."""
    # Every request parses its peer's address, and the same few peers (a proxy, a client's
    # pool) come back all day: 3.6 us parsed, 0.1 cached. Addresses are immutable values.
    # Only address-sized strings are kept (X-Forwarded-For hops are the caller's text).
    if len(value) <= _CACHED_TEXT:
        return _parse_ip_cached(value)
    return _parse_ip(value)


_CACHED_TEXT = 64  # an IPv6 address is at most 45 characters; the rest leaves room for a zone


def _parse_ip(value: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_parse_ip_cached = functools.lru_cache(maxsize=4096)(_parse_ip)


def parse_cidrs(values: Iterable[str], *, strict: bool = False) -> list[IPNetwork]:
    """Parse CIDRs (a bare address is a /32 or /128); raise ValueError naming a bad one.

    `strict` is for what people write (request bodies, configuration): it also refuses a
    zone id and a CIDR with host bits set, which would otherwise be widened to its network
    without a word (10.0.0.1/8 to all of 10.0.0.0/8). Stored allow-lists are read without
    it: they hold the normalized networks written before these checks existed.
    """
    networks: list[IPNetwork] = []
    for value in values:
        text = value.strip()
        # The zone is read from the address as written: the network parse drops it once
        # host bits are set (fe80::1%eth0/64 is fe80::/64), so its scope_id cannot be asked.
        zone = _zone_id(text) if strict else None
        if zone is not None and not echoable(text, _ADDRESS_TEXT):
            raise ValueError("An address has a zone id (%...); addresses are matched without one")
        unzoned = text if zone is None else text.replace(f"%{zone}", "", 1)
        try:
            network = ipaddress.ip_network(unzoned, strict=False)
        except ValueError:
            shown = f"'{value}'" if echoable(text, _ADDRESS_TEXT) else "A value (not quoted)"
            raise ValueError(f"{shown} is not an IPv4 or IPv6 address or CIDR") from None
        if isinstance(network, ipaddress.IPv6Network):
            mapped = network.network_address.ipv4_mapped
            if mapped is not None and network.prefixlen >= 96:
                network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        instead = unzoned
        if strict and "/" in unzoned:
            address = _parse_ip(unzoned.partition("/")[0])
            if address is not None and address != network.network_address:
                instead = (
                    f"{network} for the network or "
                    f"{address}/{address.max_prefixlen} for the one address"
                )
                if zone is None:
                    raise ValueError(f"{text} has host bits set: write {instead}")
        if zone is not None:
            # A zone names one of the writer's own interfaces; callers are matched by
            # address alone, so it would only make the entry look narrower than it is.
            raise ValueError(
                f"{text} has a zone id (%{zone}); addresses are matched without one: "
                f"write {instead}"
            )
        networks.append(network)
    return networks


def _zone_id(text: str) -> str | None:
    """The zone id of the IPv6 address written before any /prefix, if it has one."""
    try:  # not _parse_ip: it unmaps ::ffff:a.b.c.d%zone to an IPv4 address, zone dropped
        address = ipaddress.ip_address(text.partition("/")[0])
    except ValueError:
        return None
    return address.scope_id if isinstance(address, ipaddress.IPv6Address) else None


def in_networks(address: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """Return the caller's address: the TCP peer unless it is a trusted proxy.

    Behind trusted proxies, walk X-Forwarded-For from the right and take the first address
    that is not itself a trusted proxy; everything left of it could have been written by the
    client and is ignored.
    """
    address = parse_ip(peer) if peer else None
    if address is None or not trusted or not in_networks(address, trusted):
        return address
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        candidate = parse_ip(hop)
        if candidate is None:
            # A garbled hop cannot be attributed; stop at the last address we trust.
            return address
        if not in_networks(candidate, trusted):
            return candidate
        address = candidate
    return address


def ip_allowed(address: IPAddress | None, allowed: Sequence[IPNetwork]) -> bool:
    """Empty allow-list means any address."""
    return not allowed or in_networks(address, allowed)
