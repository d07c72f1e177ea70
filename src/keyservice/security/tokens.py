"""Formats of the strings handed to clients: API keys, client ids, refresh tokens.

    API key:        ksk_<16 base62: client id body>_<43 base62: secret><6 base62: CRC32>
    client id:      kc_<16 base62>
    client secret:  <43 base62>                      (256 random bits)
    refresh token:  ksr_<43 base62><6 base62: CRC32>

Only `[A-Za-z0-9_]` appear, so form and URL encoding never change them. The fixed prefix
and the checksum let secret scanners find leaked keys and let typos be refused before any
database work (the scheme GitHub describes for its tokens).
"""

from __future__ import annotations

import re
import secrets
import zlib

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "ksk_"
CLIENT_ID_PREFIX = "kc_"
REFRESH_PREFIX = "ksr_"
_CLIENT_BODY_LEN = 16
_SECRET_LEN = 43  # 62**43 > 2**256
_CRC_LEN = 6  # 62**6 > 2**32

_API_KEY_RE = re.compile(
    rf"^{KEY_PREFIX}([0-9A-Za-z]{{{_CLIENT_BODY_LEN}}})_([0-9A-Za-z]{{{_SECRET_LEN}}})"
    rf"([0-9A-Za-z]{{{_CRC_LEN}}})$"
)
_CLIENT_ID_RE = re.compile(rf"^{CLIENT_ID_PREFIX}[0-9A-Za-z]{{{_CLIENT_BODY_LEN}}}$")
_REFRESH_RE = re.compile(
    rf"^{REFRESH_PREFIX}([0-9A-Za-z]{{{_SECRET_LEN}}})([0-9A-Za-z]{{{_CRC_LEN}}})$"
)


# Every two-digit base62 string, by value: two digits a step halves the big-integer
# divisions (a refresh token's 256 bits in 4.2 instead of 8.2 us; one per exchange).
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]


def _base62(number: int, width: int) -> str:
    """`number` in `width` base62 digits, most significant first, zero-padded."""
    parts = []
    for _ in range(width // 2):
        number, rem = divmod(number, 62 * 62)
        parts.append(_PAIRS[rem])
    if width % 2:
        number, rem = divmod(number, 62)
        parts.append(_ALPHABET[rem])
    if number:
        raise ValueError("number does not fit the width")
    return "".join(reversed(parts))


def _random_base62(width: int, bits: int) -> str:
    return _base62(secrets.randbits(bits), width)


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CRC_LEN)


def new_client_id() -> str:
    return CLIENT_ID_PREFIX + _random_base62(_CLIENT_BODY_LEN, 95)


def new_client_secret() -> str:
    return _random_base62(_SECRET_LEN, 256)


def compose_api_key(client_id: str, secret: str) -> str:
    """Return the single key string that carries both client id and secret."""
    body = f"{KEY_PREFIX}{client_id.removeprefix(CLIENT_ID_PREFIX)}_{secret}"
    return body + _checksum(body)


def parse_api_key(value: str) -> tuple[str, str] | None:
    """Split a key string into (client_id, secret), or None if malformed or mistyped."""
    match = _API_KEY_RE.match(value)
    if match is None:
        return None
    body = value[:-_CRC_LEN]
    if not secrets.compare_digest(_checksum(body), match.group(3)):
        return None
    return CLIENT_ID_PREFIX + match.group(1), match.group(2)


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX)


def holds_api_key(value: str) -> bool:
    """Whether `value` holds an API key string (its prefix), anywhere: pasted whole, quoted,
    or cut short; no client id, secret or refresh token contains the prefix."""
    return KEY_PREFIX in value


# Text that holds a credential, should a name, a description or an event quote one (a key
# string pasted as a device name, say): an API key string or refresh token, whole or in
# part, a JWT, or a run of 40 or more letters and digits such as a bare client secret (43).
# Client ids (16), ids and signing key ids (32, public) pass. A JWT starts a word (after a
# space, `=`, a quote...): "surveyJobs" holds no token. A run of hexadecimal digits in one
# case only passes too: a git commit hash (40) or a SHA-256 (64) in a description, never
# one of our secrets (base62: 43 random characters all in one hex case, about 1 in 10^25).
# audit.service.without_secrets replaces such runs in events; the schemas refuse names and
# descriptions holding one.
#
# The key and run branches start only where a run of [A-Za-z0-9_-] starts (the lookbehind):
# without it, each position inside a run that holds no match scanned to the run's end and
# back, quadratic in the run (a 1,000-character description took 50 ms of the event loop).
# The matches are the same: such a branch matches inside a run only if it matches at the
# run's start (the rest of a run is part of the run), which finditer tries first, and any
# match it finds there runs to the run's end (tests/security/test_secret_like.py).
SECRET_LIKE = re.compile(
    r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]*(?:ksk_|ksr_)[A-Za-z0-9_-]*"
    r"|(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)*"
    r"|(?<![A-Za-z0-9_-])[A-Za-z0-9_-]*[A-Za-z0-9]{40}[A-Za-z0-9_-]*"
)
_DIGEST = re.compile(r"[0-9a-f]+|[0-9A-F]+")


def may_hold_secret(text: str) -> bool:
    """Whether `text` could match SECRET_LIKE; False rules it out without the regex."""
    return len(text) >= 40 or "ks" in text or "eyJ" in text


def is_secret_like(found: re.Match[str]) -> bool:
    """Whether a match of SECRET_LIKE is one: not a hexadecimal digest."""
    return _DIGEST.fullmatch(found.group()) is None


def holds_secret(text: str) -> bool:
    """Whether `text` holds something shaped like a credential (SECRET_LIKE)."""
    return may_hold_secret(text) and any(map(is_secret_like, SECRET_LIKE.finditer(text)))


def is_client_id(value: str) -> bool:
    return _CLIENT_ID_RE.match(value) is not None


def new_refresh_token() -> str:
    body = REFRESH_PREFIX + _random_base62(_SECRET_LEN, 256)
    return body + _checksum(body)


def is_refresh_token(value: str) -> bool:
    match = _REFRESH_RE.match(value)
    return match is not None and secrets.compare_digest(
        _checksum(value[:-_CRC_LEN]), match.group(2)
    )
