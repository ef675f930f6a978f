-- wrk script: POST /v1/mandates/verify, each request a distinct pre-minted mandate.
-- Arguments: tokens file, number of wrk threads, cart JSON, consume ("true" or "false").
-- A line "<mandate> <proof>" is a bound mandate with the agent's DPoP proof (SPEC §8), sent
-- as "dpop" with htm POST and htu https://backend.example/pay.
-- Thread i of n takes the lines i, i+n, i+2n, ... of the tokens file, so no mandate is
-- presented twice; when a thread runs out it wraps around (with consume=true those show up
-- as 401 replays). Every request is formatted once, before the run: wrk shares the cores
-- with the merchant, and building bodies per request would be measured as the merchant's loss.
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
  local cart = args[3]
  local consume = args[4] or "true"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  -- The merchant backend's token (bench/common.sh); the floor ignores it.
  wrk.headers["Authorization"] = "Bearer bench-backend-token"
  requests = {}
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == id then
      local mandate, proof = line:match("^(%S+) (%S+)$")
      local dpop = ""
      if proof then
        dpop = ',"dpop":"' .. proof .. '","htm":"POST","htu":"https://backend.example/pay"'
      else
        mandate = line
      end
      local body = '{"mandate":"' .. mandate .. '","agent_id":"agent-7","cart":' .. cart ..
        ',"consume":' .. consume .. dpop .. '}'
      requests[#requests + 1] = wrk.format(nil, "/v1/mandates/verify", nil, body)
    end
    i = i + 1
  end
  next_index = 1
end

function request()
  local r = requests[next_index]
  next_index = next_index + 1
  if next_index > #requests then next_index = 1 end
  return r
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
