#!/usr/bin/env bash
# Make sure what the test suite needs is there: PostgreSQL, Redis, Debian's Chromium, curl,
# jq and wrk. Starts local services that are installed but stopped, installs the tools when missing
# (as root, with apt). Prints what it did; exits non-zero when something cannot be had.
set -euo pipefail

log() { printf 'services: %s\n' "$*"; }

port_open() {  # host port
  python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
PY
}

apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    log "cannot install $* (needs root and apt-get); install it and re-run"
    return 1
  fi
  log "installing $* from Debian"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL ------------------------------------------------------------------------------
if [ -n "${KEYSERVICE_TEST_SKIP_POSTGRES:-}" ]; then
  log "PostgreSQL skipped on request (KEYSERVICE_TEST_SKIP_POSTGRES)"
elif [ -n "${KEYSERVICE_TEST_POSTGRES_URL:-}" ]; then
  log "PostgreSQL from KEYSERVICE_TEST_POSTGRES_URL"
elif port_open 127.0.0.1 5432; then
  log "PostgreSQL answers on 127.0.0.1:5432"
else
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    log "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 20); do port_open 127.0.0.1 5432 && break; sleep 0.5; done
  port_open 127.0.0.1 5432 || { log "PostgreSQL is not reachable on 127.0.0.1:5432"; exit 1; }
fi

# Redis (throttle counters shared through Redis are tested against a real server) ---------
if port_open 127.0.0.1 6379; then
  log "Redis answers on 127.0.0.1:6379"
else
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis on 127.0.0.1:6379 (nothing kept on disk)"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp >/dev/null
  for _ in $(seq 1 20); do port_open 127.0.0.1 6379 && break; sleep 0.25; done
  port_open 127.0.0.1 6379 || { log "Redis is not reachable on 127.0.0.1:6379"; exit 1; }
fi

# Chromium for the console's browser tests (never a downloaded browser) -------------------
if [ -x /usr/bin/chromium ]; then
  log "Chromium at /usr/bin/chromium"
else
  apt_install chromium chromium-driver
  [ -x /usr/bin/chromium ] || { log "Chromium is missing at /usr/bin/chromium"; exit 1; }
fi

# curl and jq for the README's tour, which tests/e2e/test_server.py runs as written -------
for tool in curl jq; do
  if command -v "$tool" >/dev/null; then
    log "$tool at $(command -v "$tool")"
  else
    apt_install "$tool"
    command -v "$tool" >/dev/null || { log "$tool is missing"; exit 1; }
  fi
done

# wrk for the benchmark smoke test (tests/test_bench_smoke.py runs `bench/run.py --smoke`) ---
if command -v wrk >/dev/null; then
  log "wrk at $(command -v wrk)"
else
  apt_install wrk
  command -v wrk >/dev/null || { log "wrk is missing"; exit 1; }
fi
