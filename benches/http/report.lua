-- Shared by every wrk script here: one JSON line with the rate and the latency
-- percentiles (wrk's own summary has no p95), for scripts/http-load to collect.
local M = {}

function M.done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests":%d,"seconds":%.2f,"rps":%.0f,"errors":%d,"p50_ms":%.2f,"p95_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f}\n',
    summary.requests, seconds, summary.requests / seconds, errors,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end

-- The one-event `appendToStream` of append.lua and append_batch.lua.
M.append_query = 'mutation($s: String!) { appendToStream(streamId: $s, expectedVersion: {state: ANY}, events: [{type: \\"LoadTested\\", payload: {n: 1}}]) { position } }'

-- Numbers wrk's threads from 1 (as the global `thread_id` of each), so each thread
-- writes streams of its own.
function M.number_threads()
  local counter = 0
  setup = function(thread)
    counter = counter + 1
    thread:set("thread_id", counter)
  end
end

return M
