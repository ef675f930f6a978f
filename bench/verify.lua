-- wrk script: POST /v1/mandates/verify with consume=true, each request a distinct pre-minted
-- mandate. Thread i of n takes the lines i, i+n, i+2n, ... of the tokens file, so no mandate
-- is presented twice; when a thread runs out it wraps around (those show up as 401 replays).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  local nthreads = tonumber(args[2])
  cart = args[3]
  tokens = {}
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == id then
      tokens[#tokens + 1] = line
    end
    i = i + 1
  end
  next_index = 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local token = tokens[next_index]
  next_index = next_index + 1
  if next_index > #tokens then next_index = 1 end
  local body = '{"mandate":"' .. token .. '","agent_id":"agent-7","cart":' .. cart .. ',"consume":true}'
  return wrk.format(nil, "/v1/mandates/verify", nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
