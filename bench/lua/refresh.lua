-- (b) refresh chains at POST /token: grant_type=refresh_token, each response's refresh_token
-- is the next request's. Refresh tokens are single-use (a reuse revokes the whole family), so
-- a chain must never have two requests in flight.
--
-- Each thread keeps its chains in a queue: request() sends the token at the front, response()
-- puts the successor it was given at the back. wrk keeps one request in flight per connection
-- and asks a connection for its next request only after that connection's response() has run,
-- so a thread of n connections always has exactly n chains, each either waiting in the queue
-- or in flight, and a token is sent once, after the response that issued it. Which connection
-- carries a chain's next step does not matter to the service; it is usually the same one (wrk
-- is told the connection is writable in the order the responses completed). This lets one wrk
-- thread drive every connection, as in the other scenarios: with one thread per connection,
-- wrk took 83-96 us of CPU per refresh (52-58 per exchange), on the cores the service and
-- PostgreSQL share; with one thread, 67-76.
--
-- Arguments: a file with one refresh token per line, the number of connections C (at least
-- that many lines) and the number of threads T. Lines 1..C start the chains, dealt to the
-- threads in turn (thread k takes lines k+1, k+1+T, ...); the lines after C are spares, dealt
-- the same way. When a chain breaks (any non-200, or a connection lost with its request in
-- flight), the thread counts a break and goes on with a spare; out of spares, it sends the
-- last line of the file, which was used already, so every such request counts as an error.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local queue = {}
local head, tail = 1, 0
local spares = {}
local spare = 0
local exhausted
local verified = false
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

local function push(token)
  tail = tail + 1
  queue[tail] = token
end

-- A spare for a broken chain; counts the break.
local function replacement()
  chain_breaks = chain_breaks + 1
  if spare < #spares then
    spare = spare + 1
    chain_spares_used = chain_spares_used + 1
    return spares[spare]
  end
  return exhausted
end

function init(args)
  local tokens = common.read_lines(args[1])
  local connections = tonumber(args[2])
  assert(connections and connections >= 1, "second argument: the number of connections")
  assert(#tokens >= connections, "fewer refresh tokens than connections")
  local threads = tonumber(args[3])
  assert(threads and threads >= 1 and threads <= connections, "third argument: the threads")
  local k = (id or 0) + 1
  for line = k, #tokens, threads do
    if line <= connections then
      push(tokens[line])
    else
      table.insert(spares, tokens[line])
    end
  end
  exhausted = tokens[#tokens]
end

local function format(token)
  return wrk.format("POST", nil, headers, "grant_type=refresh_token&refresh_token=" .. token)
end

function request()
  if id == 0 and not verified then
    -- wrk calls the first thread's request() once before it starts, to check what it
    -- returns; that request is never sent, so it must not use up a chain's token.
    verified = true
    return format(queue[head])
  end
  local token
  if head <= tail then
    token = queue[head]
    queue[head] = nil
    head = head + 1
  else
    -- Only after a connection was lost with its request in flight (its chain with it).
    token = replacement()
  end
  return format(token)
end

function response(status, _headers, body)
  common.count(status)
  if status == 200 then
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then
      push(token)
      return
    end
  end
  push(replacement())
end
