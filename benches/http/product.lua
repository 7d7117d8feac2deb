-- `product(id)`: a point query of the products read model, over 1,000 products (the same
-- operation text, new variables each time, as an application sends it).
local report = dofile("benches/http/report.lua")
local query = 'query($id: String!) { product(id: $id) { id name priceCents available } }'
local n = 0
function setup(thread)
  thread:set("offset", math.random(0, 999))
end
function request()
  n = n + 1
  local id = (n + offset) % 1000
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" },
    string.format('{"query":"%s","variables":{"id":"p-%d"}}', query, id))
end
done = report.done
