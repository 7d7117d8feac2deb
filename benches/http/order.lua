-- `order(id)`: a point query of the orders read model, over 1,000 orders.
local report = dofile("benches/http/report.lua")
local query = 'query($id: String!) { order(id: $id) { id customerId status totalCents } }'
local n = 0
function request()
  n = n + 1
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" },
    string.format('{"query":"%s","variables":{"id":"seed-%d"}}', query, n % 1000))
end
done = report.done
