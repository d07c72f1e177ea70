"""SECRET_LIKE finds what it found before its rewrite, in linear time.

The regex before (kept here only) let its key and run branches start at every position of
a run of [A-Za-z0-9_-]; in a run with no match each of those attempts scanned to the run's
end and back, quadratic: a 1,000-character description shaped `("g" * 39 + "-") * 25` took
50 ms of the event loop. The rewrite starts those branches only where a run starts.
"""

from __future__ import annotations

import itertools
import random
import re
import re._parser as sre_parse  # the parsed form of a pattern, to check its structure
from collections.abc import Iterator

from keyservice.audit.service import REDACTED, without_secrets
from keyservice.security import tokens
from keyservice.security.tokens import SECRET_LIKE, holds_secret, is_secret_like

OLD_SECRET_LIKE = re.compile(
    r"[A-Za-z0-9_-]*(?:ksk_|ksr_)[A-Za-z0-9_-]*"
    r"|(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)*"
    r"|[A-Za-z0-9_-]*[A-Za-z0-9]{40}[A-Za-z0-9_-]*"
)
_RUN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
# Pieces that make every branch match, nearly match and stop: the markers, the characters
# that end or continue a run (the JWT branch's dots, the lookbehinds' _ and -), runs of
# letters and digits around 40 long, hexadecimal ones (digests), text outside ASCII.
PIECES = [
    "ksk_",
    "ksr_",
    "ksk",
    "ks",
    "eyJ",
    "ey",
    ".",
    "-",
    "_",
    " ",
    "=",
    '"',
    "/",
    "é",
    "a",
    "Z",
    "0",
    "f" * 39,
    "A" * 40,
    "g" * 39,
    "0123456789abcdef" * 3,
    "x" * 20,
]


def _old_holds_secret(text: str) -> bool:
    return tokens.may_hold_secret(text) and any(map(is_secret_like, OLD_SECRET_LIKE.finditer(text)))


def _old_without_secrets(text: str) -> str:
    return OLD_SECRET_LIKE.sub(
        lambda found: REDACTED if is_secret_like(found) else found.group(), text
    )


def _texts() -> Iterator[str]:
    # Every sequence of up to three pieces, then random longer ones, then random characters.
    for length in range(1, 4):
        for parts in itertools.product(PIECES, repeat=length):
            yield "".join(parts)
    rng = random.Random(20261207)
    for _ in range(40_000):
        yield "".join(rng.choice(PIECES) for _ in range(rng.randint(4, 30)))
    for _ in range(20_000):
        yield "".join(rng.choice(_RUN + ". =é") for _ in range(rng.randint(1, 200)))


def test_the_rewritten_regex_finds_the_same_matches_as_the_old_one():
    count = 0
    for text in _texts():
        old = [(found.span(), found.group()) for found in OLD_SECRET_LIKE.finditer(text)]
        new = [(found.span(), found.group()) for found in SECRET_LIKE.finditer(text)]
        assert new == old, text
        assert holds_secret(text) == _old_holds_secret(text), text
        assert without_secrets(text) == _old_without_secrets(text), text
        count += 1
    assert count > 70_000


def test_the_slow_shape_is_still_judged_as_before():
    for text in (
        ("g" * 39 + "-") * 25,  # 1,000 characters, no run of 40: passes
        ("g" * 39 + "-") * 25 + "g" * 40,  # a run of 40 at the end: refused
        ("g" * 39 + "_") * 25 + "ksk_",  # a key prefix at the end: refused
        ("g" * 39 + "-") * 25 + "eyJhbGciOiJFUzI1NiJ9.e30.sig",  # a JWT after a "-": refused
        ("g" * 39 + "-") * 25 + "0" * 64,  # a SHA-256 after a "-": one run, not a digest
        "x " + "0" * 64,  # a SHA-256 alone: passes
    ):
        assert holds_secret(text) == _old_holds_secret(text), text[-70:]
    assert not holds_secret(("g" * 39 + "-") * 25)
    assert holds_secret(("g" * 39 + "-") * 25 + "g" * 40)


def test_no_branch_can_scan_a_run_from_inside_it():
    """The bound, from the pattern's structure rather than a clock.

    Each branch starts with a one-character negative lookbehind; the branches whose next
    element is a greedy repeat refuse exactly the characters that repeat takes. So at a
    position inside a run of [A-Za-z0-9_-] those branches fail on their first element, and
    each run is scanned by them once, from its start (the key branch backtracks once over
    it, the run-of-40 branch tries at most 40 characters a position). The JWT branch's next
    element is the literal "e": an attempt fails after a character or two, or matches to the
    end of its [A-Za-z0-9_.-] run and nothing is retried inside what it matched.
    """
    [(branch_op, (_, branches))] = list(sre_parse.parse(SECRET_LIKE.pattern))
    assert branch_op is sre_parse.BRANCH
    assert len(branches) == 3
    for branch in branches:
        (first_op, (direction, guard)), (next_op, next_av) = list(branch)[:2]
        assert first_op is sre_parse.ASSERT_NOT and direction == -1  # a lookbehind
        [(guard_op, guard_set)] = list(guard)
        assert guard_op is sre_parse.IN
        if next_op is sre_parse.MAX_REPEAT:
            _, _, repeated = next_av
            [(repeat_op, repeat_set)] = list(repeated)
            assert repeat_op is sre_parse.IN and repeat_set == guard_set
        else:
            assert (next_op, next_av) == (sre_parse.LITERAL, ord("e"))
    # And the old pattern did not: its key and run branches start with the repeat.
    [(_, (_, old_branches))] = list(sre_parse.parse(OLD_SECRET_LIKE.pattern))
    assert [list(branch)[0][0] for branch in old_branches] == [
        sre_parse.MAX_REPEAT,
        sre_parse.ASSERT_NOT,
        sre_parse.MAX_REPEAT,
    ]
