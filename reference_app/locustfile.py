"""Locust users of the book-rental app, and the stepped load shape scalesim measures with.

Run by :func:`scalesim.loadgen.driver.run_load` (``python -m locust -f reference_app/locustfile.py
--headless ...``), or by hand against a running app::

    locust -f reference_app/locustfile.py --headless --host http://127.0.0.1:8000

Everything is configured by one environment variable, ``SCALESIM_LOAD_CONFIG`` (JSON, see
:class:`scalesim.loadgen.config.LoadConfig`); unset, stage0's workload with steps 10, 20, 40 is
used and event lines go to the log.

The users
    :class:`BookRentalUser` is a closed population of the app's real users: each logs in once
    as a seed user (``user{i}@example.com`` / ``password{i}``, the indices spread over the
    seeded users), then does weighted tasks from the workload's ``mix`` with a think time of
    ``between(min, max)`` seconds: browse the catalog (a random category and page), look at a
    book, look at their profile, rentals or charges, rent a book and return it. Requests are
    named by endpoint template (``/api/books/{id}``) so that statistics aggregate per endpoint.
    A 409 on rent (no copy left, or the user's limit reached) is the app's business answer, so
    it counts as a success (and as a "rejection"). The users are :class:`FastHttpUser`\\ s: the
    generator shares two cores with the servers it measures.

The shape
    :class:`SteppedShape` walks the ``steps``: ramp to N users at ``spawn_rate``, wait
    ``warmup_seconds`` (not measured), then measure for ``step_seconds``. A
    :class:`StepController` greenlet (on the master, or the only process) keeps that timeline
    and the shape reports its current user count to Locust on Locust's one-second tick.

The measurements
    Every request lands, through ``events.request``, in a
    :class:`scalesim.loadgen.stats.WindowRecorder` (float milliseconds into 1%-precise,
    fixed-size histograms; Locust's own statistics round). A window opens with a reset and
    closes with a :class:`~scalesim.loadgen.stats.StepStats`. In distributed mode every worker
    records its own window and the master collects and merges them with custom messages. An
    :class:`~scalesim.loadgen.stats.IntervalRecorder` also keeps the last second (requests,
    failures, latency), for the per-second timeline of the ``progress`` events.

The acknowledged writes
    A rent answered 201 (rental id, user, book) and a return answered 200 (rental id) are
    promises the app made; each Locust process appends them to its own file
    (``acks_dir/<pid>.jsonl``, :class:`scalesim.loadgen.acks.AckLog`), in batches about once
    a second and at exit. A request whose answer never came (time-out, reset) is not recorded:
    the write may or may not have happened. :mod:`scalesim.audit` checks them after the run.

The events
    JSON lines on the pipe the driver passes (``events_fd``) or a file (``events_path``):
    ``run_start``, ``step_start``, ``measure_start``, ``progress`` (about once a second, also
    while requests fail),
    ``step_end`` (the StepStats), ``warning``, ``error``, ``done``. See
    :mod:`scalesim.loadgen.driver` for their fields.

Only this module imports Locust (which monkey-patches gevent on import); the scalesim modules
it uses are pure Python.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import random
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gevent
import gevent.event
from locust import FastHttpUser, LoadTestShape, between, events
from locust.runners import MasterRunner, WorkerRunner

try:
    from scalesim.loadgen.acks import AckLog
    from scalesim.loadgen.config import LoadConfig, seed_user_index
    from scalesim.loadgen.stats import IntervalRecorder, WindowRecorder
except ImportError:  # run by hand from a checkout without scalesim installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scalesim.loadgen.acks import AckLog
    from scalesim.loadgen.config import LoadConfig, seed_user_index
    from scalesim.loadgen.stats import IntervalRecorder, WindowRecorder

logger = logging.getLogger("scalesim.locust")

CONFIG = LoadConfig.from_env()
RECORDER = WindowRecorder(relative_error=CONFIG.relative_error)
INTERVAL = IntervalRecorder(relative_error=CONFIG.relative_error)
ACKS = AckLog(folder=CONFIG.acks_dir, name=str(os.getpid()))

#: Locust keeps per-second counters and a chart history that grow with the run; trimmed to these
LOCUST_PER_SECOND_KEEP_S = 120
LOCUST_HISTORY_KEEP = 1000

_DIGITS = re.compile(r"\d+")
_EXPECTED_RENT_ANSWERS = (409,)


# ---------------------------------------------------------------------------------------------
# shared catalog knowledge (bounded): which book ids exist, how many pages a category has


class BookPool:
    """Book ids seen in catalog pages, at most *capacity* of them (random replacement)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._ids: list[int] = []
        self._known: set[int] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, book_id: int) -> None:
        if book_id in self._known:
            return
        if len(self._ids) < self.capacity:
            self._ids.append(book_id)
        else:
            slot = random.randrange(self.capacity)
            self._known.discard(self._ids[slot])
            self._ids[slot] = book_id
        self._known.add(book_id)

    def pick(self) -> int | None:
        return random.choice(self._ids) if self._ids else None


