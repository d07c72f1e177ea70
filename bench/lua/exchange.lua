-- (a) client_credentials exchange at POST /token, rotating through the API keys per request.
-- Argument: a file with one "client_id client_secret" pair per line.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local requests = {}
local i = 0

function init(args)
  for _, line in ipairs(common.read_lines(args[1])) do
    local client_id, secret = line:match("^(%S+)%s+(%S+)$")
    assert(client_id, "bad line in keys file")
    local body = "grant_type=client_credentials&client_id=" .. client_id
      .. "&client_secret=" .. secret
    local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
    table.insert(requests, wrk.format("POST", nil, headers, body))
  end
  -- Threads start at different keys so that they do not move in lockstep.
  i = ((id or 0) * 37) % #requests
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function response(status, _headers, _body)
  common.count(status)
end
