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
