-- GET /health: the HTTP floor (routing, middleware, a tiny JSON body).
local report = dofile("benches/http/report.lua")
done = report.done