BOOKS = BookPool()
#: category ("" = all) -> pages, from the ``total`` of the catalog answers
CATALOG_PAGES: dict[str, int] = {}
_slots = 0


def _next_slot(environment: Any) -> int:
    """A process-unique counter, interleaved across workers so that slots never collide."""
    global _slots
    local = _slots
    _slots += 1
    workers = max(1, CONFIG.workers)
    index = max(0, int(getattr(environment.runner, "worker_index", 0) or 0))
    return local * workers + index % workers


def _reason(resp: Any) -> str:
    """A failure message with bounded variety (ids and numbers folded to '#')."""
    try:
        status = resp.status_code
        if not status:
            err = getattr(resp, "error", None)
            return f"{type(err).__name__}: {err}"[:160]
        detail = ""
        try:
            body = resp.json()
            if isinstance(body, dict) and body.get("error"):
                detail = " " + _DIGITS.sub("#", str(body["error"]))[:120]
        except Exception:
            pass
        return f"HTTP {status}{detail}"
    except Exception as exc:  # never let the bookkeeping break a user
        return f"unreadable answer ({type(exc).__name__})"


# ---------------------------------------------------------------------------------------------
# the users


class _ScalesimUser(FastHttpUser):
    abstract = True
    network_timeout = CONFIG.request_timeout_s
    connection_timeout = CONFIG.request_timeout_s
    token: str | None = None

    def call(
        self,
        method: str,
        path: str,
        *,
        name: str,
        json_body: Any = None,
        ok: tuple[int, ...] = (200,),
        expected: tuple[int, ...] = (),
        idempotent: bool = False,
    ) -> tuple[int, Any]:
        """Send one request and judge it: ``(status, body)``; body is ``None`` unless ``ok``.

        Statuses in *expected* are business answers: successes, counted as rejections.
        A 401 drops the token (the next task logs in again). An *idempotent* write carries a fresh
        ``Idempotency-Key``, as a careful client sends: the balancer may then retry it on another
        app server when the first one dies with the request in hand.
        """
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if idempotent:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        with self.client.request(method, path, name=name, json=json_body, headers=headers, catch_response=True) as resp:
            status = resp.status_code or 0
            if status in ok:
                try:
                    body = resp.json() if resp.content else {}
                except ValueError:
                    resp.failure("answer is not JSON")
                    return status, None
                resp.success()
                return status, body
            if status in expected:
                resp.success()
                RECORDER.reject(f"{method} {name}: {status}")
                return status, None
            if status == 401:
                self.token = None
            resp.failure(_reason(resp))
            return status, None


def browse_catalog(user: BookRentalUser) -> None:
    if user.categories is None:
        _, body = user.call("GET", "/api/categories", name="/api/categories")
        if isinstance(body, dict):
            user.categories = [str(c) for c in body.get("items", [])]
    category = ""
    if user.categories and random.random() < 0.8:
        category = random.choice(user.categories)
    page = random.randint(1, CATALOG_PAGES.get(category, 1))
    query = f"?page={page}&per_page={CONFIG.per_page}"
    if category:
        query += f"&category={quote(category)}"
    _, body = user.call("GET", "/api/books" + query, name="/api/books")
    if not isinstance(body, dict):
        return
    for item in body.get("items", []):
        if isinstance(item, dict) and "id" in item:
            BOOKS.add(int(item["id"]))
    total = body.get("total")
    if isinstance(total, int) and (category in CATALOG_PAGES or len(CATALOG_PAGES) < 1000):
        CATALOG_PAGES[category] = max(1, math.ceil(total / CONFIG.per_page))


