"""A log handler that writes its lines to the stream in batches instead of one by one.

Under load the access log cost a request about 30 us of CPU (bench/README.md), a third of
a bare request; a write and a flush per line were a third of that. This handler keeps the
lines of INFO and below for at most `interval` seconds (a daemon thread writes them out)
or until `max_lines` are waiting; a WARNING or worse writes everything waiting, itself
included, at once, so the order of lines is kept. `flush()` (logging.shutdown calls it at
exit; the app's lifespan and each worker call it at their end) writes what is left. What
a kill -9 loses: at most the last `interval` seconds of INFO lines.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TextIO


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: TextIO, *, interval: float = 0.5, max_lines: int = 256) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._pending = threading.Event()
        threading.Thread(target=self._write_periodically, name="log-writer", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock around emit().
        try:
            self._lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._lines) >= self.max_lines:
            self.flush()
        elif len(self._lines) == 1:
            self._pending.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # an RLock: emit() calls this holding it
            text, self._lines = "".join(self._lines), []
            try:
                if text:
                    self.stream.write(text)
                self.stream.flush()
            except Exception:
                pass  # a closed or broken stream: there is nowhere better to put the lines

    def _write_periodically(self) -> None:
        while True:
            self._pending.wait()
            time.sleep(self.interval)
            self._pending.clear()
            self.flush()


# The access log's arguments, in its format's order (main.py: "%s %s %s %.1fms").
_ACCESS_FIELDS = ("method", "path", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (`KEYSERVICE_LOG_FORMAT=json`), for log shippers.

    `time` (UTC, RFC 3339, milliseconds), `level`, `logger`, `message`; an access-log line
    also carries `method`, `path`, `status` and `duration_ms` as fields (taken from its
    arguments: the text format costs nothing more); an exception its traceback in
    `exception`. A newline in a message stays inside its string: one record, one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (
            record.name == "keyservice.access"
            and isinstance(record.args, tuple)
            and len(record.args) == len(_ACCESS_FIELDS)
        ):
            line.update(zip(_ACCESS_FIELDS, record.args, strict=True))
            line["duration_ms"] = round(float(line["duration_ms"]), 1)  # type: ignore[arg-type]
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):  # KEYSERVICE_AUDIT_LOG: the event's fields, as fields
            line["message"] = f"audit event {audit.get('type')}"
            line["audit"] = audit
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)
