-- (d) GET /healthz: no auth, no database; the framework's ceiling. The static request keeps
-- wrk's own cost per request minimal; errors come from wrk's counters.
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
require("common")

wrk.method = "GET"
