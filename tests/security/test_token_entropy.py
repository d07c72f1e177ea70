"""Generated secrets carry at least 128 random bits and do not repeat.

The formats are base62 of `secrets.randbits(n)` (security/tokens.py): 256 bits for client
secrets and refresh tokens, 95 for client ids (public, not secrets). These tests check the
output rather than trust the code: per-position Shannon entropy summed over the string (an
estimate of the bits it carries; the base62 digits of a uniform number are independent but
for the leading one), every bit of the decoded number balanced, and no repeat in a million
client secrets (~8 s here). Refresh tokens and client ids are drawn 200,000 times each: the
same generator, and a repeat among 2e5 draws of 95 bits has probability ~1e-18, so more
draws would only cost time.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter

import pytest

from keyservice.security.tokens import (
    _ALPHABET,
    REFRESH_PREFIX,
    _base62,
    new_client_id,
    new_client_secret,
    new_refresh_token,
)

_VALUE = {char: index for index, char in enumerate(_ALPHABET)}


def estimated_bits(samples: list[str]) -> float:
    """Sum over positions of the empirical Shannon entropy of the character there."""
    total = 0.0
    n = len(samples)
    for column in zip(*samples, strict=True):
        counts = Counter(column)
        total -= sum(c / n * math.log2(c / n) for c in counts.values())
    return total


def decode(body: str) -> int:
    number = 0
    for char in body:
        number = number * 62 + _VALUE[char]
    return number


def assert_bits_balanced(numbers: list[int], bits: int) -> None:
    n = len(numbers)
    tolerance = 6 * 0.5 / math.sqrt(n)  # six standard deviations
    for bit in range(bits):
        ones = sum((number >> bit) & 1 for number in numbers)
        assert abs(ones / n - 0.5) < tolerance, (bit, ones / n)
    assert max(numbers).bit_length() <= bits


def test_a_million_client_secrets_never_repeat():
    draws = 1_000_000
    assert len({new_client_secret() for _ in range(draws)}) == draws


def test_refresh_tokens_and_client_ids_never_repeat():
    draws = 200_000
    assert len({new_refresh_token() for _ in range(draws)}) == draws
    assert len({new_client_id() for _ in range(draws)}) == draws


def test_client_secrets_carry_256_bits():
    samples = [new_client_secret() for _ in range(50_000)]
    assert estimated_bits(samples) >= 250  # of log2(62**43) = 256 at most
    assert_bits_balanced([decode(s) for s in samples[:20_000]], 256)


def test_refresh_tokens_carry_256_bits():
    bodies = [new_refresh_token().removeprefix(REFRESH_PREFIX)[:43] for _ in range(50_000)]
    assert estimated_bits(bodies) >= 250
    assert_bits_balanced([decode(b) for b in bodies[:20_000]], 256)


def test_client_ids_are_unguessable_though_public():
    bodies = [new_client_id()[3:] for _ in range(50_000)]
    assert estimated_bits(bodies) >= 90  # 95 random bits; ids are not secrets


def test_base62_digits_are_the_same_as_ever():
    # Keys already handed out carry checksums in these digits: the encoding must not move.
    assert _base62(2**256 - 1, 43) == "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1"
    assert _base62(0xDEADBEEF, 6) == "44pZgF"
    assert _base62(0, 6) == "000000"
    assert (_base62(61, 1), _base62(62, 2), _base62(62 * 62, 3)) == ("z", "10", "100")
    for width in (1, 2, 6, 16, 43):
        for number in (0, 1, 61, 62, 3843, 3844, 62**width - 1):
            if number < 62**width:
                encoded = _base62(number, width)
                assert len(encoded) == width and decode(encoded) == number
        with pytest.raises(ValueError):
            _base62(62**width, width)
    numbers = [secrets.randbits(256) for _ in range(5_000)]
    assert all(decode(_base62(number, 43)) == number for number in numbers)