def view_book(user: BookRentalUser) -> None:
    book_id = BOOKS.pick()
    if book_id is None:  # nothing seen yet: a user looks at the catalog first
        browse_catalog(user)
        return
    user.call("GET", f"/api/books/{book_id}", name="/api/books/{id}")


def profile(user: BookRentalUser) -> None:
    if user.logged_in():
        user.call("GET", "/api/profile", name="/api/profile")


def my_rentals(user: BookRentalUser) -> None:
    if user.logged_in():
        user.call("GET", f"/api/users/{user.user_id}/rentals", name="/api/users/{id}/rentals")


def charges(user: BookRentalUser) -> None:
    if user.logged_in():
        user.call("GET", f"/api/users/{user.user_id}/charges", name="/api/users/{id}/charges")


def rent_and_return(user: BookRentalUser) -> None:
    if not user.logged_in():
        return
    book_id = BOOKS.pick()
    if book_id is None:
        browse_catalog(user)
        return
    status, rental = user.call(
        "POST",
        "/api/rentals",
        name="/api/rentals",
        json_body={"book_id": book_id},
        ok=(200, 201),
        expected=_EXPECTED_RENT_ANSWERS,
        idempotent=True,
    )
    if not (isinstance(rental, dict) and "id" in rental):
        return
    rental_id = int(rental["id"])
    if status == 201 and user.user_id is not None:
        ACKS.rented(rental_id=rental_id, user_id=user.user_id, book_id=book_id)
    status, _ = user.call("POST", f"/api/rentals/{rental_id}/return", name="/api/rentals/{id}/return",
                          idempotent=True)
    if status == 200:
        ACKS.returned(rental_id=rental_id)


TASK_FUNCTIONS = {
    "browse_catalog": browse_catalog,
    "view_book": view_book,
    "profile": profile,
    "my_rentals": my_rentals,
    "charges": charges,
    "rent_and_return": rent_and_return,
}


class BookRentalUser(_ScalesimUser):
    """One of the app's users: logs in once, then browses, looks, rents and returns."""

    abstract = CONFIG.fixed_path is not None
    wait_time = between(CONFIG.think_min_s, CONFIG.think_max_s)
    tasks = {TASK_FUNCTIONS[name]: weight for name, weight in CONFIG.integer_mix().items()}  # type: ignore[assignment]

    def on_start(self) -> None:
        self.seed_index = seed_user_index(_next_slot(self.environment), CONFIG.seeded_users)
        self.token = None
        self.user_id: int | None = None
        self.categories: list[str] | None = None
        self.login()

    def login(self) -> bool:
        i = self.seed_index
        _, body = self.call(
            "POST",
            "/api/login",
            name="/api/login",
            json_body={"email": f"user{i}@example.com", "password": f"password{i}"},
        )
        if isinstance(body, dict) and body.get("token"):
            self.token = str(body["token"])
            self.user_id = int((body.get("user") or {}).get("id", i))
            return True
        return False

    def logged_in(self) -> bool:
        """Log in again if the session was lost (a 401) or login failed before."""
        return bool(self.token) or self.login()


class EndpointUser(_ScalesimUser):
    """Benchmark mode (``fixed_path`` set): GET one path, no login, e.g. to compare with wrk."""

    abstract = CONFIG.fixed_path is None
    wait_time = between(CONFIG.think_min_s, CONFIG.think_max_s)

    def fetch(self) -> None:
        path = CONFIG.fixed_path or "/"
        self.call("GET", path, name=path)

    tasks = [fetch]


# ---------------------------------------------------------------------------------------------
# events out of the process


