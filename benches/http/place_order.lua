-- `placeOrder` over 1,000 products: a new order each time (load, decide, reserve stock
-- and append in one atomic commit).
local report = dofile("benches/http/report.lua")
local query = 'mutation($o: String!, $c: String!, $p: String!) { placeOrder(orderId: $o, customerId: $c, lines: [{productId: $p, quantity: 1}]) { position } }'
local n, thread_id, run = 0, 0, 0
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
  thread:set("run", os.time())
end
function request()
  n = n + 1
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" },
    string.format('{"query":"%s","variables":{"o":"o-%d-%d-%d","c":"c-%d","p":"p-%d"}}',
      query, run, thread_id, n, n % 1000, (n * 7 + thread_id) % 1000))
end
done = report.done
