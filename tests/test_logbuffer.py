"""The server's log handler writes lines in batches, in order, and loses none it was given."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from keyservice.logbuffer import BatchingStreamHandler, JsonFormatter


@pytest.fixture
def logger():
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=0.2, max_lines=5)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"keyservice.test.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, stream, handler
    log.removeHandler(handler)


def _wait_for(stream: io.StringIO, text: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while text not in stream.getvalue():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_info_lines_wait_for_the_interval_then_are_written(logger):
    log, stream, _ = logger
    log.info("GET /healthz 200")
    assert stream.getvalue() == ""  # not one write per line
    assert _wait_for(stream, "INFO GET /healthz 200\n", seconds=5)


def test_a_warning_writes_what_waits_first_and_keeps_the_order(logger):
    log, stream, _ = logger
    log.info("first")
    log.debug("second")
    log.warning("database unavailable")
    assert stream.getvalue() == "INFO first\nDEBUG second\nWARNING database unavailable\n"


def test_a_full_buffer_is_written_at_once(logger):
    log, stream, _ = logger
    for number in range(4):
        log.info("line %d", number)
    assert stream.getvalue() == ""
    log.info("line 4")
    assert stream.getvalue() == "".join(f"INFO line {n}\n" for n in range(5))


def test_flush_writes_everything_left(logger):
    log, stream, handler = logger
    log.info("last words")
    handler.flush()
    assert stream.getvalue() == "INFO last words\n"
    handler.flush()  # nothing waits: nothing written twice
    assert stream.getvalue() == "INFO last words\n"


def test_a_broken_stream_does_not_break_the_caller(logger):
    log, stream, handler = logger
    log.info("lost")
    stream.close()
    handler.flush()  # no exception into the request that logged
    log.warning("also lost")


async def test_the_app_writes_waiting_lines_when_it_shuts_down(context):
    # A single-process server ends by re-raising SIGTERM, which skips logging's atexit
    # hook: the lifespan's end must write what waits, or the last access lines are lost.
    from keyservice.main import create_app
    from tests.conftest import client_for

    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=3600)  # never by the timer here
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root, access = logging.getLogger(), logging.getLogger("keyservice.access")
    previous = access.level
    root.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        application = create_app(context=context)
        async with application.router.lifespan_context(application):
            async with client_for(application) as http:
                assert (await http.get("/healthz")).status_code == 200
            assert "GET /healthz 200" not in stream.getvalue()
        assert "keyservice.access: GET /healthz 200" in stream.getvalue()
    finally:
        root.removeHandler(handler)
        access.setLevel(previous)


def _record(name: str, msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("the database said no")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, exc_info)


def test_json_lines_are_one_object_each_with_the_access_logs_fields():
    formatter = JsonFormatter()
    access = json.loads(
        formatter.format(_record("keyservice.access", "%s %s %s %.1fms", "GET", "/me", 200, 1.26))
    )
    assert access["logger"] == "keyservice.access" and access["level"] == "INFO"
    assert access["message"] == "GET /me 200 1.3ms"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/me", 200)
    assert access["duration_ms"] == 1.3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["time"])

    # A message with a newline (a forged second record in text) stays one line.
    text = formatter.format(_record("keyservice", "name %s", "x\n2026 INFO forged: line"))
    assert "\n" not in text and json.loads(text)["message"] == "name x\n2026 INFO forged: line"
    assert "method" not in json.loads(text)

    failed = json.loads(formatter.format(_record("keyservice", "boom", exc=True)))
    assert failed["message"] == "boom"
    assert "ValueError: the database said no" in failed["exception"]
