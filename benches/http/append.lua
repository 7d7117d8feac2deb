-- `appendToStream` of one event (fsynced before the answer), spread over many streams.
local report = dofile("benches/http/report.lua")
local query = report.append_query
-- Globals: `setup` sets `thread_id` per thread (a `local` would hide it).
n, thread_id = 0, 0
report.number_threads()
function request()
  n = n + 1
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" },
    string.format('{"query":"%s","variables":{"s":"load-%d%d"}}', query, thread_id, n % 1000))
end
done = report.done
