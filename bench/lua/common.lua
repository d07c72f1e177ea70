-- Shared by the bench scripts: thread ids, a status histogram, and a done() that prints one
-- JSON line (prefixed with BENCH_RESULT) that bench/run.py parses.
--
-- wrk runs every thread in its own Lua state; setup() runs in the main state once per thread,
-- done() runs in the main state after the run and reads each thread's globals back.

local M = {}

local threads = {}
local next_id = 0

-- Globals of each thread state (read back in done()).
statuses = {}
chain_breaks = 0
chain_spares_used = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

-- Count one response by status (call from response()).
function M.count(status)
  statuses[status] = (statuses[status] or 0) + 1
end

-- Lines of a file without blanks; fails loudly if the file has none.
function M.read_lines(path)
  assert(path, "missing file argument (wrk ... -- FILE)")
  local lines = {}
  for line in io.lines(path) do
    if line:match("%S") then
      table.insert(lines, line)
    end
  end
  assert(#lines > 0, "no lines in " .. path)
  return lines
end

local function json_value(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      return "null"
    end
    return string.format("%.17g", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local parts = {}
    for k, item in pairs(v) do
      table.insert(parts, string.format("%q:%s", tostring(k), json_value(item)))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif v == nil then
    return "null"
  end
  return string.format("%q", tostring(v))
end

function done(summary, latency, _requests)
  local merged, breaks, spares, counted = {}, 0, 0, false
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    if s then
      for code, n in pairs(s) do
        merged[code] = (merged[code] or 0) + n
        counted = true
      end
    end
    breaks = breaks + (thread:get("chain_breaks") or 0)
    spares = spares + (thread:get("chain_spares_used") or 0)
  end
  local e = summary.errors
  local result = {
    requests = summary.requests,
    duration_s = summary.duration / 1e6,
    bytes = summary.bytes,
    latency_ms = {
      p50 = latency:percentile(50) / 1000,
      p90 = latency:percentile(90) / 1000,
      p99 = latency:percentile(99) / 1000,
      max = latency.max / 1000,
      mean = latency.mean / 1000,
    },
    socket_errors = {
      connect = e.connect, read = e.read, write = e.write, timeout = e.timeout,
    },
    status_errors = e.status,
    statuses_counted = counted,
    statuses = merged,
    chain_breaks = breaks,
    chain_spares_used = spares,
    threads = #threads,
  }
  io.write("BENCH_RESULT " .. json_value(result) .. "\n")
end

return M
