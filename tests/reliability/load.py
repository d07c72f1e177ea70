"""A mixed exchange / refresh load that keeps the books needed to find lost or doubled
refreshes: every refresh token a 200 handed out, and what happened when it was presented."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Books:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    successes: int = 0
    unavailable: int = 0
    other_errors: list[str] = field(default_factory=list)
    # refresh token -> number of 200s it was exchanged for (more than 1 = doubled)
    refresh_wins: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    # A refresh answered 503/connection error, then refused on retry: committed, unacknowledged.
    unacknowledged: int = 0
    successes_at: list[float] = field(default_factory=list)  # completion times
    unavailable_at: list[float] = field(default_factory=list)  # start times
    slowest_503: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.sent,
            "successes": self.successes,
            "503s": self.unavailable,
            "other_errors": len(self.other_errors),
            "lost_refreshes": len(self.lost),
            "doubled_refreshes": sum(1 for n in self.refresh_wins.values() if n > 1),
            "committed_but_unacknowledged": self.unacknowledged,
            "slowest_503_s": round(self.slowest_503, 2),
            "statuses": dict(self.statuses),
        }


class Load:
    def __init__(self, http: httpx.AsyncClient, api_keys: list[str], books: Books) -> None:
        self.http = http
        self.api_keys = api_keys
        self.books = books
        # Tokens a 200 handed out and that nobody has presented yet.
        self.fresh: set[str] = set()
        # Tokens whose last presentation got no answer at all (connection cut).
        self.interrupted: set[str] = set()

    async def _post(self, data: dict[str, str]) -> httpx.Response | None:
        self.books.sent += 1
        started = time.monotonic()
        try:
            response = await self.http.post("/token", data=data)
        except httpx.HTTPError as exc:
            self.books.statuses[type(exc).__name__] += 1
            self.books.other_errors.append(type(exc).__name__)
            return None
        self.books.statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            self.books.successes += 1
            self.books.successes_at.append(time.monotonic())
        elif response.status_code == 503:
            self.books.unavailable += 1
            self.books.unavailable_at.append(started)
            self.books.slowest_503 = max(self.books.slowest_503, time.monotonic() - started)
            assert response.json()["error"] == "temporarily_unavailable"
        return response

    async def exchange(self) -> str | None:
        response = await self._post(
            {"grant_type": "client_credentials", "api_key": random.choice(self.api_keys)}
        )
        if response is None or response.status_code != 200:
            if response is not None and response.status_code != 503:
                self.books.other_errors.append(f"exchange {response.status_code}")
            return None
        token: str = response.json()["refresh_token"]
        self.fresh.add(token)
        return token

    async def refresh(self, token: str, *, retry: bool = False) -> tuple[str, str | None]:
        """Present a token once; return (outcome, new token)."""
        first = token in self.fresh
        self.fresh.discard(token)
        self.interrupted.discard(token)
        response = await self._post({"grant_type": "refresh_token", "refresh_token": token})
        if response is None:
            self.interrupted.add(token)
            return "unavailable", None
        if response.status_code == 503:
            return "unavailable", None
        if response.status_code == 200:
            self.books.refresh_wins[token] += 1
            new: str = response.json()["refresh_token"]
            self.fresh.add(new)
            return "ok", new
        if response.status_code == 400 and response.json()["error"] == "invalid_grant":
            if first:
                self.books.lost.append(token[:12])
            elif retry:
                self.books.unacknowledged += 1
            return "refused", None
        self.books.other_errors.append(f"refresh {response.status_code}")
        return "error", None

    async def chain(self, deadline: float) -> None:
        """One client: exchange, refresh, sometimes race itself, until the deadline."""
        token: str | None = None
        retrying = False
        while time.monotonic() < deadline:
            if token is None or random.random() < 0.1:
                token, retrying = await self.exchange(), False
                if token is None:
                    await asyncio.sleep(0.05)
                continue
            if random.random() < 0.1:
                # Two presentations of one token at once: exactly one may win.
                self.fresh.discard(token)
                results = await asyncio.gather(self.refresh(token), self.refresh(token))
                for _outcome, new in results:
                    self.fresh.discard(new or "")  # the loser revoked the family, by design
                self.interrupted.discard(token)  # used by the other presentation, maybe
                if all(outcome == "unavailable" for outcome, _ in results):
                    retrying = True
                    await asyncio.sleep(0.05)
                    continue
                token, retrying = None, False
                continue
            outcome, new = await self.refresh(token, retry=retrying)
            if outcome == "ok":
                token, retrying = new, False
            elif outcome == "unavailable":
                retrying = True  # keep the token and present it again
                await asyncio.sleep(0.05)
            else:
                token, retrying = None, False

    async def verify_interrupted(self) -> int:
        """Present again each token whose refresh got no answer; return how many had been
        used all the same (committed, answer lost). The others were never processed."""
        used = 0
        for token in list(self.interrupted):
            self.interrupted.discard(token)
            response = await self.http.post(
                "/token", data={"grant_type": "refresh_token", "refresh_token": token}
            )
            if response.status_code != 200:
                used += 1
        return used

    async def verify_fresh(self) -> None:
        """Every token a 200 handed out and nobody used must still be good."""
        pending = list(self.fresh)
        for start in range(0, len(pending), 20):
            batch = pending[start : start + 20]
            await asyncio.gather(*(self.refresh(token) for token in batch))
