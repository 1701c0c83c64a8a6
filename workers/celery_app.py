"""The Celery application shared by the web app (to enqueue), the coordinator and the
GPU workers (to consume), and Flower (`celery -A workers.celery_app flower`).

Settings follow DESIGN.md for long GPU jobs: late acks and prefetch 1 so a job is only
taken off the queue when it is done and a busy worker never hoards jobs; a worker lost
mid-job puts the message back (the database caps the attempts); the Redis visibility
timeout outlives every hard time limit; events on for Flower; results are rows in our
database, so Celery's result backend is not used.
"""
from __future__ import annotations

from celery import Celery

from app.config import get_settings

CONTROL_QUEUE = "control"


def make_celery() -> Celery:
    settings = get_settings()
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    celery = Celery("autotuner", broker=broker, include=["workers.tasks"])
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "autotuner-tick": {
                "task": "autotuner.tick",
                "schedule": settings.tick_interval,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.tick_interval},
            }
        },
    )
    return celery


app = make_celery()
