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

return M
