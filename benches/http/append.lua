-- `appendToStream` of one event (fsynced before the answer), spread over many streams.
local report = dofile("benches/http/report.lua")
local query = 'mutation($s: String!) { appendToStream(streamId: $s, expectedVersion: {state: ANY}, events: [{type: \\"LoadTested\\", payload: {n: 1}}]) { position } }'
local n, thread_id = 0, 0
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end
function request()
  n = n + 1
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" },
    string.format('{"query":"%s","variables":{"s":"load-%d%d"}}', query, thread_id, n % 1000))
end
done = report.done
