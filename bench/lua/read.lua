-- (c) a Bearer-authenticated read (GET <path>, default /me), rotating through access tokens.
-- Argument: a file with one JWT per line. The path comes from the URL given to wrk.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local requests = {}
local i = 0

function init(args)
  for _, token in ipairs(common.read_lines(args[1])) do
    local headers = { ["Authorization"] = "Bearer " .. token }
    table.insert(requests, wrk.format("GET", nil, headers, nil))
  end
  i = ((id or 0) * 37) % #requests
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function response(status, _headers, _body)
  common.count(status)
end
