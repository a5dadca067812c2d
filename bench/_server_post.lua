-- POST the same body on every request, for wrk.
--   WRK_BODY_FILE     file holding the request body (required)
--   WRK_CONTENT_TYPE  Content-Type (default application/json)
--   WRK_RATE          if set: requests/s for the whole run; each connection waits
--                     connections/rate seconds (jittered) between requests, so the
--                     load is a fixed rate rather than closed-loop saturation
--   WRK_CONNECTIONS   the -c value, needed with WRK_RATE
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"

local rate = tonumber(os.getenv("WRK_RATE") or "")
local conns = tonumber(os.getenv("WRK_CONNECTIONS") or "1")
if rate then
  local gap_ms = 1000.0 * conns / rate
  function delay()
    -- uniform jitter around the mean gap keeps connections from marching in step
    return math.floor(gap_ms * (0.5 + math.random()))
  end
end

local bad = 0
function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format("non200 %d\n", summary.errors.status))
end
