-- wrk script: create checkout sessions (one Trail Runner each); thread i appends their ids to
-- the file "<first argument>.<i>" (one file per thread: buffered writes of two threads to one
-- file would interleave mid-line). wrk stops after its duration. With a second argument, a
-- file of DPoP proofs (one per line, thread i taking lines i, i+n, ...; the third argument is
-- n), each session is opened with its own proof and so belongs to the agent's key. With
-- SESSIONS_PER_THREAD set, each thread stops once it has opened that many.
local out
local counter = 0
local opened = 0
local limit = tonumber(os.getenv("SESSIONS_PER_THREAD") or "")

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  out = io.open(args[1] .. "." .. id, "a")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"line_items":[{"id":"shoe-001","quantity":1}]}'
  proofs = {}
  if args[2] then
    local i, n = 0, tonumber(args[3])
    for line in io.lines(args[2]) do
      if i % n == id then proofs[#proofs + 1] = line end
      i = i + 1
    end
  end
  next_proof = 1
end

function request()
  if #proofs == 0 then return wrk.format(nil, "/v1/checkout-sessions") end
  local proof = proofs[next_proof]
  next_proof = next_proof % #proofs + 1
  -- Headers given to wrk.format replace wrk.headers, so the content type is repeated here.
  return wrk.format(nil, "/v1/checkout-sessions",
    { ["Content-Type"] = "application/json", ["DPoP"] = proof })
end

function response(status, headers, body)
  if status == 201 then
    local id = body:match('"id":"([^"]+)"')
    if id then
      out:write(id, "\n")
      opened = opened + 1
      if limit and opened >= limit then wrk.thread:stop() end
    end
  end
end
