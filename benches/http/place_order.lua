-- `placeOrder` over 1,000 products: a new order each time (load, decide, reserve stock
-- and append in one atomic commit).
local report = dofile("benches/http/report.lua")
local query = 'mutation($o: String!, $c: String!, $p: String!) { placeOrder(orderId: $o, customerId: $c, lines: [{productId: $p, quantity: 1}]) { position } }'
-- Globals: each wrk thread has its own Lua state, and `setup` sets them per thread (a
-- `local` here would hide them from `request`).
n, thread_id, run = 0, 0, os.time()
report.number_threads()
function request()
  n = n + 1
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" },
    string.format('{"query":"%s","variables":{"o":"o-%d-%d-%d","c":"c-%d","p":"p-%d"}}',
      query, run, thread_id, n, n % 1000, (n * 7 + thread_id) % 1000))
end
done = report.done
