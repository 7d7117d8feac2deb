-- A batched request of 100 `appendToStream` operations (a JSON array), one event each;
-- multiply the request rate by 100 for events per second.
local report = dofile("benches/http/report.lua")
local query = report.append_query
-- Globals: `setup` sets `thread_id` per thread (a `local` would hide it).
n, thread_id = 0, 0
report.number_threads()
function request()
  n = n + 1
  local ops = {}
  for i = 1, 100 do
    ops[i] = string.format('{"query":"%s","variables":{"s":"batch-%d%d-%d"}}', query, thread_id, n % 100, i)
  end
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" },
    "[" .. table.concat(ops, ",") .. "]")
end
done = report.done
