"""Kombu's Redis transport, with a closed connection reported as a connection error.

Why this exists: when Celery handles a lost broker connection, kombu detaches the transport
from its `Connection` (`transport.client = None`) before every channel is closed. Closing
such a channel restores the messages it holds unacknowledged, which needs a new Redis client
whose parameters come from `connection.client`, now None: `AttributeError: 'NoneType' object
has no attribute 'hostname'` (or `... 'client'` once the channel is detached too). That is
not one of the transport's connection errors, so Celery calls it "Unrecoverable" and the
worker or coordinator exits. Seen here in 3 of 18 Redis restarts with celery 5.7.0, kombu
5.7.0 and redis-py 8.1.0; the same path is reported upstream since kombu 3 (celery/kombu#582,
#970) and is still in 5.7.0. `tests/test_broker_transport.py` reproduces it deterministically.

Our channel raises the transport's own `ConnectionError` instead, which kombu ignores while
closing and after which Celery reconnects. The messages it could not put back stay in Redis's
unacked index, where the visibility timeout returns them; the coordinator requeues any
experiment no worker claimed, and a second delivery finds nothing to claim.

`install()` registers this transport under the `redis` and `rediss` schemes, so broker URLs,
Flower and `as_uri()` keep their usual form.
"""
from __future__ import annotations

from typing import Any

from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

SCHEMES = ("redis", "rediss")


class Channel(kombu_redis.Channel):
    """A Redis channel that cannot crash its process for want of a connection."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            raise RedisConnectionError("the broker connection was closed before this channel")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    """Kombu's Redis transport with `Channel` above."""

    Channel = Channel


def install() -> None:
    """Make `redis://` and `rediss://` URLs use `Transport` (idempotent)."""
    for scheme in SCHEMES:
        kombu_transports.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
