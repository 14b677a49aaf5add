"""The load generator: many users at a target request rate, with the write ledger.

``run_load(LoadOptions(url=..., rps=..., duration=...))`` sends requests on an open-loop
schedule -- request *i* is due at ``start + i / rps`` whether or not earlier ones have
answered, so a slow server meets a growing queue instead of a politely slowing client -- and
measures each latency from the moment the request was *due* (no coordinated omission). When
more than ``max_inflight`` requests are outstanding, due requests are counted as ``dropped``
rather than silently slowing the rate.

Each virtual user has its own ``X-User-Id`` header (the cohort a sticky router keys on) and its
own cookie jar, and walks the reference app's critical paths with a realistic mix (~70 % reads,
one of which -- ``GET /rate-limits/{key}`` -- writes). Every write is recorded in the ledger
(:mod:`pgshift.demo.ledger`) with the values the app acknowledged.

Above ~1,500 requests/s the rate is split across worker processes (one per core); they append
to one ledger and stream per-second figures to the parent, which prints them.

The HTTP client is :mod:`pgshift.demo.load_http` (why not httpx: see there), the request mix
:mod:`pgshift.demo.load_workload`, the options and figures :mod:`pgshift.demo.load_options`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue as queue_mod
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgshift.demo.ledger import Entry, LedgerWriter
from pgshift.demo.load_http import HttpClient
from pgshift.demo.load_options import LoadOptions, LoadSummary, Window, rate_limit_keys
from pgshift.demo.load_workload import Workload
from pgshift.errors import UsageError

__all__ = ["HttpClient", "LoadOptions", "LoadSummary", "Window", "rate_limit_keys", "run_load"]


def _setup(opts: LoadOptions, ledger: LedgerWriter | None) -> None:
    """Give every rate-limit key of the run a known initial value (recorded in the ledger)."""
    import httpx

    try:
        with httpx.Client(base_url=opts.url, timeout=opts.timeout, trust_env=False) as client:
            for i, key in enumerate(rate_limit_keys(opts)):
                # Most keys are generous; one in four runs dry so 429s happen too.
                remaining = 200 if i % 4 == 3 else 1_000_000
                sent = time.time()
                r = client.put(f"/rate-limits/{key}",
                               json={"remaining": remaining, "limit_total": remaining})
                ts = time.time()
                if r.status_code // 100 != 2:
                    raise UsageError(f"{opts.url} answered {r.status_code} to the setup "
                                     f"request PUT /rate-limits/{key}",
                                     hint="point --url at the pgshift reference app "
                                          "(python -m pgshift.demo.app)")
                if ledger is not None:
                    try:
                        response = r.json()
                    except ValueError:
                        response = None
                    ledger.record(Entry(op="rate_limit.set", table="rate_limits", key=key,
                                        sent=sent, ts=ts, values={"remaining": remaining,
                                                                  "limit_total": remaining},
                                        status=r.status_code, response=response,
                                        served_by=r.headers.get("x-pgshift-served-by")))
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach {opts.url}: {exc}",
                         hint="start the app first: python -m pgshift.demo.app --port 8000"
                         ) from exc
    if ledger is not None:
        ledger.flush()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()


def _run_worker(opts: LoadOptions, index: int, n_workers: int, stop: Callable[[], bool],
                report: Callable[[Window], None]) -> Window:
    ledger = LedgerWriter(opts.ledger) if opts.ledger is not None else None
    try:
        work = Workload(opts, index, n_workers, ledger)
        loop = _new_loop()
        try:
            return loop.run_until_complete(work.drive(opts.rps / n_workers, opts.duration,
                                                      stop, report))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    finally:
        if ledger is not None:
            ledger.close()


_WORKER_CODE = "from pgshift.demo.load import _worker_main; _worker_main()"


def _worker_main() -> None:
    """A worker process: options on the first stdin line, figures as JSON lines on stdout.

    Any further stdin line (or its end) stops it. A plain child interpreter rather than
    multiprocessing, whose spawn start re-imports the caller's ``__main__``.
    """
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    spec = json.loads(sys.stdin.readline())
    index, n_workers = int(spec["index"]), int(spec["workers"])
    raw = spec["opts"]
    opts = LoadOptions(**{**raw, "ledger": Path(raw["ledger"]) if raw["ledger"] else None})
    stop = threading.Event()

    def watch() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()
    lock = threading.Lock()

    def emit(kind: str, payload: Any) -> None:
        with lock:
            sys.stdout.write(json.dumps([kind, index, payload]) + "\n")
            sys.stdout.flush()

    try:
        total = _run_worker(opts, index, n_workers, stop.is_set,
                            lambda w: emit("window", w.to_msg()))
        emit("final", total.to_msg())
    except BaseException as exc:
        emit("error", f"{type(exc).__name__}: {exc}")


def run_load(opts: LoadOptions, *, on_second: Callable[[Window], None] | None = None,
             stop: threading.Event | None = None) -> LoadSummary:
    """Run the load until ``opts.duration`` passes or ``stop`` is set; return the summary.

    ``on_second`` receives the figures of each second (summed over worker processes).
    """
    opts.validate()
    n = opts.worker_count()
    report = on_second or (lambda w: None)
    setup_ledger = LedgerWriter(opts.ledger) if opts.ledger is not None else None
    try:
        _setup(opts, setup_ledger)
    finally:
        if setup_ledger is not None:
            setup_ledger.close()
    started = time.monotonic()
    stop_flag = stop or threading.Event()
    if n == 1:
        total = _run_worker(opts, 0, 1, stop_flag.is_set, report)
    else:
        total = _run_processes(opts, n, report, stop_flag)
    # From the first request to the last answer (in-flight requests drained at the end are
    # counted, so the time they took is too: an overloaded server is not flattered).
    seconds = total.seconds or (time.monotonic() - started)
    return LoadSummary(url=opts.url, target_rps=opts.rps, seconds=seconds, workers=n,
                       users=opts.users, total=total,
                       ledger=str(opts.ledger) if opts.ledger else None, run_id=opts.run_id)


def _run_processes(opts: LoadOptions, n: int, report: Callable[[Window], None],
                   stop: threading.Event) -> Window:
    import subprocess
    import sys

    out: queue_mod.Queue[list[Any] | None] = queue_mod.Queue()
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                out.put(json.loads(line))
            except ValueError:
                continue
        out.put(None)

    spec_opts = {**opts.__dict__, "ledger": str(opts.ledger) if opts.ledger else None}
    total = Window()
    finals: dict[int, Window] = {}
    errors: list[str] = []
    try:
        for i in range(n):
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, bufsize=1)
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"index": i, "workers": n, "opts": spec_opts}) + "\n")
            proc.stdin.flush()
            t = threading.Thread(target=read, args=(proc,), name=f"load-reader-{i}", daemon=True)
            t.start()
            readers.append(t)
        pending, reported, last, ended = Window(), 0, time.monotonic(), 0
        stopped = False
        while ended < n:
            if stop.is_set() and not stopped:
                stopped = True
                _stop_workers(procs)
            try:
                msg = out.get(timeout=0.2)
            except queue_mod.Empty:
                continue
            if msg is None:
                ended += 1
                continue
            kind, index, payload = msg
            if kind == "window":
                pending.merge(Window.from_msg(payload))
                reported += 1
                if reported >= n or time.monotonic() - last > 1.2:
                    pending.seconds = 1.0
                    report(pending)
                    pending, reported, last = Window(), 0, time.monotonic()
            elif kind == "final":
                finals[index] = Window.from_msg(payload)
            else:
                errors.append(str(payload))
    finally:
        _stop_workers(procs)
        for proc in procs:
            try:
                proc.wait(timeout=opts.timeout + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for t in readers:
            t.join(timeout=5)
    if errors:
        raise RuntimeError(f"load worker failed: {errors[0]}")
    if len(finals) < n:
        raise RuntimeError(f"{n - len(finals)} load worker(s) ended without a summary")
    for w in finals.values():
        total.merge(w)
    total.seconds = max((w.seconds for w in finals.values()), default=0.0)
    return total


def _stop_workers(procs: list[Any]) -> None:
    for proc in procs:
        if proc.stdin is None or proc.stdin.closed:
            continue
        try:
            proc.stdin.write("stop\n")
        except (OSError, ValueError):  # the worker already ended
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
