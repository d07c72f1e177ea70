"""Brute-force protection at /token: failures counted per client id / username and per IP.

A sliding window of failure timestamps per subject. Client ids lock out after a handful of
failures a minute; an IP only after many more, so clients behind one NAT address are not
locked out by one bad neighbour. This in-process counter serves the embedded default and
single-process deployments.
"""

from __future__ import annotations

import math
import time
from collections import deque

from keyservice.exceptions import SlowDown

_MAX_SUBJECTS = 100_000


class Throttle:
    def __init__(self, *, client_limit: int, ip_limit: int, window_seconds: int) -> None:
        self.client_limit = client_limit
        self.ip_limit = ip_limit
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, subject: str, now: float) -> deque[float] | None:
        entries = self._failures.get(subject)
        if entries is None:
            return None
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if not entries:
            del self._failures[subject]
            return None
        return entries

    def _retry_after(self, entries: deque[float], limit: int, now: float) -> int:
        # The window frees up once enough of the oldest failures have aged out.
        oldest_that_must_go = entries[len(entries) - limit]
        return max(1, math.ceil(oldest_that_must_go + self.window - now))

    def check(self, *, client: str | None, ip: str | None) -> None:
        """Raise SlowDown if the client or the IP is over its failure limit."""
        now = time.monotonic()
        for subject, limit in ((f"c:{client}", self.client_limit), (f"i:{ip}", self.ip_limit)):
            if subject.endswith(":None"):
                continue
            entries = self._recent(subject, now)
            if entries is not None and len(entries) >= limit:
                raise SlowDown(self._retry_after(entries, limit, now))

    def failure(self, *, client: str | None, ip: str | None) -> None:
        now = time.monotonic()
        if len(self._failures) > _MAX_SUBJECTS:
            for subject in list(self._failures)[: _MAX_SUBJECTS // 10]:
                self._recent(subject, now)
        subjects = ([f"c:{client}"] if client else []) + ([f"i:{ip}"] if ip else [])
        for subject in subjects:
            self._failures.setdefault(subject, deque()).append(now)
