"""The states of tasks, experiments and attempts: one vocabulary for the store, the
coordinator, the strategies, the API and the console (like Optuna's `TrialState`).

Members are strings (`ExperimentState.RUNNING == "running"`), so they are stored, compared,
hashed and serialised as their value; rows read back from the database hold plain strings.
"""
from __future__ import annotations

from enum import Enum


class _StrState(str, Enum):
    """A state whose str(), format() and hash are its value's, on every Python version."""

    __str__ = str.__str__
    __format__ = str.__format__
    __hash__ = str.__hash__


class TaskStatus(_StrState):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class ExperimentState(_StrState):
    PENDING = "pending"  # waiting for GPUs
    QUEUED = "queued"  # GPUs allocated, job sent
    RUNNING = "running"  # claimed by a worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    def is_active(self) -> bool:
        return self in (ExperimentState.PENDING, ExperimentState.QUEUED, ExperimentState.RUNNING)

    def is_failure(self) -> bool:
        """Ended without a result the strategy can use, by the configuration's doing or not."""
        return self in (ExperimentState.FAILED, ExperimentState.TIMED_OUT)


class AttemptState(_StrState):
    """An attempt ends in one of the experiment's end states, or in one of its own."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"  # its worker vanished; the experiment is retried as a new attempt
    REPLANNED = "replanned"  # gave its GPUs back before starting an engine (a GPU was busy)


TASK_TERMINAL = tuple(s for s in TaskStatus if s.is_terminal())
EXP_ACTIVE = tuple(s for s in ExperimentState if s.is_active())
EXP_STATES = tuple(ExperimentState)
