"""Usage: who ran what for how long, on every cloud, as summaries (APEL records from them: `wlcgcloud.apel`).

Sources, merged per instance (profile + id):
- OpenStack: `os-simple-tenant-usage` (the provider pages it);
- OpenNebula: `one.vmpool.accounting` HISTORY records (each running interval of a VM);
- EC2, which has no usage API: what `DescribeInstances` shows now (launch time, and the
  termination time of the last hour's terminated instances) plus the ledger's lifetimes, since
  EC2 forgets terminated instances within about an hour.
Fleet and experiment come from the instances' tags, else from the ledger.

Arithmetic is on epoch seconds, not datetimes: `aggregate` must stay fast for a million intervals.
An interval is clipped to the window (and to now, for what still runs); `--by day` splits it at
UTC midnights.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from wlcgcloud.clouds import CLOUDS, cloud_of
from wlcgcloud.config import Profile
from wlcgcloud.errors import UsageError, WlcgError
from wlcgcloud.ledger import sums as ledger_sums
from wlcgcloud.ledger.sums import Bucket
from wlcgcloud.providers.base import UsageRecord
from wlcgcloud.shutdown import parse_stored
from wlcgcloud.times import check_moment, parse_duration, shown, stamp

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger

GROUPS = ("profile", "fleet", "experiment", "flavor", "image", "day", "instance")
DAY = 86400
LONG_WINDOW_DAYS = 366 * 3  # a wider window is answered, with a warning that it may be slow and partial


# Dates


def parse_moment(text: str, option: str, now: datetime, end: bool = False) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or `7d`, `12h`, `today`, `this-month`, `last-month`.

    With `end`, a bare date or month name means the end of that day or month (for --until). An
    empty text, and a moment before 1970 or after 2200, is a UsageError like any other bad date.
    """
    spec = text.strip().lower()
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    if spec == "now":
        return now
    if spec == "today":
        return today + timedelta(days=1) if end else today
    if spec == "this-month":
        return next_month(month) if end else month
    if spec == "last-month":
        previous = (month - timedelta(days=1)).replace(day=1)
        return month if end else previous
    if re.fullmatch(r"\d+[smhdw]([0-9smhdw]*)", spec):
        return check_moment(now - parse_duration(spec, option), option)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", spec):
            day = check_moment(datetime.combine(date.fromisoformat(spec), datetime.min.time(), UTC), option)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{option}: {shown(text)} is not a date.",
            "Write 2026-11-01, 2026-11-01T12:00Z, 7d, 12h, today, this-month or last-month.",
        ) from None
    return check_moment(moment if moment.tzinfo else moment.replace(tzinfo=UTC), option)


def next_month(first: datetime) -> datetime:
    return (first + timedelta(days=32)).replace(day=1)


def window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime, list[str]]:
    """The [since, until) window of `usage` (default: this month so far), and warnings about it."""
    start = parse_moment("this-month" if since is None else since, "--since", now)
    end = now if until is None else parse_moment(until, "--until", now, end=True)
    if start >= end:
        raise UsageError(
            f"--since {stamp(start)} is not before --until {stamp(end)}.", "Swap them, or widen the window."
        )
    warnings = []
    if (end - start).days > LONG_WINDOW_DAYS:
        warnings.append(
            f"a window of {(end - start).days} days: clouds keep far less history; expect it to be partial."
        )
    if start > now:
        warnings.append("the window starts in the future: nothing has run there yet.")
    return start, end, warnings


# Intervals


@dataclass(frozen=True, slots=True)
class Interval:
    """One instance running from `start` to `end` (epoch seconds; end None: still running)."""

    profile: str
    provider: str
    instance: str
    start: float
    end: float | None
    vcpus: int
    memory_mb: int
    flavor: str | None = None
    image: str | None = None
    fleet: str | None = None
    experiment: str | None = None
    name: str | None = None
    source: str = ""


