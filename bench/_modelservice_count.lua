-- POST the request body at a fixed rate and count responses by status and serving version
-- (the x-coxswain-version header); prints one "count <status> <version> <n>" line per pair.
--   WRK_BODY_FILE    file holding the request body (required)
--   WRK_RATE         requests/s for the whole run; WRK_CONNECTIONS the -c value
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local rate = tonumber(os.getenv("WRK_RATE") or "")
local conns = tonumber(os.getenv("WRK_CONNECTIONS") or "1")
if rate then
  local gap_ms = 1000.0 * conns / rate
  function delay()
    return math.floor(gap_ms * (0.5 + math.random()))
  end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
end

function response(status, headers, body)
  local key = status .. " " .. (headers["x-coxswain-version"] or "-")
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for k, v in pairs(c) do
      total[k] = (total[k] or 0) + v
    end
  end
  for k, v in pairs(total) do
    io.write(string.format("count %s %d\n", k, v))
  end
  io.write(string.format("socket_errors %d\n",
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
