"""Failed logins per client, so a token cannot be guessed at network speed.

In memory, per web process: with N gunicorn workers a client gets at most N times the
allowance, which still turns guessing a 32-character token into a matter of centuries.
Memory is bounded: at most `max_clients` addresses are remembered (the least recently
seen are forgotten first), each with at most `limit` timestamps.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from cachetools import LRUCache


class FailureLimiter:
    """At most `limit` failures per `window` seconds per client."""

    def __init__(self, limit: int, window: float, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.max_clients, self.clock = limit, window, max_clients, clock
        self._failures: LRUCache[str, deque[float]] = LRUCache(maxsize=max_clients)
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again; None when it may try now."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            return times[0] + self.window - now if len(times) >= self.limit else None

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            times.append(now)
            while len(times) > self.limit:
                times.popleft()
            self._failures[client] = times