class EventSink:
    """Writes one JSON object per line to the driver's pipe, a file, or the log.

    If the reader has gone (the driver died), Locust is told to quit: a load test nobody
    watches should not go on.
    """

    def __init__(self, config: LoadConfig, environment: Any) -> None:
        self.environment = environment
        self._fd: int | None = None
        self._owns_fd = False
        if config.events_fd is not None:
            self._fd = config.events_fd
        elif config.events_path:
            self._fd = os.open(config.events_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._owns_fd = True
        self.broken = False

    def emit(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, "time": round(time.time(), 4), **data}, separators=(",", ":"))
        if self._fd is None:
            logger.info("scalesim event %s", line)
            return
        if self.broken:
            return
        payload = (line + "\n").encode()
        try:
            while payload:
                written = os.write(self._fd, payload)
                payload = payload[written:]
        except OSError as exc:  # EPIPE: the driver is gone
            self.broken = True
            logger.error("event pipe closed (%s): quitting", exc)
            runner = self.environment.runner
            if runner is not None:
                gevent.spawn(runner.quit)

    def close(self) -> None:
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------------------------------
# the step timeline (master or local process)


def _trim_locust_memory(environment: Any) -> None:
    """Cap Locust's own per-second counters and chart history so memory stays flat."""
    runner = environment.runner
    stats = getattr(runner, "stats", None)
    if stats is None:
        return
    cutoff = int(time.time()) - LOCUST_PER_SECOND_KEEP_S
    try:
        for entry in (stats.total, *stats.entries.values()):
            for per_second in (entry.num_reqs_per_sec, entry.num_fail_per_sec):
                for second in [s for s in per_second if s < cutoff]:
                    del per_second[second]
        if len(stats.history) > LOCUST_HISTORY_KEEP:
            del stats.history[: len(stats.history) - LOCUST_HISTORY_KEEP]
    except (AttributeError, TypeError, RuntimeError):  # a Locust version with other internals
        pass


