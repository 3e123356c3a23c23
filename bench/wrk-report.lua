-- wrk -s wrk-report.lua ...: adds one machine-readable summary line at the end:
-- WRKJSON {"rps":..,"requests":..,"p50_ms":..,"p99_ms":..,"max_ms":..,"errors":..,...}
-- errors = socket errors (connect+read+write+timeout) + non-2xx/3xx responses.
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local errors = e.connect + e.read + e.write + e.timeout + e.status
  io.write(string.format(
    'WRKJSON {"rps":%.1f,"requests":%d,"duration_s":%.3f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests / secs, summary.requests, secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    errors, e.connect, e.read, e.write, e.status, e.timeout))
end
