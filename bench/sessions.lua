-- wrk script: create checkout sessions (one Trail Runner each); thread i appends their ids to
-- the file "<first argument>.<i>" (one file per thread: buffered writes of two threads to one
-- file would interleave mid-line). wrk stops after its duration.
local out
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  out = io.open(args[1] .. "." .. id, "a")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"line_items":[{"id":"shoe-001","quantity":1}]}'
end

function request()
  return wrk.format(nil, "/v1/checkout-sessions")
end

function response(status, headers, body)
  if status == 201 then
    local id = body:match('"id":"([^"]+)"')
    if id then out:write(id, "\n") end
  end
end
