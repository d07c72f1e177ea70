-- (b) refresh chains at POST /token: grant_type=refresh_token, each response's refresh_token
-- is the next request's. Refresh tokens are single-use (a reuse revokes the whole family), so
-- a chain must never have two requests in flight: run with -t C -c C, one connection per
-- thread, and wrk sends the next request of a connection only after response() has run.
--
-- Argument: a file with one refresh token per line, at least as many lines as threads.
-- Thread k starts from line k+1; if its chain breaks (any non-200), it counts a break and
-- moves on to a spare: line k+1+T, then k+1+2T, ... (T = number of threads), so that one
-- broken chain does not turn the rest of the run into errors. Out of spares, it keeps
-- sending the last token (and every such request counts as an error).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local tokens
local slot
local current
local stride
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function init(args)
  tokens = common.read_lines(args[1])
  local nthreads = tonumber(args[2])
  assert(nthreads and nthreads >= 1, "second argument: the number of threads")
  assert(#tokens >= nthreads, "fewer refresh tokens than threads")
  stride = nthreads
  slot = (id or 0) + 1
  current = tokens[slot]
end

function request()
  return wrk.format("POST", nil, headers, "grant_type=refresh_token&refresh_token=" .. current)
end

function response(status, _headers, body)
  common.count(status)
  if status == 200 then
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then
      current = token
      return
    end
  end
  chain_breaks = chain_breaks + 1
  if tokens[slot + stride] then
    slot = slot + stride
    current = tokens[slot]
    chain_spares_used = chain_spares_used + 1
  end
end
