-- wrk script: POST /v1/checkout-sessions/{id}/complete, each request a fresh session paired
-- with a fresh mandate. Thread i of n takes the lines i, i+n, ... of both files; a thread that
-- runs out wraps around (those requests show up as non-2xx: 409 or 401 replays). With a
-- fourth argument, a file of DPoP proofs (line i for session i and mandate i), the mandate is
-- presented as "Authorization: DPoP" with its proof (SPEC §8).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

-- Non-2xx answers by status, to tell refusals (401/409) from overload (503).
statuses = {}

function response(status, headers, body)
  if status >= 300 then
    local code = body:match('"code":"([^"]+)"') or "-"
    local key = status .. " " .. code
    statuses[key] = (statuses[key] or 0) + 1
  end
end

local function partition(file, nthreads)
  local lines, i = {}, 0
  for line in io.lines(file) do
    if i % nthreads == id then lines[#lines + 1] = line end
    i = i + 1
  end
  return lines
end

function init(args)
  local nthreads = tonumber(args[3])
  tokens = partition(args[1], nthreads)
  sessions = partition(args[2], nthreads)
  proofs = args[4] and partition(args[4], nthreads) or nil
  next_index = 1
  wrk.method = "POST"
end

function request()
  local i = next_index
  next_index = next_index + 1
  if next_index > #sessions or next_index > #tokens then next_index = 1 end
  local headers = { ["Authorization"] = "Bearer " .. tokens[i], ["AP2-Agent-Id"] = "agent-7" }
  if proofs then
    headers["Authorization"] = "DPoP " .. tokens[i]
    headers["DPoP"] = proofs[i]
  end
  return wrk.format(nil, "/v1/checkout-sessions/" .. sessions[i] .. "/complete", headers)
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for key, n in pairs(counts) do
      io.write(string.format("NON2XX %s: %d\n", key, n))
    end
  end
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