@dataclass
class Collected:
    """Everything the clouds and the ledger said about the window, with what went wrong."""

    intervals: list[Interval] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)  # the ledger's lifetimes summed in SQL (`summed_by`)
    # Or, grouped by instance: each lifetime clipped, a stream per profile in the rows' order.
    lifetimes: list[Iterable[tuple[Any, ...]]] = field(default_factory=list)
    # Or, for APEL records, read later by `apel.messages`: the profiles whose lifetimes are wanted, each
    # with the ids its cloud still reports (their own figures count instead).
    from_ledger: dict[str, set[str]] = field(default_factory=dict)
    failures: list[tuple[str, WlcgError]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    asked: int = 0


def from_record(r: UsageRecord, known: Mapping[tuple[str, str], Mapping[str, Any]], source: str) -> Interval:
    ledger_row = known.get((r.profile, r.instance_id), {})
    return Interval(
        profile=r.profile,
        provider=r.provider,
        instance=r.instance_id,
        start=r.started_at.timestamp(),
        end=r.ended_at.timestamp() if r.ended_at else None,
        vcpus=int(r.vcpus or ledger_row.get("vcpus") or 0),
        memory_mb=int(r.memory_mb or ledger_row.get("memory_mb") or 0),
        flavor=r.flavor or ledger_row.get("flavor"),
        # wlcg:image is "none" for an unendorsed launch: then the cloud's own image id, as the ledger keeps it
        image=(r.tags.get("wlcg:image") if r.tags.get("wlcg:image") != "none" else None)
        or r.image
        or ledger_row.get("image"),
        fleet=r.tags.get("wlcg:fleet") or ledger_row.get("fleet"),
        experiment=r.tags.get("wlcg:experiment") or ledger_row.get("experiment"),
        name=r.name,
        source=source,
    )


def collect(
    profiles: Sequence[Profile], since: datetime, until: datetime, ledger: Ledger,
    summed_by: Sequence[str] | None = None, now: datetime | None = None,
    apel: bool = False, summary: bool = True,
) -> Collected:  # fmt: skip
    """Intervals of every profile in parallel, merged with the ledger's memory (EC2) and tags (all).

    With `summed_by` (the groups of `aggregate`), the ledger's memory comes as buckets summed in
    SQL, up to `now`, instead of one interval per lifetime: what a year of a big fleet needs. Grouped
    by instance, it comes as plain tuples clipped in SQL (`ledger.sums.lifetimes`), a row each, read as
    they are wanted. With `apel`, it is also left for `apel.messages`
    to read, cut at the months (`Collected.from_ledger`); without `summary`, only that.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from wlcgcloud.providers import for_each_profile

    out = Collected(asked=len(profiles))
    lo, hi = since.timestamp(), min(until, now or until).timestamp()
    groups = [g for g in summed_by or () if g != "day"]
    summing: dict[str, Future[list[Bucket]]] = {}
    each = summed_by is not None and summary and "instance" in groups  # by instance: a lifetime is a row
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sums") as pool:
        # The ledger starts summing while the clouds are asked; what they still show is taken out after.
        for p in profiles if summed_by is not None and summary and not each else ():
            if cloud_of(p).forgets_ended:
                summing[p.name] = pool.submit(_summed, ledger, p.name, lo, hi, groups)
        answers = for_each_profile(profiles, lambda p: p.usage(since, until))
        summed = {name: f.result() for name, f in summing.items()}
        _merge(answers, out, ledger, since, until, summed, lo, hi, groups, apel, summary, each)
    return out


def _summed(ledger: Ledger, profile: str, lo: float, hi: float, groups: Sequence[str]) -> list[Bucket]:
    return list(ledger_sums.buckets(ledger, profile, lo, hi, groups))


def _merge(
    answers: Sequence[Any], out: Collected, ledger: Ledger, since: datetime, until: datetime,
    summed: Mapping[str, list[Bucket]], lo: float, hi: float, groups: Sequence[str],
    apel: bool, summary: bool, each: bool,
) -> None:  # fmt: skip
    """Each cloud's answer, with the ledger's memory of what the cloud forgot: `summed` buckets, or (`each`:
    by instance) a stream of the clipped lifetimes, or intervals; and what APEL reads later."""
    for answer in answers:
        profile = answer.profile
        if answer.error is not None:
            out.failures.append((profile.name, answer.error))
            continue
        records = answer.value or []
        seen = {r.instance_id for r in records}
        # Only the ledger rows of what the cloud reported: a ledger of millions is not loaded whole.
        known = {(profile.name, r["id"]): r for r in ledger.instances(profile=profile.name, ids=seen)}
        cloud = cloud_of(profile)
        out.intervals += [from_record(record, known, cloud.usage_source) for record in records]
        if cloud.forgets_ended and apel:
            out.from_ledger[profile.name] = seen
        if each and cloud.forgets_ended:
            at = groups.index("instance")
            out.lifetimes.append(unseen(ledger_sums.lifetimes(ledger, profile.name, lo, hi, groups), at, seen))
        elif profile.name in summed:
            out.buckets += ledger_sums.without(summed[profile.name], known.values(), lo, hi, groups)
        elif cloud.forgets_ended and summary:
            out.intervals += _ledger_intervals(profile.name, ledger, seen, since, until)
        if cloud.forgets_ended:
            first = ledger.first_launch(profile.name)
            if first is None or first > stamp(since):
                began = f"began {first}" if first else "holds nothing for it yet"
                out.notes.append(f"profile '{profile.name}': {cloud.title} forgets terminated instances within "
                                 f"about an hour and the ledger {began}: use before that is missing.")  # fmt: skip


def unseen(lives: Iterable[tuple[Any, ...]], at: int, seen: set[str]) -> Iterator[tuple[Any, ...]]:
    """The ledger's rows (lifetimes, APEL pieces) whose instance (at `at`) the cloud no longer reports: its
    own figures count instead. (Nothing to leave out: the rows as they come, with no step per row.)"""
    return (life for life in lives if life[at] not in seen) if seen else iter(lives)


def _ledger_intervals(profile: str, ledger: Ledger, seen: set[str], since: datetime, until: datetime) -> list[Interval]:
    """EC2 instances the cloud no longer shows, from the ledger's lifetimes (selected in SQL: a million is quick)."""
    return [
        Interval(
            profile,
            provider,
            ident,
            start,
            end,
            int(vcpus or 0),
            int(memory or 0),
            flavor,
            image,
            fleet,
            experiment,
            name,
            "ledger",
        )
        for ident, provider, start, end, vcpus, memory, flavor, image, fleet, experiment, name in ledger.lifetimes(
            profile, since.timestamp(), until.timestamp()
        )
        if ident not in seen
    ]


def end_messages(ledger: Ledger, intervals: Iterable[Interval]) -> dict[str, str]:
    """The shutdown message (code and text) each instance left as it ended, by id, where the ledger has one."""
    by_profile: dict[str, set[str]] = {}
    for iv in intervals:
        by_profile.setdefault(iv.profile, set()).add(iv.instance)
    rows = (r for name, ids in by_profile.items() for r in ledger.instances(profile=name, ids=sorted(ids)))
    return {r["id"]: str(said) for r in rows if (said := parse_stored(r.get("end_code"), r.get("end_reason")))}


# Aggregation


def check_groups(by: Sequence[str]) -> None:
    """A UsageError for a group `usage --by` does not know."""
    unknown = [b for b in by if b not in GROUPS]
    if unknown:
        raise UsageError(f"--by {unknown[0]}: group by one of {', '.join(GROUPS)}.")


def aggregate(
    intervals: Iterable[Interval], since: datetime, until: datetime, by: Sequence[str], now: datetime,
    buckets: Iterable[Bucket] = (), lifetimes: Iterable[tuple[Any, ...]] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Rows grouped by `by`, and the total: instances, wall hours, core-hours, memory GB-hours.

    An interval counts only inside [since, min(until, now)); with `day` in `by` it is split at
    UTC midnights. `instances` counts distinct instances in a row. Besides the clouds' intervals come
    the ledger's lifetimes, summed (`buckets`) or, grouped by instance, each clipped (`lifetimes`:
    the values of `by` but the day, vCPUs, MiB, start, end). Written for speed (a million lifetimes in
    seconds): plain arithmetic on epoch seconds, days as day numbers until the end, and sets of
    instances only for the few instances that have several intervals (OpenNebula's history records).
    """
    check_groups(by)
    others = [b for b in by if b != "day"]
    with collector_paused():  # millions of new rows, none in a cycle: the collector would rescan them all
        sums, total, instances = _accumulate(intervals, since, until, by, now, buckets, lifetimes)
        return _rows(sums, by, others, "day" in by), _figures(instances, *total)


def streamed(
    intervals: Iterable[Interval], since: datetime, until: datetime, by: Sequence[str], now: datetime,
    lifetimes: Sequence[Iterable[tuple[Any, ...]]],
) -> tuple[Iterator[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """`aggregate` grouped by instance and not by day, where each lifetime is a row of its own, with the
    rows made as they are used from the lifetimes' streams (`Collected.lifetimes`, each in the rows'
    order), merged with the rows of the clouds' own intervals: a million rows or lifetimes never all
    held. The same rows, in the same order; a row of two lifetimes (one id in two profiles) is one row,
    as in `aggregate`. The total is summed as the rows are made: it is whole once they are all read (so
    it is written after them), and the ledger is not read a second time for it."""
    check_groups(by)
    if "instance" not in by or "day" in by:
        raise ValueError("streamed: grouped by instance, and not by day")
    import heapq

    width = len(by)
    with collector_paused():
        sums, total, instances = _accumulate(intervals, since, until, by, now)
    summary = _figures(instances, *total)
    order = _order(by)
    cloud = sorted(((base, value) for (base, _), value in sums.items()), key=lambda kv: order(kv[0]), reverse=True)

    def group_of(life: tuple[Any, ...]) -> Any:
        return life[0] if width == 1 else life[:width]

    def named(base: Any, value: list[Any]) -> dict[str, Any]:
        return _summed_row(_keyed(by, base), value)

    def row_of(base: Any, value: list[Any]) -> Iterator[dict[str, Any]]:
        while cloud and order(cloud[-1][0]) < order(base):  # the clouds' rows that come first
            yield named(*cloud.pop())
        if cloud and cloud[-1][0] == base:
            known = cloud.pop()[1]
            value = [known[0] + value[0], known[1] + value[1], known[2] + value[2], known[3] + value[3], known[4]]
        yield named(base, value)

    def alone() -> Iterator[dict[str, Any]]:  # one profile's lifetimes, and no cloud's rows: a row each
        n, seconds, cores, memory = 0, 0.0, 0.0, 0.0
        for life in lifetimes[0]:
            cut = life[-1] - life[-2]
            c, m = cut * life[-4], cut * life[-3]
            n, seconds, cores, memory = n + 1, seconds + cut, cores + c, memory + m
            yield _figures(1, cut, c, m, row=_keyed(by, group_of(life)))
        _figures(instances + n, total[0] + seconds, total[1] + cores, total[2] + memory, row=summary)

    def rows() -> Iterator[dict[str, Any]]:
        merged = heapq.merge(*lifetimes, key=lambda life: order(group_of(life))) if len(lifetimes) > 1 else lifetimes[0]
        n, seconds, cores, memory = 0, 0.0, 0.0, 0.0  # the lifetimes' part of the total
        base, value = None, None
        for life in merged:
            key, cut = group_of(life), life[-1] - life[-2]
            c, m = cut * life[-4], cut * life[-3]
            n, seconds, cores, memory = n + 1, seconds + cut, cores + c, memory + m
            if value is not None and key == base:  # one id in two profiles: one row
                value = [value[0] + 1, value[1] + cut, value[2] + c, value[3] + m, None]
                continue
            if value is not None:
                yield from row_of(base, value)
            base, value = key, [1, cut, c, m, None]
        if value is not None:
            yield from row_of(base, value)
        while cloud:
            yield named(*cloud.pop())
        _figures(instances + n, total[0] + seconds, total[1] + cores, total[2] + memory, row=summary)

    # A profile's lifetimes are of distinct instances (the ledger's key): only several profiles, or the clouds'
    # own rows, can add to a row.
    return alone() if len(lifetimes) == 1 and not cloud else rows(), summary


def _accumulate(
    intervals: Iterable[Interval], since: datetime, until: datetime, by: Sequence[str], now: datetime,
    buckets: Iterable[Bucket] = (), lifetimes: Iterable[tuple[Any, ...]] = (),
) -> tuple[dict[tuple[Any, int], list[Any]], list[float], int]:  # fmt: skip
    """The sums of `aggregate`, by (group key without the day, day number); the total's seconds,
    core-seconds and MB-seconds; its instances."""
    items = intervals if isinstance(intervals, list) else list(intervals)
    lo, hi = since.timestamp(), min(until, now).timestamp()
    split = "day" in by
    others = [b for b in by if b != "day"]
    getter: Callable[[Interval], Any] = attrgetter(*others) if others else (lambda iv: None)
    identity = attrgetter("profile", "instance")
    # Only some clouds report several intervals for one instance (OpenNebula: a history record per
    # deployment); the others give one per instance, so only those need a set to count instances once.
    several_per_instance = {name for name, cloud in CLOUDS.items() if cloud.intervals_per_instance}
    counts = Counter(identity(iv) for iv in items if iv.provider in several_per_instance)
    repeated = {ident for ident, n in counts.items() if n > 1}
    # A row: [intervals of instances seen once, seconds, core-seconds, MB-seconds, instances seen more than once]
    sums: dict[tuple[Any, int], list[Any]] = {}
    total = [0.0, 0.0, 0.0]
    once, several = 0, set()  # the total's instances: intervals of single-interval instances, and the others
    for iv in items:
        start = iv.start if iv.start > lo else lo
        end = iv.end
        if end is None or end > hi:
            end = hi
        if end <= start:
            continue
        many = identity(iv) if repeated and identity(iv) in repeated else None
        if many is None:
            once += 1
        else:
            several.add(many)
        _add(sums, getter(iv), start, end, iv.vcpus, iv.memory_mb, many, split, total)
    width = len(others)
    for life in lifetimes:  # clipped in SQL already
        once += 1
        base = life[:width] if width > 1 else (life[0] if width else None)
        _add(sums, base, life[-2], life[-1], life[-4], life[-3], None, split, total)
    for bucket in buckets:  # the ledger's lifetimes, already clipped and grouped
        base = bucket.key if width > 1 else (bucket.key[0] if others else None)
        once += bucket.n
        total[0] += bucket.e - bucket.s
        total[1] += bucket.ce - bucket.cs
        total[2] += bucket.me - bucket.ms
        for day, count, seconds, core_seconds, mb_seconds in _pieces(bucket, lo, split):
            row = sums.get((base, day))
            if row is None:
                row = sums[base, day] = [0, 0.0, 0.0, 0.0, None]
            row[0] += count
            row[1] += seconds
            row[2] += core_seconds
            row[3] += mb_seconds
    return sums, total, once + len(several)


def _order(by: Sequence[str]) -> Callable[[Any], Any]:
    """How rows are ordered: by their groups' values, in the order of `by`, None as the empty text; here
    of a group key without the day (one value, or a tuple of them)."""
    if len(by) == 1:
        return lambda value: "" if value is None else str(value)
    return lambda values: tuple("" if v is None else str(v) for v in values)


def draining(items: list[Any]) -> Iterator[Any]:
    """The items of a list, taken out of it as they are yielded (last first): a million lifetimes by
    instance are freed as `aggregate` sums them, not after it made their rows."""
    while items:
        yield items.pop()


@contextmanager
def collector_paused() -> Iterator[None]:
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _add(
    sums: dict[tuple[Any, int], list[Any]], base: Any, start: float, end: float, cores: int, memory: int,
    many: Any, split: bool, total: list[float],
) -> None:  # fmt: skip
    """One interval, clipped, into its group's row, or its days' rows (`split`), and into the total."""
    seconds = end - start
    total[0] += seconds
    total[1] += seconds * cores
    total[2] += seconds * memory
    if not split:
        pieces: Iterable[tuple[int, float]] = ((0, seconds),)
    else:
        day = int(start // DAY)
        last = int(end // DAY) if end % DAY else int(end // DAY) - 1
        if day == last:
            pieces = ((day, seconds),)
        else:
            pieces = [(day, (day + 1) * DAY - start)]
            pieces += [(middle, DAY) for middle in range(day + 1, last)]
            pieces.append((last, end - last * DAY))
    for day, piece in pieces:
        row = sums.get((base, day))
        if row is None:
            row = sums[base, day] = [0, 0.0, 0.0, 0.0, None]
        if many is None:
            row[0] += 1
        elif row[4] is None:
            row[4] = {many}
        else:
            row[4].add(many)
        row[1] += piece
        row[2] += piece * cores
        row[3] += piece * memory


def _rows(
    sums: dict[tuple[Any, int], list[Any]], by: Sequence[str], others: Sequence[str], split: bool
) -> list[dict[str, Any]]:
    """The rows of `aggregate`, in the order of their groups' values; `sums` is emptied as they are made."""
    rows = []
    day_names: dict[int, str] = {}
    while sums:
        (base, day), value = sums.popitem()
        row = _keyed(others, base)
        if split:
            name = day_names.get(day)
            if name is None:
                name = day_names[day] = datetime.fromtimestamp(day * DAY, UTC).strftime("%Y-%m-%d")
            row["day"] = name
            if by[-1] != "day":  # the day is not the last group: the row's keys in the order of --by
                row = {b: row[b] for b in by}
        rows.append(_summed_row(row, value))
    order = _order(by)
    if len(by) == 1:  # without a tuple per row (a million rows by instance)
        only = by[0]
        rows.sort(key=lambda r: order(r[only]))
    else:
        rows.sort(key=lambda r: order([r[b] for b in by]))
    return rows


def _keyed(names: Sequence[str], base: Any) -> dict[str, Any]:
    """A row's groups from a group key: one value for one name, a tuple of them for several."""
    return dict(zip(names, base, strict=True)) if len(names) > 1 else {names[0]: base} if names else {}


def _summed_row(row: dict[str, Any], value: list[Any]) -> dict[str, Any]:
    """`row` with the figures of a sum (`_add`'s list: its instances are those seen once plus the set)."""
    return _figures(value[0] + (len(value[4]) if value[4] else 0), value[1], value[2], value[3], row=row)


def _pieces(bucket: Bucket, lo: float, split: bool) -> Iterator[tuple[int, int, float, float, float]]:
    """A bucket's (day, instances, seconds, core-seconds, MB-seconds): its lifetimes start on day
    `first` and end on day `last`, so each is `first`'s piece, whole days between, and `last`'s piece
    (none for those ending at its midnight). Sums are linear in the times: a piece's sum is a sum."""
    b = bucket
    if not split:
        yield 0, b.n, b.e - b.s, b.ce - b.cs, b.me - b.ms
        return
    if b.first == b.last:
        yield b.first, b.n, b.e - b.s, b.ce - b.cs, b.me - b.ms
        return
    cut = (b.first + 1) * DAY - lo  # the first midnight, in the sums' time (seconds after the window's start)
    yield b.first, b.n, b.n * cut - b.s, b.c * cut - b.cs, b.m * cut - b.ms
    for day in range(b.first + 1, b.last):
        yield day, b.n, b.n * DAY, b.c * DAY, b.m * DAY
    if b.n > b.at_midnight:
        cut = b.last * DAY - lo
        yield b.last, b.n - b.at_midnight, b.e - b.n * cut, b.ce - b.c * cut, b.me - b.m * cut


def _figures(
    instances: int, seconds: float, core_seconds: float, mb_seconds: float, *, row: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The figures of a row (added to `row`, after its groups' values), or of the total."""
    out = {} if row is None else row
    out["instances"] = instances
    out["wall_hours"] = seconds / 3600
    out["core_hours"] = core_seconds / 3600
    out["memory_gb_hours"] = mb_seconds / 3600 / 1024
    return out
