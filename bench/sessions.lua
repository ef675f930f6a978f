-- wrk script: create checkout sessions (one Trail Runner each) and append their ids to the
-- file given as the first argument; wrk stops after its duration.
local out

function init(args)
  out = io.open(args[1], "a")
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
