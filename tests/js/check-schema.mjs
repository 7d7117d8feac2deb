// Fetches the introspection result of a running Annals server and checks it with
// graphql-js: buildClientSchema must accept it and validateSchema must find nothing.
// Usage: node check-schema.mjs http://127.0.0.1:PORT/graphql
import {
  buildClientSchema,
  getIntrospectionQuery,
  validateSchema,
  printSchema,
  parse,
  validate,
} from "graphql";

const url = process.argv[2];
const response = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ query: getIntrospectionQuery() }),
});
const body = await response.json();
if (body.errors) {
  console.error("introspection failed:", JSON.stringify(body.errors));
  process.exit(1);
}
const schema = buildClientSchema(body.data);
const errors = validateSchema(schema);
if (errors.length > 0) {
  for (const e of errors) console.error("schema error:", e.message);
  process.exit(1);
}
// Queries the tests use must validate against the schema as graphql-js understands it.
const documents = [
  "{ head }",
  'query($a: Position) { events(after: $a, limit: 10, filter: { types: ["OrderPlaced"] }) { cursor hasMore events { position type payload } } }',
  'mutation { placeOrder(orderId: "o", customerId: "c", lines: [{ productId: "p", quantity: 1 }], idempotencyKey: "k") { position streams { streamId version } } }',
  "subscription { events(after: \"0\") { position } }",
];
for (const source of documents) {
  const problems = validate(schema, parse(source));
  if (problems.length > 0) {
    console.error(`document does not validate: ${source}`);
    for (const p of problems) console.error("  ", p.message);
    process.exit(1);
  }
}
const types = Object.keys(schema.getTypeMap()).length;
console.log(`graphql-js accepts the schema: ${types} types, ${printSchema(schema).length} bytes of SDL`);
