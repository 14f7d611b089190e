-- wrk script for bench/national.py: every ward's agent pushing a few results at a time.
--
--   wrk -t1 -c64 -d60s --latency -s bench/national.lua URL -- WARDS_FILE SERIES_FILE RATE PER_PUSH
--
-- WARDS_FILE: one "ward<TAB>agent<TAB>stream<TAB>token" line per ward.
-- SERIES_FILE: one result per line, split at TAB into the JSON before seq's value, between
--   seq and started, and after started, so a push is glued together without a JSON library.
-- RATE: requests/s offered by all threads together (0: as fast as the connections go).
-- PER_PUSH: results in each push.
--
-- Each thread takes every Nth ward and visits them in turn, so at 664 requests/s each of
-- 3,321 wards pushes once every 5 s, as the real fleet does. Every push carries the ward's
-- next sequence numbers, so nothing is ever a duplicate unless the collector stored twice.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } wardready_timespec;
int clock_gettime(int clk, wardready_timespec *tp);
]]
local CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
local ts = ffi.new("wardready_timespec")

local function clock(which)
   ffi.C.clock_gettime(which, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local threads = {}
local counter = 0

function setup(thread)
   thread:set("index", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local function split(line)
   local out = {}
   for part in (line .. "\t"):gmatch("([^\t]*)\t") do
      table.insert(out, part)
   end
   return out
end

local function lines(path)
   local f = assert(io.open(path, "r"))
   local out = {}
   for line in f:lines() do
      if #line > 0 then
         table.insert(out, line)
      end
   end
   f:close()
   return out
end

local wards, series = {}, {}
local per_push, interval, next_at = 4, 0, nil
local turn = 0
local non_ok = 0

function init(args)
   local index, nthreads = tonumber(wrk.thread:get("index")), counter
   if nthreads == 0 then
      nthreads = 1
   end
   for i, line in ipairs(lines(args[1])) do
      if (i - 1) % nthreads == index then
         local f = split(line)
         table.insert(wards, {
            head = '{"wire_version":1,"ward":"' .. f[1] .. '","agent":"' .. f[2]
               .. '","stream":"' .. f[3] .. '","sent_at":',
            auth = "Bearer " .. f[4],
            seq = tonumber(args[5]) or 0,
            series = 0,
         })
      end
   end
   for _, line in ipairs(lines(args[2])) do
      table.insert(series, split(line))
   end
   local rate = tonumber(args[3]) or 0
   per_push = tonumber(args[4]) or 4
   if rate > 0 then
      interval = nthreads / rate
   end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

local STATUS = '"status":{"version":"bench","spool_depth":0,"spool_dropped_total":0,'
   .. '"resident_memory_bytes":31457280,"cpu_seconds_total":1.0,"checks":22},"results":['

function request()
   turn = turn % #wards + 1
   local w = wards[turn]
   local now = clock(CLOCK_REALTIME)
   local parts = { w.head, string.format("%.3f", now), ",", STATUS }
   for k = 1, per_push do
      w.seq = w.seq + 1
      w.series = w.series % #series + 1
      local s = series[w.series]
      if k > 1 then
         table.insert(parts, ",")
      end
      table.insert(parts, s[1] .. w.seq .. s[2] .. string.format("%.3f", now - 1) .. s[3])
   end
   table.insert(parts, "]}")
   return wrk.format(nil, "/api/v1/ingest", { Authorization = w.auth }, table.concat(parts))
end

-- Paced: each thread keeps a schedule of send times; a connection waits for the next free
-- slot. A collector that falls behind is not flooded with the backlog afterwards: the
-- schedule never lags the clock by more than one second.
function delay()
   if interval == 0 then
      return 0
   end
   local now = clock(CLOCK_MONOTONIC)
   if next_at == nil or next_at < now - 1 then
      next_at = now
   end
   local wait = next_at - now
   next_at = next_at + interval
   if wait <= 0 then
      return 0
   end
   return math.floor(wait * 1000 + 0.5)
end

function response(status, headers, body)
   if status ~= 200 then
      non_ok = non_ok + 1
      if non_ok <= 3 then
         io.stderr:write("status " .. status .. ": " .. body:sub(1, 300) .. "\n")
      end
   end
end

function done(summary, latency, requests)
   io.write(string.format(
      "NATIONAL requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d "
         .. "errors_connect=%d errors_read=%d errors_timeout=%d errors_status=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, summary.errors.connect, summary.errors.read,
      summary.errors.timeout, summary.errors.status))
end
