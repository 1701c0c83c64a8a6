"""The Redis transport survives the close-after-detach ordering that Celery's handling of a
lost broker connection produces (see app/broker_transport.py), reproduced deterministically
against the real Redis: a channel holding an unacknowledged message is closed after its
transport was detached from the connection."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.process


def _channel_holding_an_unacked_message(url: str):
    from kombu import Connection, Exchange, Queue

    conn = Connection(url)
    channel = conn.channel()
    queue = Queue("autotuner-test-detach", Exchange("autotuner-test-detach"), "autotuner-test-detach")
    with conn.Producer(channel=channel) as producer:
        producer.publish({"job": 1}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
    message = queue(channel).get(no_ack=False)
    assert message is not None and message.payload == {"job": 1}
    return conn, channel, message


def test_closing_a_channel_after_its_transport_is_detached_is_a_connection_error(broker_url):
    import redis

    from app.broker_transport import Transport
    from app.celery_app import app

    with app.connection_for_write() as celery_conn:  # the app's connections use our transport
        assert isinstance(celery_conn.transport, Transport) and celery_conn.as_uri().startswith("redis://")

    conn, channel, message = _channel_holding_an_unacked_message(broker_url)
    client = redis.Redis.from_url(broker_url)
    unacked_key = channel.unacked_key
    try:
        conn._do_close_transport()  # what kombu does first when Celery drops a broken connection
        with pytest.raises(redis.exceptions.ConnectionError):
            channel.close()  # stock kombu: AttributeError 'NoneType' ... 'hostname' (fatal to Celery)
        # kombu's own close path ignores connection errors, so nothing propagates ...
        conn2, channel2, _ = _channel_holding_an_unacked_message(broker_url)
        conn2._do_close_transport()
        conn2.maybe_close_channel(channel2)
        # ... and the unrestored messages stay in Redis's unacked index for the visibility timeout.
        assert client.hexists(unacked_key, message.delivery_tag)
    finally:
        client.delete(unacked_key, channel.unacked_index_key, "autotuner-test-detach")
