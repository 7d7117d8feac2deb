-- `{ head }`: the smallest GraphQL query.
local report = dofile("benches/http/report.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"query":"{ head }"}'
done = report.done
