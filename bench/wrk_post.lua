-- wrk script for bench/bench_server.sh: POST /predict bodies.
--   BENCH_MODE=hit     every request sends BENCH_BODY (the same request: answered from the cache)
--   BENCH_MODE=unique  every request is a different sequence of BENCH_LEN residues with one <mask>
--                      (never seen before: a cache miss), made from BENCH_SALT, the wrk thread and
--                      a per-thread counter
-- done() prints one line "BENCHJSON {...}" with the request count, rate and latency percentiles.
local mode = os.getenv("BENCH_MODE") or "hit"
local len = tonumber(os.getenv("BENCH_LEN") or "62")
local salt = tonumber(os.getenv("BENCH_SALT") or "1")
local AA = "ACDEFGHIKLMNPQRSTVWY"

local nthreads = 0
function setup(thread)
   thread:set("tid", nthreads)
   nthreads = nthreads + 1
end

local fixed
local counter = 0

function init(args)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   if mode == "hit" then
      wrk.body = os.getenv("BENCH_BODY")
      fixed = wrk.format("POST")
   end
end

-- 6 base-20 digits of n (unique up to 64e6 per thread), then pseudo-random residues.
local function sequence(t, n)
   local parts = {}
   local x = n
   for _ = 1, 6 do
      local r = x % 20
      parts[#parts + 1] = AA:sub(r + 1, r + 1)
      x = (x - r) / 20
   end
   -- thread and salt digits keep threads and runs apart
   local y = t * 1000 + salt % 1000
   for _ = 1, 4 do
      local r = y % 20
      parts[#parts + 1] = AA:sub(r + 1, r + 1)
      y = (y - r) / 20
   end
   local s = (salt * 7919 + t * 104729 + n * 15485863) % 2147483647
   for i = #parts + 1, len do
      if i == math.floor(len / 2) then
         parts[i] = "<mask>"
      else
         s = (s * 48271) % 2147483647
         local r = s % 20
         parts[i] = AA:sub(r + 1, r + 1)
      end
   end
   return table.concat(parts)
end

function request()
   if fixed then return fixed end
   counter = counter + 1
   return wrk.format("POST", nil, nil, '{"sequence":"' .. sequence(tid, counter) .. '"}')
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_s":%.3f,"bytes":%d,"rps":%.2f,' ..
      '"lat_mean_ms":%.3f,"lat_p50_ms":%.3f,"lat_p75_ms":%.3f,"lat_p90_ms":%.3f,"lat_p99_ms":%.3f,' ..
      '"lat_max_ms":%.3f,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
      summary.requests, secs, summary.bytes, summary.requests / secs,
      latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(75) / 1e3,
      latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
      e.connect, e.read, e.write, e.status, e.timeout))
end