class StepController:
    """Keeps the step timeline and reports it; :class:`SteppedShape` follows its target."""

    def __init__(self, environment: Any, config: LoadConfig, sink: EventSink) -> None:
        self.environment = environment
        self.config = config
        self.sink = sink
        self.distributed = isinstance(environment.runner, MasterRunner)
        self.step = -1
        self.phase = "starting"
        self.target = config.steps[0]
        self.finished = False
        self.done_sent = False
        self.started = False
        self.steps_completed = 0
        self._step_failures_base = 0
        self._started = time.monotonic()  # run_start: the origin of the progress events' ``t``
        # the progress interval: this process's own requests, or what the workers sent since the last tick
        self._interval = IntervalRecorder(relative_error=config.relative_error)
        # distributed mode: per-worker lifetime counters and window replies
        self._worker_counts: dict[str, tuple[int, int]] = {}
        self._collect_seq = 0
        self._replies: dict[str, Any] = {}
        self._replies_ready = gevent.event.Event()

    # -- what the shape asks -----------------------------------------------------------------

    def begin(self) -> None:
        if self.started:
            return
        self.started = True
        self._enter_step(0)
        gevent.spawn(self._run_guarded)

    def tick(self) -> tuple[int, float] | None:
        if self.finished:
            return None
        return self.target, self.config.spawn_rate

    # -- counters ----------------------------------------------------------------------------

    @property
    def runner(self) -> Any:
        return self.environment.runner

    def lifetime_counts(self) -> tuple[int, int]:
        if self.distributed:
            counts = list(self._worker_counts.values())
            return sum(c[0] for c in counts), sum(c[1] for c in counts)
        return RECORDER.lifetime_requests, RECORDER.lifetime_failures

    def users_now(self) -> int:
        return int(self.runner.user_count or 0)

    # -- the timeline ------------------------------------------------------------------------

    def _enter_step(self, index: int) -> None:
        self.step = index
        self.target = self.config.steps[index]
        self.phase = "ramp"
        self._step_failures_base = self.lifetime_counts()[1]
        self.sink.emit("step_start", step=index, users=self.target, steps=len(self.config.steps))

    def _run_guarded(self) -> None:
        try:
            self._run()
        except gevent.GreenletExit:
            raise
        except Exception as exc:
            logger.exception("step controller failed")
            self.sink.emit("error", message=f"step controller failed: {type(exc).__name__}: {exc}")
        finally:
            self.finished = True

    def _run(self) -> None:
        cfg = self.config
        previous = 0
        for index, users in enumerate(cfg.steps):
            if index:
                self._enter_step(index)
            self._wait_for_users(previous, users)
            self.phase = "warmup"
            gevent.sleep(cfg.warmup_seconds)
            self._open_window(index, users)
            opened = time.monotonic()
            started_at = time.time()
            gevent.sleep(max(0.0, opened + cfg.step_seconds - time.monotonic()))
            ended_at = time.time()
            window_s = time.monotonic() - opened
            self.phase = "collect"
            recorder, reporting = self._close_window()
            step = recorder.step_stats(
                index=index, users=users, window_s=window_s, started_at=started_at, ended_at=ended_at
            )
            event = step.to_dict()
            event.pop("index")
            self.sink.emit("step_end", step=index, users_actual=self.users_now(), workers_reporting=reporting, **event)
            self.steps_completed = index + 1
            previous = users
        self.phase = "done"
        self.finished = True
        self.done_sent = True
        self.sink.emit("done", complete=True, steps_completed=self.steps_completed)

    def _wait_for_users(self, previous: int, users: int) -> None:
        deadline = time.monotonic() + self.config.ramp_timeout_s(previous, users)
        while time.monotonic() < deadline:
            if self.users_now() == users and self.runner.state not in ("spawning", "ready", "stopped"):
                return
            gevent.sleep(0.1)
        self.sink.emit(
            "warning",
            step=self.step,
            message=f"step {self.step}: reached {self.users_now()} of {users} users in time; measuring anyway",
        )

    def _open_window(self, index: int, users: int) -> None:
        if self.distributed:
            self.runner.send_message("scalesim_reset", {"step": index})
        RECORDER.reset()
        self.phase = "measure"
        self.sink.emit("measure_start", step=index, users=users, users_actual=self.users_now())

    def _close_window(self) -> tuple[WindowRecorder, int]:
        if not self.distributed:
            return RECORDER, 1
        self._collect_seq += 1
        self._replies = {}
        self._replies_ready.clear()
        expected = self.runner.worker_count
        self.runner.send_message("scalesim_collect", {"seq": self._collect_seq})
        self._replies_ready.wait(timeout=self.config.collect_timeout_s)
        merged = WindowRecorder(relative_error=self.config.relative_error)
        for snapshot in self._replies.values():
            merged.merge_snapshot(snapshot)
        if len(self._replies) < expected:
            self.sink.emit(
                "warning",
                step=self.step,
                message=f"step {self.step}: window data from {len(self._replies)} of {expected} workers",
            )
        return merged, len(self._replies)

    # -- master-side message handlers ----------------------------------------------------------

    def on_window(self, environment: Any, msg: Any, **_: Any) -> None:
        data = msg.data or {}
        if data.get("seq") != self._collect_seq:
            return
        self._replies[msg.node_id] = data["snapshot"]
        if len(self._replies) >= self.runner.worker_count:
            self._replies_ready.set()

    def on_counts(self, environment: Any, msg: Any, **_: Any) -> None:
        data = msg.data or {}
        self._worker_counts[msg.node_id] = (int(data.get("requests", 0)), int(data.get("failures", 0)))
        if data.get("interval"):
            self._interval.merge_snapshot(data["interval"])

    # -- progress ------------------------------------------------------------------------------

    def progress_loop(self) -> None:
        """A ``progress`` event every interval, for the whole run: the per-second timeline.

        It must keep coming while every request fails (a server killed mid-run), so nothing in
        one tick may end the loop.
        """
        interval = self.config.progress_interval_s
        last_t = time.monotonic()
        last_requests, _ = self.lifetime_counts()
        while True:
            gevent.sleep(interval)
            try:
                last_t, last_requests = self._progress(last_t, last_requests)
            except Exception:
                logger.exception("progress tick failed")
            _trim_locust_memory(self.environment)

    def _progress(self, last_t: float, last_requests: int) -> tuple[float, int]:
        now = time.monotonic()
        requests, failures = self.lifetime_counts()
        rps = (requests - last_requests) / (now - last_t) if now > last_t else 0.0
        if not self.distributed:
            self._interval.merge_snapshot(INTERVAL.take())
        figures = self._interval.summary()
        self._interval.take()
        self.sink.emit(
            "progress",
            step=self.step,
            phase=self.phase,
            users=self.users_now(),
            t=round(now - self._started, 3),
            rps=round(rps, 2),
            failures=failures - self._step_failures_base,
            **figures,
        )
        return now, requests


