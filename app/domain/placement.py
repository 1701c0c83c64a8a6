"""Placement: which waiting experiment gets which free GPUs, as a pure function of the pool's
state (no database: the store's ledger feeds it and applies its decisions).

Order is priority, then the fair-share tag the coordinator gave each experiment (expected
GPU-seconds, so tasks of equal priority share the pool; within a task the coordinator deals
its waiting experiments' tags out longest predicted first, `longest_first`), with one
reservation and backfill (EASY): waiting experiments
are served in order; the first that cannot be placed reserves the group where its GPUs are
expected to be free soonest (from the expected ends of what runs there), and younger
experiments may start in that group only if they are expected to end before the
reservation's start, or on GPUs the reservation will not need. Elsewhere they start freely.
Expected ends are estimates; if the reserved experiment's start slips past its first promised
start by more than the allowed slip, the reservation turns strict: nothing more starts in its
group until it has started, so its wait is bounded by what already runs there.

The planner is given data, never a connection: the store reads the first page of every GPU
count's queue, the room and expected length of the tasks on those pages, and no expected ends
(app/store/passes.py). When a decision needs more than it was given (a queue read to the end
of an incomplete page, the ends of the groups a reservation weighs), `plan` raises `MoreData`
saying what; the store reads it and plans again from the start (the rare case: a pass reads
one page of each queue).

The planner reads the waiting queue as one stream per GPU count and stops reading a stream
as soon as its head cannot start: free GPUs only shrink during a pass and the reservation and
its spare GPUs only tighten, so nothing behind that head can fit either; a head refused only
because it would run past the reserved start also ends its GPU count's turn for the pass (a
shorter experiment behind it waits for the next pass: reading on could cost the backlog). A
pass therefore reads about one row per placement plus one per GPU count, however long the
backlog: the decisions are exactly those of serving the whole queue in order with that rule
(tests/planner_reference.py).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, MutableMapping


@dataclass
class FreeGpu:
    id: int
    index: int
    utilization: float = 0.0
    domain: str | None = None  # NVLink / PCIe-switch domain; None: unknown


@dataclass
class GroupState:
    """What the planner needs to know about one worker group right now. `ends` are the
    expected end times (epoch seconds) and GPU counts of what runs there; the planner adds
    what it places."""

    group: str
    total_gpus: int
    slots: int
    busy_slots: int
    free: list[FreeGpu] = field(default_factory=list)
    ends: list[tuple[float, int]] = field(default_factory=list)
    ends_known: bool = True  # False: `ends` not read yet (a reservation that weighs it asks: MoreData)

    def can_host(self, need: int) -> bool:
        """A slot free and `need` different GPUs with room (free slots of one GPU count once)."""
        return self.busy_slots < self.slots and len(self.free) >= need and len({g.index for g in self.free}) >= need

    def shadow(self, need: int, now: float) -> tuple[float, int, int] | None:
        """(time, free GPUs, free slots) at the earliest expected moment when `need` GPUs and a
        slot are free here, or None if what runs here never frees enough."""
        free, busy = len(self.free), self.busy_slots
        if busy < self.slots and free >= need:
            return now, free, self.slots - busy
        for end, gpus in sorted(self.ends):
            free, busy = free + gpus, busy - 1
            if busy < self.slots and free >= need:
                return max(end, now), free, self.slots - busy
        return None


@dataclass(frozen=True)
class Waiting:
    """One waiting experiment as the planner reads it from a queue."""

    key: Any  # its place in the global order (smaller first)
    experiment_id: int
    task_id: int = 0
    promised: float | None = None  # the start its earlier reservation promised (epoch seconds)
    expected: float | None = None  # its own predicted length (seconds), if its task's history tells


@dataclass
class Reservation:
    experiment_id: int
    group: str
    start: float  # expected start (epoch seconds); inf when unknown
    spare_gpus: int  # free at `start` beyond what it needs: backfill may use them
    spare_slots: int
    strict: bool  # nothing more starts in the group (its start slipped too far, or is unknown)


@dataclass(frozen=True)
class Placement:
    experiment_id: int
    group: str
    gpu_ids: tuple[int, ...]


@dataclass
class Plan:
    placements: list[Placement]
    waiting: dict[int, str]  # experiment id -> why it waits
    impossible: dict[int, str]  # experiment id -> why no registered group can ever host it
    reservation: Reservation | None = None


def pick_gpus(free: list[FreeGpu], need: int) -> list[FreeGpu]:
    """`need` free GPUs, or free slots of `need` different GPUs where GPUs are split into slots.

    Within one topology domain when one has room (the tightest such domain, keeping the
    roomier ones whole for larger experiments); there, prefer a run of neighbouring indices
    (on one board they share the fastest links); among those, the emptiest GPUs (most free
    slots: an engine alone on its GPU is measured without a neighbour, and since every
    experiment takes one slot per GPU, spreading keeps the most GPUs open to multi-GPU ones),
    then the least utilised; else the emptiest, least utilised GPUs."""
    slots: dict[int, list[FreeGpu]] = {}
    for gpu in free:
        slots.setdefault(gpu.index, []).append(gpu)
    gpus = [min(group, key=lambda g: g.id) for group in slots.values()]  # one slot per physical GPU
    room = {index: len(group) for index, group in slots.items()}
    domains: dict[str | None, list[FreeGpu]] = {}
    for gpu in gpus:
        domains.setdefault(gpu.domain, []).append(gpu)
    if len(domains) > 1:
        roomy = [members for members in domains.values() if len(members) >= need]
        if roomy:
            gpus = min(roomy, key=lambda members: (len(members), min(g.index for g in members)))
    by_index = sorted(gpus, key=lambda g: g.index)
    windows = [
        by_index[i : i + need]
        for i in range(len(by_index) - need + 1)
        if by_index[i + need - 1].index - by_index[i].index == need - 1
    ]
    if windows:
        return min(windows, key=lambda w: (-sum(room[g.index] for g in w), sum(g.utilization for g in w), w[0].index))
    return sorted(gpus, key=lambda g: (-room[g.index], g.utilization, g.index))[:need]


@dataclass
class Page:
    """The head of one GPU count's waiting queue as read from the store; `complete`: nothing
    waits behind it."""

    items: list[Waiting]
    complete: bool = True

    def __iter__(self) -> Iterator[Waiting]:
        return iter(self.items)


class MoreData(Exception):
    """The plan needs data it was not given: more of the queue of `need` GPUs (its page ran
    out), or the expected ends of `groups`. Read it and plan again."""

    def __init__(self, need: int | None = None, groups: tuple[str, ...] = ()) -> None:
        super().__init__(f"more of the queue of {need} GPU(s)" if need is not None else f"the ends of {groups}")
        self.need, self.groups = need, groups


Queues = Mapping[int, Iterable[Waiting]]  # a Page, or any iterable read lazily (tests)


@dataclass
class Clock:
    """The pass's view of time: now, each task's expected experiment length (seconds; an
    experiment's own prediction comes first), and
    how far a reservation's promised start may slip before it turns strict."""

    now: float = 0.0
    durations: Mapping[int, float] = field(default_factory=dict)
    default_duration: float = float("inf")
    slip: float = 60.0

    def duration(self, task_id: int, expected: float | None = None) -> float:
        """An experiment's expected length: its own prediction, else its task's."""
        if expected is not None:
            return expected
        return self.durations.get(task_id, self.default_duration)


CAPPED = "waiting for one of its task's running experiments to end (max_parallel_experiments)"


def longest_first(tags: list[float], lengths: list[float | None], default: float | None,
                  head: int | None = None) -> list[float] | None:
    """One task's waiting experiments, given in creation order with their fair-share tags and
    predicted lengths, re-ordered longest first: the same tags dealt out again, the smallest
    to the longest (ties keep creation order). Returns each one's new tag, in the order given.

    Why: the queue is served by tag, and the longest experiment started last is what ends
    a batch of work late (the longest-processing-time rule); short ones started later fill
    the holes backfill finds. Only the task's own tags move, so over its whole waiting set what
    it gets against other tasks (fair share) does not change. (Over a shorter stretch it can
    run ahead by up to its waiting set's expected GPU-seconds: a long one now holding a small
    tag may wait for its GPUs while backfill starts a later tag; the scheduler's virtual time
    then moves only to the task's smallest waiting tag, coordinator._served.) An
    unknown length counts as `default` (the task's moving average); with none, nothing can be
    compared: None, the order stays.

    `head`: only the `head` smallest tags are dealt, to the `head` longest; the rows they
    displace take the tags those longest held, in creation order, and the others keep theirs.
    At most 2 × head rows change (the coordinator deals one round of max_parallel: the order
    matters at the head of the queue, and it deals again after every result)."""
    known: list[float] = []
    for length in lengths:
        length = length if length is not None else default
        if length is None:
            return None
        known.append(length)
    longest = sorted(range(len(tags)), key=lambda i: (-known[i], i))[:head]
    smallest = sorted(range(len(tags)), key=lambda i: (tags[i], i))[:len(longest)]
    dealt = list(tags)
    for i, j in zip(longest, smallest):
        dealt[i] = tags[j]
    displaced = sorted(set(smallest) - set(longest))
    freed = sorted(tags[i] for i in set(longest) - set(smallest))
    for i, tag in zip(displaced, freed):
        dealt[i] = tag
    return dealt


def plan(queues: Queues, groups: list[GroupState], capacity: dict[str, int], clock: Clock | None = None,
         room: MutableMapping[int, int] | None = None) -> Plan:
    """Decide placements for the waiting experiments in queue order.

    `queues` maps a GPU count to the experiments needing that many, in queue order; the keys
    of all queues together give the global order. Each is read only as far as placements can
    go; a `Page` that runs out before that raises MoreData, as does a reservation weighing a
    group whose ends are not known.
    `capacity` is the size of every registered group, online or not: an experiment larger
    than all of them can never run and is reported as impossible rather than waiting forever.
    `room`: how many more experiments of each task may start now (its max_parallel_experiments
    less what it runs); a task without room is passed over, not waited for, so its experiments
    created ahead (see coordinator.advance) never hold up another task's. None: no limit.
    Waiting reasons are given for the experiments read. Mutates nothing it is given except
    the `groups` it plans into and `room`.
    """
    clock = clock or Clock()
    placements: list[Placement] = []
    reasons: dict[int, str] = {}
    impossible: dict[int, str] = {}
    reservation: Reservation | None = None
    largest = max(capacity.values(), default=0)
    heads: list[tuple[Any, int, Waiting, Iterator[Waiting]]] = []
    incomplete = {need for need, queue in queues.items() if isinstance(queue, Page) and not queue.complete}
    # With no GPU free anywhere nothing can start this pass: a page that runs out is not read
    # further (a task without room would otherwise have its whole backlog read, at every pass
    # while the pool is full, for wait reasons only; those beyond keep theirs until a GPU frees).
    full = not any(g.can_host(1) for g in groups)

    def advance(need: int, stream: Iterator[Waiting]) -> None:
        item = next(stream, None)
        if item is not None:
            heapq.heappush(heads, (item.key, need, item, stream))
        elif need in incomplete and not full:
            raise MoreData(need=need)

    def allowed(group: GroupState, need: int, end: float) -> bool:
        """May an experiment of `need` GPUs expected to end at `end` start in `group` now?"""
        if reservation is None or group.group != reservation.group:
            return True
        if reservation.strict:
            return False
        if end <= reservation.start:
            return True
        return need <= reservation.spare_gpus and reservation.spare_slots > 1

    for need, queue in queues.items():
        advance(need, iter(queue))
    while heads:
        _, need, item, stream = heapq.heappop(heads)
        exp_id = item.experiment_id
        if not capacity:
            reasons[exp_id] = "waiting for a GPU worker to register"
            continue
        if need > largest:
            impossible[exp_id] = (
                f"needs {need} GPUs but the largest worker group has {largest}; "
                "start a worker with more GPUs in one group"
            )
            advance(need, stream)
            continue
        if room is not None and room[item.task_id] <= 0:
            reasons[exp_id] = CAPPED
            advance(need, stream)
            continue
        end = clock.now + clock.duration(item.task_id, item.expected)
        hosts = [g for g in groups if g.can_host(need)]
        fits = [g for g in hosts if allowed(g, need, end)]
        if fits:
            # Best fit: the group left with the fewest free GPUs keeps big holes for big jobs.
            chosen = min(fits, key=lambda g: (len(g.free) - need, g.group))
            taken = pick_gpus(chosen.free, need)
            taken_ids = {g.id for g in taken}
            chosen.free = [g for g in chosen.free if g.id not in taken_ids]
            chosen.busy_slots += 1
            chosen.ends.append((end, need))
            if reservation is not None and chosen.group == reservation.group and end > reservation.start:
                reservation.spare_gpus -= need
                reservation.spare_slots -= 1
            placements.append(Placement(exp_id, chosen.group, tuple(sorted(taken_ids))))
            if room is not None:
                room[item.task_id] -= 1
            advance(need, stream)
            continue
        if hosts and reservation is not None and not reservation.strict:  # only the reserved group has room
            reasons[exp_id] = (f"waiting for {need} free GPU(s); it would run past the start reserved "
                               f"in group {reservation.group}")
            continue  # this GPU count's turn ends here for the pass
        # Not read further: nothing behind this head fits this pass.
        if reservation is None:
            reservation = _reserve(item, need, groups, clock)
            if reservation is not None:
                reasons[exp_id] = f"waiting for {need} free GPU(s); group {reservation.group} is reserved for it"
                continue
        reasons[exp_id] = (
            f"waiting for {need} free GPU(s)"
            if any(g.total_gpus >= need for g in groups)
            else f"waiting for an online worker group with {need} GPU(s)"
        )
    return Plan(placements, reasons, impossible, reservation)


def _reserve(item: Waiting, need: int, groups: list[GroupState], clock: Clock) -> Reservation | None:
    """Reserve, for the first experiment that cannot start, the group where it is expected to
    start soonest among those with the most free GPUs. Strict when that start is unknown or
    has slipped too far past the start promised to it in an earlier pass."""
    candidates = [g for g in groups if g.total_gpus >= need and g.slots > 0]
    if not candidates:
        return None
    most = max(len(g.free) for g in candidates)  # the roomiest groups: fewest ends to wait for
    candidates = [g for g in candidates if len(g.free) == most]
    if most == 0:  # nothing free there, so nothing can backfill this pass: no need to know when
        group = min(candidates, key=lambda g: g.group)
        return Reservation(item.experiment_id, group.group, float("inf"), 0, 0, strict=True)
    unknown = tuple(g.group for g in candidates if not g.ends_known)
    if unknown:
        raise MoreData(groups=unknown)
    timed = [(g.shadow(need, clock.now), g) for g in candidates]
    known = [(shadow, g) for shadow, g in timed if shadow is not None]
    if not known:
        group = max(candidates, key=lambda g: (len(g.free), g.group))
        return Reservation(item.experiment_id, group.group, float("inf"), 0, 0, strict=True)
    (start, free, slots), group = min(known, key=lambda sg: (sg[0][0], sg[1].group))
    slipped = item.promised is not None and clock.now > item.promised + clock.slip
    return Reservation(item.experiment_id, group.group, start, free - need, slots,
                       strict=slipped or start == float("inf"))
