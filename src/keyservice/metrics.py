"""Prometheus metrics, off unless KEYSERVICE_METRICS_PORT is set.

What is counted (README "Metrics"): token requests by grant type and outcome, the token
endpoint's latency by grant type, HTTP requests by route template and status class, and
the failures of what runs beside the requests (an audit event of a refusal that could not
be written, a revocation-view reload, a periodic prune). Label values come from fixed
sets only: the grants this service knows, its OAuth error codes, its route templates.
Never a raw path, a client id, a key id, a username or an address: each new value is a
new series kept for the life of the process, and a path or a client id may be a secret
pasted in the wrong place.

The metrics are served on a listener of their own (`MetricsListener`, plain HTTP,
`GET /metrics`, the text exposition format), so that the API's port never shows them; the
default address is loopback. A single process (`serve --workers 1`) serves its own from a
thread. With several workers each writes its values to files in a directory private to
this run of the server (prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`
set by the parent for the workers it starts) and the parent, which answers no API
requests, serves their sum (`parent_registry`).

When the metrics are off nothing here is imported: the app's `metrics` is None, and the
token path and the edge check that and nothing else.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyservice.exceptions import KeyServiceError, SlowDown

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PATH = "/metrics"
# The grants of auth/router.py; anything else a client sends (none, a typo) is "other".
GRANT_TYPES = ("client_credentials", "refresh_token", "password")
OTHER_GRANT = "other"
# An exchange signs one JWT (~1 ms); a password sign-in runs a slow hash (~0.1-0.5 s).
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BACKGROUND_TASKS = ("revocation_reload", "prune")
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def multiprocess_dir() -> str | None:
    """The directory this process writes its values to, if it is one of several workers."""
    return os.environ.get(MULTIPROC_ENV) or None


# The OAuth error codes of the edge's refusals (main.py), by status; any other is a 400.
_EDGE_ERRORS = {413: "request_too_large", 431: "request_header_fields_too_large"}


def outcome(exc: BaseException) -> tuple[str, str]:
    """(outcome, error) of a refused token request: "refused", "throttled" or "failed"
    (the server's fault: 5xx), and the OAuth error code of the answer."""
    if isinstance(exc, SlowDown):
        return "throttled", exc.error
    if isinstance(exc, KeyServiceError):
        return ("failed" if exc.status_code >= 500 else "refused"), exc.error
    if isinstance(exc, StarletteHTTPException):  # the edge's checks (main.py)
        return "refused", _EDGE_ERRORS.get(exc.status_code, "invalid_request")
    from keyservice.main import _is_db_outage

    return "failed", "temporarily_unavailable" if _is_db_outage(exc) else "server_error"


class Metrics:
    """The service's metrics, in a registry of their own (tests build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_dir() is not None
        self.token_requests = Counter(
            "keyservice_token_requests",
            "POST /token requests by grant type and outcome (issued, refused, throttled, "
            "failed) with the OAuth error code of a refusal.",
            ["grant_type", "outcome", "error"],
            registry=self.registry,
        )
        self.token_seconds = Histogram(
            "keyservice_token_request_duration_seconds",
            "Time to answer POST /token, whatever the answer, by grant type.",
            ["grant_type"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "keyservice_http_requests",
            "HTTP requests of the API by route template and status class.",
            ["route", "status"],
            registry=self.registry,
        )
        self.audit_write_failures = Counter(
            "keyservice_audit_write_failures",
            "Audit events of refused requests that could not be written (the refusal was "
            "answered all the same; the log says which).",
            registry=self.registry,
        )
        self.background_failures = Counter(
            "keyservice_background_failures",
            "Failed rounds of a background task: revocation_reload (the revocation view "
            "kept its last state) or prune.",
            ["task"],
            registry=self.registry,
        )
        # Label children looked up once: .labels() takes a lock and builds a key each time.
        self._token_counts: dict[tuple[str, str, str], Any] = {}
        self._token_times = {
            grant: self.token_seconds.labels(grant) for grant in (*GRANT_TYPES, OTHER_GRANT)
        }
        self._http: dict[tuple[str, int], Any] = {}
        # Series that alerts divide by or compare against are there from the start, at 0.
        for grant in GRANT_TYPES:
            self._token_count(grant, "issued", "")
        for task in BACKGROUND_TASKS:
            self.background_failures.labels(task)

    def _token_count(self, grant: str, outcome: str, error: str) -> Any:
        key = (grant, outcome, error)
        child = self._token_counts.get(key)
        if child is None:
            child = self._token_counts[key] = self.token_requests.labels(grant, outcome, error)
        return child

    def token(self, grant_type: str | None, seconds: float, exc: BaseException | None) -> None:
        """Count one answer of POST /token; `exc` is what refused it, None if issued."""
        grant = grant_type if grant_type in GRANT_TYPES else OTHER_GRANT
        if exc is None:
            self._token_count(grant, "issued", "").inc()
        else:
            self._token_count(grant, *outcome(exc)).inc()
        self._token_times[grant].observe(seconds)

    def http(self, route: str, status: int) -> None:
        """Count one HTTP answer; `route` is a template of the app's table or "unmatched"."""
        key = (route, status // 100)
        child = self._http.get(key)
        if child is None:
            status_class = _STATUS_CLASSES[key[1] - 1] if 1 <= key[1] <= 5 else "other"
            child = self._http[key] = self.http_requests.labels(route, status_class)
        child.inc()

    def background_failure(self, task: str) -> None:
        self.background_failures.labels(task).inc()

    def audit_write_failure(self) -> None:
        self.audit_write_failures.inc()


# The listener -------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Log nothing: a scrape every few seconds is not news."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _only_metrics(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """prometheus_client's WSGI app answers every path: here GET /metrics only, and HEAD.

    Its app takes GET alone (a HEAD was a 405): a HEAD is answered as the GET, with the
    GET's status and headers, Content-Length included, and no body (RFC 9110 §9.3.2), as
    the API's edge answers its routes (main._headers_only); wsgiref sends whatever body
    it is given, so none is given. Its `Allow` (a 405, OPTIONS) names HEAD too.
    """

    def paths(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Not found: the metrics are at /metrics\n"]
        return app(environ, start_response)

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        answered: list[tuple[str, list[tuple[str, str]]]] = []

        def keep(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
            allow = "OPTIONS, GET, HEAD"  # on its 405 and its OPTIONS, where it said GET
            answered.append(
                (status, [(n, allow if n.lower() == "allow" else v) for n, v in headers])
            )
            return lambda _data: None  # the legacy write(): neither app uses it

        head = environ.get("REQUEST_METHOD") == "HEAD"
        body = b"".join(paths({**environ, "REQUEST_METHOD": "GET"} if head else environ, keep))
        status, headers = answered[0]
        if head:
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return []
        start_response(status, headers)
        return [body]

    return wsgi


class MetricsListener:
    """`GET /metrics` (and HEAD) on host:port, served from a daemon thread until `close()`."""

    def __init__(self, registry: Collector, *, host: str, port: int) -> None:
        family, _type, _proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(_ThreadingServer):
            address_family = family

        self.server = make_server(
            str(address[0]),
            port,
            _only_metrics(make_wsgi_app(registry)),
            server_class=Server,
            handler_class=_QuietHandler,
        )
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="keyservice-metrics", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# Several workers: the parent's side -----------------------------------------------------


class _Restarts(Collector):
    """keyservice_worker_restarts_total, kept by the parent (workers.Supervisor)."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "keyservice_worker_restarts",
            "Worker processes that exited unasked and were replaced (serve --workers N).",
        )
        family.add_metric([], self.count)
        yield family


class WorkerMetrics:
    """The parent's part with several workers: the private directory and the listener.

    A fresh directory per run (mkdtemp: private to this user, 0700), made before any
    worker starts and removed when the server stops, so that no count of an earlier run,
    or of another server on this machine, is ever added in. The values of a worker that
    exited stay (its counts happened); `worker_exited()` drops what prometheus_client
    keeps only for live processes.
    """

    def __init__(self, *, host: str, port: int) -> None:
        self.directory = tempfile.mkdtemp(prefix="keyservice-metrics-")
        self.restarts = _Restarts()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        registry.register(self.restarts)
        self.listener: MetricsListener | None = None
        try:
            self.listener = MetricsListener(registry, host=host, port=port)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        # The workers are spawned with this environment: their values go to the directory.
        os.environ[MULTIPROC_ENV] = self.directory

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    def worker_exited(self, pid: int | None, *, replaced: bool) -> None:
        if pid is not None:
            mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
        if replaced:
            self.restarts.count += 1

    def close(self) -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        if self.listener is not None:
            self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)