CONTROLLER: StepController | None = None
SINK: EventSink | None = None


class SteppedShape(LoadTestShape):
    """The ``steps`` staircase; the timeline itself lives in :class:`StepController`."""

    def tick(self) -> tuple[int, float] | None:
        if CONTROLLER is None:
            return None
        CONTROLLER.begin()
        return CONTROLLER.tick()


# ---------------------------------------------------------------------------------------------
# wiring


@events.request.add_listener
def _on_request(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    error = None
    if exception is not None:
        error = str(exception) or type(exception).__name__
        if len(error) > 200:
            error = error[:200]
    RECORDER.record(request_type, name, float(response_time or 0.0), error)
    INTERVAL.record(float(response_time or 0.0), failed=error is not None,
                    reason=None if error is None else f"{request_type} {name}: {error}")


def _worker_setup(environment: Any) -> None:
    runner = environment.runner

    def on_reset(environment: Any, msg: Any, **_: Any) -> None:
        RECORDER.reset()

    def on_collect(environment: Any, msg: Any, **_: Any) -> None:
        snapshot = RECORDER.snapshot()
        RECORDER.reset()
        runner.send_message("scalesim_window", {"seq": (msg.data or {}).get("seq"), "snapshot": snapshot})

    def push_counts() -> None:
        while True:
            gevent.sleep(CONFIG.progress_interval_s)
            try:
                counts = {"requests": RECORDER.lifetime_requests, "failures": RECORDER.lifetime_failures}
                runner.send_message("scalesim_counts", {**counts, "interval": INTERVAL.take()})
            except Exception as exc:  # not connected yet, or the master is gone
                logger.debug("could not send counts: %s", exc)

    runner.register_message("scalesim_reset", on_reset)
    runner.register_message("scalesim_collect", on_collect)
    gevent.spawn(push_counts)


def _flush_acks() -> None:
    try:
        ACKS.flush()
    except OSError as exc:  # they stay in memory: the next flush (or the one at exit) tries again
        logger.error("could not write acknowledged writes to %s: %s", ACKS.path, exc)


def _flush_acks_loop() -> None:
    while True:
        gevent.sleep(CONFIG.acks_flush_s)
        _flush_acks()


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    global CONTROLLER, SINK
    runner = environment.runner
    if CONFIG.acks_dir and not isinstance(runner, MasterRunner):  # the master makes no requests
        gevent.spawn(_flush_acks_loop)
        atexit.register(_flush_acks)
    if isinstance(runner, WorkerRunner):
        _worker_setup(environment)
        return
    if runner is None:
        return
    SINK = EventSink(CONFIG, environment)
    CONTROLLER = StepController(environment, CONFIG, SINK)
    if isinstance(runner, MasterRunner):
        runner.register_message("scalesim_window", CONTROLLER.on_window)
        runner.register_message("scalesim_counts", CONTROLLER.on_counts)
    gevent.spawn(CONTROLLER.progress_loop)
    SINK.emit(
        "run_start",
        pid=os.getpid(),
        steps=list(CONFIG.steps),
        workers=CONFIG.workers,
        step_seconds=CONFIG.step_seconds,
        warmup_seconds=CONFIG.warmup_seconds,
        spawn_rate=CONFIG.spawn_rate,
        host=environment.host,
    )


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    _flush_acks()
    if CONTROLLER is None or SINK is None:
        return
    if not CONTROLLER.done_sent:
        CONTROLLER.done_sent = True
        SINK.emit("done", complete=False, steps_completed=CONTROLLER.steps_completed)
    SINK.close()
