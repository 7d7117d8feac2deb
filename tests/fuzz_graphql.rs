//! Fuzz target of the GraphQL request path, driven by proptest's generators.
//!
//! Arbitrary documents (random text, documents generated from the schema's own field and
//! argument names with random aliases, nesting and argument values, and valid operations
//! mutated by splicing, dropping, duplicating and swapping tokens) with arbitrary
//! variables, and arbitrary request bodies, go through the real router (`server::app`:
//! authentication, body parsing, execution, error tagging) over a real RocksDB log and
//! the real read models, in process (`tower::ServiceExt::oneshot`, no sockets).
//!
//! Every response must be JSON with either `data` or `errors`, every error must carry an
//! `extensions.code` from the documented set, and no client input may produce
//! `INTERNAL` (that would be a bug: a failure the API did not classify). After every case
//! the server must still answer a valid query. `ANNALS_FUZZ_CASES` sets the number of
//! cases per target (default 300 for the `make test` smoke run; `make fuzz` runs many
//! more).

use std::time::Duration;

use annals::error::ErrorCode;
use annals::node::{Node, NodeConfig};
use annals::server::auth::{ApiKeys, RateLimit, Role, generate_key};
use annals::server::{self, ServerConfig};
use annals_store::Durability;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

fn cases() -> u32 {
    std::env::var("ANNALS_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300)
}

/// Whether `code` is one a client may see in a fuzzed response: a code of the table that
/// is not for operators only. `INTERNAL` is deliberately excluded.
fn documented_for_clients(code: &str) -> bool {
    ErrorCode::ALL
        .iter()
        .any(|c| !c.is_internal() && c.as_str() == code)
}

/// The real server over a fresh log and read models, with one key per role.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// Keeps the workers running and the log open for the fixture's life.
    _node: Node,
    keys: [String; 3],
    /// How many responses had data only, or each code: printed at the end, so a run
    /// shows what it exercised (`--nocapture`).
    outcomes: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (reader, r) = generate_key(Role::Reader).unwrap();
        let (writer, w) = generate_key(Role::Writer).unwrap();
        let (admin, a) = generate_key(Role::Admin).unwrap();
        let node = runtime.block_on(async {
            let mut node = NodeConfig::on_disk(dir.path());
            // The fuzzer's own mutations are under test, not the checkout's.
            node.checkout = None;
            // Buffered: the request path is the same, and the fuzzer's mutations do not
            // wait for an fsync each.
            node.store.durability = Durability::Buffered;
            node.server = ServerConfig {
                api_keys: ApiKeys::parse(&format!("{r}\n{w}\n{a}\n")).unwrap(),
                rate_limit: RateLimit {
                    per_second: 1_000_000.try_into().unwrap(),
                    burst: 1_000_000.try_into().unwrap(),
                },
                // `atLeast` far ahead must not cost the fuzzer seconds per case.
                stale_read_timeout: Duration::from_millis(20),
                ..ServerConfig::default()
            };
            Node::start(node).unwrap()
        });
        let state = node.state().clone();
        let router = server::app(state.clone());
        let fixture = Fixture {
            runtime,
            router,
            _node: node,
            keys: [reader, writer, admin],
            outcomes: Default::default(),
            _dir: dir,
        };
        // Some data for the queries to find.
        for (query, variables) in [
            (TEMPLATES[7], json!({ "id": "p1", "price": 250 })),
            (TEMPLATES[8], json!({ "id": "p1", "qty": 50 })),
            (
                TEMPLATES[10],
                json!({ "order": "o1", "customer": "c1", "lines": [{ "productId": "p1", "quantity": 2 }] }),
            ),
        ] {
            let (_, body) = fixture.post(Some(2), query, &variables);
            assert!(body.get("errors").is_none(), "{body}");
        }
        fixture
    }

    fn auth(&self, who: Option<usize>) -> Option<String> {
        match who {
            Some(i) if i < 3 => Some(format!("Bearer {}", self.keys[i])),
            Some(_) => Some("Bearer ank_not_a_key".into()),
            None => None,
        }
    }

    /// Sends one request through the router; the status and the body.
    fn send(&self, request: Request<Body>) -> (u16, Vec<u8>) {
        self.runtime.block_on(async {
            let response = tokio::time::timeout(
                Duration::from_secs(20),
                self.router.clone().oneshot(request),
            )
            .await
            .expect("no answer within 20 s")
            .unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, body.to_vec())
        })
    }

    fn post_raw(&self, who: Option<usize>, body: Vec<u8>) -> (u16, Vec<u8>) {
        let mut request =
            Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = self.auth(who) {
            request = request.header(header::AUTHORIZATION, auth);
        }
        self.send(request.body(Body::from(body)).unwrap())
    }

    fn post(&self, who: Option<usize>, query: &str, variables: &Value) -> (u16, Value) {
        let body = json!({ "query": query, "variables": variables });
        let (status, bytes) = self.post_raw(who, body.to_string().into_bytes());
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// A `GET` with this query string; `None` when no HTTP request can carry it (the
    /// `http` crate refuses URIs of 64 KiB and more, as clients and hyper do).
    fn get(&self, who: Option<usize>, query_string: &str) -> Option<(u16, Vec<u8>)> {
        let mut request = Request::get(format!("/graphql?{query_string}"));
        if let Some(auth) = self.auth(who) {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request.body(Body::empty()).ok()?;
        Some(self.send(request))
    }

    fn count(&self, outcome: &str) {
        let mut outcomes = self.outcomes.lock().unwrap();
        *outcomes.entry(outcome.to_string()).or_default() += 1;
    }

    /// The server still answers a valid query.
    fn still_serving(&self) -> Result<(), TestCaseError> {
        let (status, body) = self.post(Some(0), "{ head projections { name } }", &json!({}));
        prop_assert_eq!(status, 200, "{}", body);
        prop_assert!(body["data"]["head"].is_string(), "{}", body);
        Ok(())
    }
}

/// Checks one response: JSON, `data` or coded `errors`, never `INTERNAL`.
fn check_response(
    fixture: &Fixture,
    status: u16,
    body: &[u8],
    input: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        TestCaseError::fail(format!(
            "status {status}: body is not JSON ({e}): {:?}\ninput: {input:?}",
            String::from_utf8_lossy(body)
        ))
    })?;
    // A batch (a JSON array sent) is answered with an array: each answer is checked alone.
    if let Value::Array(answers) = &value {
        prop_assert!(
            !answers.is_empty(),
            "an empty batch answer\ninput: {:?}",
            input
        );
        for answer in answers {
            check_answer(fixture, status, answer, input)?;
        }
        return Ok(());
    }
    check_answer(fixture, status, &value, input)
}

/// Checks one answer: `data` or coded `errors`, never `INTERNAL`.
fn check_answer(
    fixture: &Fixture,
    status: u16,
    value: &Value,
    input: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    match value.get("errors") {
        Some(Value::Array(errors)) => {
            prop_assert!(
                !errors.is_empty(),
                "empty errors: {}\ninput: {:?}",
                value,
                input
            );
            for error in errors {
                let code = error["extensions"]["code"].as_str();
                prop_assert!(
                    code.is_some_and(documented_for_clients),
                    "status {}: error without an allowed code: {}\ninput: {:?}",
                    status,
                    error,
                    input
                );
                prop_assert!(error["message"].is_string(), "{}", error);
            }
            fixture.count(errors[0]["extensions"]["code"].as_str().unwrap_or("?"));
        }
        Some(other) => prop_assert!(false, "errors is not a list: {}", other),
        None => {
            prop_assert_eq!(status, 200, "{}", value);
            prop_assert!(
                value["data"].is_object(),
                "neither data nor errors: {}\ninput: {:?}",
                value,
                input
            );
            fixture.count("data");
        }
    }
    Ok(())
}

/// Valid operations of the real schema: the seeds the mutator starts from. Indexes 7, 8
/// and 10 seed the fixture's data.
const TEMPLATES: &[&str] = &[
    "{ head }",
    r#"query($id: String!, $from: Version, $back: Boolean, $limit: Int) { stream(id: $id, fromVersion: $from, backwards: $back, limit: $limit) { streamId version nextVersion events { position streamId category streamVersion eventId type schemaVersion recordedAt payload metadata { actor correlationId causationId extra } } } }"#,
    r#"query($after: Position, $limit: Int, $filter: EventFilter) { events(after: $after, limit: $limit, filter: $filter) { cursor head hasMore events { position streamId type payload } } }"#,
    r#"query($id: String!, $at: Position) { order(id: $id, atLeast: $at) { id customerId status lines { productId quantity unitPriceCents } totalCents trackingNumber cancelReason placedAt updatedAt version position } }"#,
    r#"query($customer: String, $status: OrderStatus, $first: Int, $after: String) { orders(customerId: $customer, status: $status, first: $first, after: $after) { pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { cursor node { id status } } nodes { id totalCents } } }"#,
    r#"query($id: String!, $first: Int, $after: String, $threshold: Int!) { customerStats(id: $id) { customerId totalOrders cancelledOrders revenueCents averageOrderValueCents } product(id: $id) { id sku name priceCents onHand reserved available version } products(first: $first, after: $after) { nodes { id available } pageInfo { endCursor } } lowStock(threshold: $threshold) { id onHand } }"#,
    "{ projections { name version generation state checkpoint head lag eventsPerSecond lastError failedPosition parked rebuild { generation version } } }",
    r#"mutation($id: String!, $price: Int!, $key: String) { registerProduct(productId: $id, sku: "SKU", name: "Widget", priceCents: $price, idempotencyKey: $key) { position duplicate streams { streamId version firstVersion firstPosition lastPosition } } }"#,
    r#"mutation($id: String!, $qty: Int!) { receiveStock(productId: $id, quantity: $qty) { position streams { streamId version } } }"#,
    r#"mutation($id: String!, $price: Int!) { changePrice(productId: $id, priceCents: $price) { position } }"#,
    r#"mutation($order: String!, $customer: String!, $lines: [OrderLineInput!]!, $key: String) { placeOrder(orderId: $order, customerId: $customer, lines: $lines, idempotencyKey: $key) { position duplicate streams { streamId version } } }"#,
    r#"mutation($order: String!) { confirmOrder(orderId: $order) { position } shipOrder(orderId: $order, trackingNumber: "T-1") { position } }"#,
    r#"mutation($order: String!, $reason: String!) { cancelOrder(orderId: $order, reason: $reason) { position } }"#,
    r#"mutation($stream: String!, $expected: ExpectedVersionInput!, $events: [EventInput!]!) { appendToStream(streamId: $stream, expectedVersion: $expected, events: $events) { position duplicate streams { streamId version } } }"#,
    r#"mutation($name: String!) { pauseProjection(name: $name) { state } resumeProjection(name: $name) { state checkpoint } }"#,
    r#"mutation { rebuildProjection(name: "products") { name state rebuild { generation } } }"#,
    r#"subscription($after: Position) { events(after: $after) { position type } }"#,
    r#"{ __schema { queryType { name } types { name kind fields { name args { name type { name kind ofType { name } } } } } } }"#,
    r#"query Q { ...F a: head } fragment F on Query { head projections { ...P } } fragment P on ProjectionStatus { name lag }"#,
    r#"query A { head } mutation B { changePrice(productId: "p1", priceCents: 1) { position } }"#,
    r#"{ stream(id: "product-p1") @include(if: true) { events @skip(if: false) { position } } __typename }"#,
    r#"mutation { appendToStream(streamId: "note-1", expectedVersion: {state: ANY}, events: [{type: "NoteTaken", payload: {text: "hi", n: [1, 2.5, null]}, metadata: {extra: {a: 1}}}]) { position } }"#,
];

/// Names of the schema, GraphQL keywords and punctuation: what the splicer inserts.
const VOCABULARY: &[&str] = &[
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ":",
    "!",
    "$",
    "=",
    "@",
    "|",
    "&",
    ",",
    "...",
    "query",
    "mutation",
    "subscription",
    "fragment",
    "on",
    "true",
    "false",
    "null",
    "head",
    "stream",
    "events",
    "order",
    "orders",
    "customerStats",
    "product",
    "products",
    "lowStock",
    "projections",
    "registerProduct",
    "receiveStock",
    "changePrice",
    "placeOrder",
    "confirmOrder",
    "shipOrder",
    "cancelOrder",
    "appendToStream",
    "rebuildProjection",
    "pauseProjection",
    "resumeProjection",
    "id",
    "after",
    "limit",
    "filter",
    "atLeast",
    "first",
    "threshold",
    "payload",
    "position",
    "__typename",
    "__schema",
    "__type",
    "ofType",
    "fields",
    "PLACED",
    "ANY",
    "NO_STREAM",
    "exact",
    "state",
    "Int",
    "String",
    "Position",
    "$id",
    "$after",
    "$limit",
    "$x",
    "@include",
    "@skip",
    "@deprecated",
    "if",
    "Query",
    "Mutation",
    "Event",
    "...F",
    "\"orders\"",
    "\"products\"",
    "\"\"",
    "\"-1\"",
    "\"18446744073709551615\"",
    "\"18446744073709551616\"",
    "-1",
    "0",
    "2147483648",
    "9223372036854775808",
    "1e400",
    "-0.0",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "#",
    "\"\"\"",
];

/// Argument values worth trying: limits, signs, overflows, odd strings, wrong types.
fn arg_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop_oneof![
            Just("0"),
            Just("-1"),
            Just("1"),
            Just("2147483647"),
            Just("2147483648"),
            Just("-2147483649"),
            Just("18446744073709551615"),
            Just("1e308"),
            Just("1.5"),
            Just("\"0\""),
            Just("\"-1\""),
            Just("\"18446744073709551615\""),
            Just("\"18446744073709551616\""),
            Just("\"abc\""),
            Just("\"\""),
            Just("null"),
            Just("true"),
            Just("PLACED"),
            Just("ANY"),
            Just("NOPE"),
            Just("[]"),
            Just("{}"),
            Just("$x"),
            Just("$id"),
            Just("\"product-p1\""),
            Just("\"orders\""),
            Just("\"products\""),
            Just("{state: ANY}"),
            Just("{exact: \"1\", state: ANY}"),
            Just("[{productId: \"p1\", quantity: 1}]"),
            Just("[{type: \"T\", payload: {}}]"),
            Just("{categories: [\"product\"], types: null}"),
        ]
        .prop_map(str::to_string),
        "\\PC{0,16}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
        (1usize..5000).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
        (1usize..64).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
    ]
}

const FIELDS: &[&str] = &[
    "head",
    "stream",
    "events",
    "order",
    "orders",
    "customerStats",
    "product",
    "products",
    "lowStock",
    "projections",
    "position",
    "streamId",
    "type",
    "payload",
    "metadata",
    "extra",
    "nodes",
    "edges",
    "node",
    "pageInfo",
    "cursor",
    "name",
    "state",
    "lag",
    "__typename",
    "__schema",
    "types",
    "fields",
    "registerProduct",
    "placeOrder",
    "appendToStream",
    "pauseProjection",
    "streams",
    "version",
    "nope",
];

const ARGS: &[&str] = &[
    "id",
    "after",
    "limit",
    "filter",
    "atLeast",
    "first",
    "threshold",
    "fromVersion",
    "backwards",
    "customerId",
    "status",
    "productId",
    "priceCents",
    "quantity",
    "name",
    "streamId",
    "expectedVersion",
    "events",
    "orderId",
    "lines",
    "idempotencyKey",
    "bogus",
];

/// A selection set generated from the schema's names: aliases, arguments, nesting.
fn selection() -> impl Strategy<Value = String> {
    let field = (
        proptest::option::of("[a-z][a-zA-Z0-9_]{0,6}"),
        proptest::sample::select(FIELDS),
        proptest::collection::vec((proptest::sample::select(ARGS), arg_value()), 0..4),
    )
        .prop_map(|(alias, name, args)| {
            let mut text = String::new();
            if let Some(alias) = alias {
                text.push_str(&alias);
                text.push_str(": ");
            }
            text.push_str(name);
            if !args.is_empty() {
                let args: Vec<String> =
                    args.into_iter().map(|(n, v)| format!("{n}: {v}")).collect();
                text.push_str(&format!("({})", args.join(", ")));
            }
            text
        })
        .boxed();
    let leaf = proptest::collection::vec(field.clone(), 1..4).prop_map(|f| f.join(" "));
    leaf.prop_recursive(6, 64, 4, move |inner| {
        proptest::collection::vec(
            (field.clone(), proptest::option::of(inner)).prop_map(|(f, sub)| match sub {
                Some(sub) => format!("{f} {{ {sub} }}"),
                None => f,
            }),
            1..4,
        )
        .prop_map(|f| f.join(" "))
    })
}

fn generated_document() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(""),
            Just("query "),
            Just("mutation "),
            Just("subscription "),
            Just("query Q($x: Int, $id: String) ")
        ],
        selection(),
        // Many aliases of one field: breadth instead of depth.
        proptest::option::of((1usize..1500, proptest::sample::select(FIELDS))),
    )
        .prop_map(|(op, sel, wide)| {
            let mut doc = format!("{op}{{ {sel}");
            if let Some((n, field)) = wide {
                for i in 0..n {
                    doc.push_str(&format!(" a{i}: {field}"));
                }
            }
            doc.push_str(" }");
            doc
        })
}

/// Splits a document into tokens: punctuation, strings, names and numbers.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == ',' {
            i += 1;
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(chars.len());
            tokens.push(chars[start..i].iter().collect());
        } else if c == '.' && chars.get(i + 1) == Some(&'.') {
            tokens.push("...".into());
            i += 3;
        } else if c.is_alphanumeric() || c == '_' || c == '-' || c == '$' || c == '@' {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// One edit of a token list; indexes are taken modulo the list's length.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Insert(usize, &'static str),
    InsertValue(usize, String),
    Replace(usize, String),
    Swap(usize, usize),
    Alias(usize, String),
    /// Copies a run of tokens of another template in.
    Splice(usize, usize, usize, usize),
    /// Wraps everything from the index on in braces: deeper nesting.
    Nest(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let i = any::<usize>();
    prop_oneof![
        i.prop_map(Edit::Delete),
        i.prop_map(Edit::Duplicate),
        (i, proptest::sample::select(VOCABULARY)).prop_map(|(i, t)| Edit::Insert(i, t)),
        (i, arg_value()).prop_map(|(i, v)| Edit::InsertValue(i, v)),
        (i, arg_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        (i, any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
        (i, "[a-z_][a-zA-Z0-9_]{0,6}").prop_map(|(i, a)| Edit::Alias(i, a)),
        (i, any::<usize>(), any::<usize>(), 1usize..12)
            .prop_map(|(i, t, s, n)| Edit::Splice(i, t, s, n)),
        (i, any::<u8>()).prop_map(|(i, d)| Edit::Nest(i, d)),
    ]
}

fn mutate(template: &str, edits: &[Edit]) -> String {
    let mut tokens = tokenize(template);
    for edit in edits {
        let len = tokens.len().max(1);
        match edit {
            Edit::Delete(i) if !tokens.is_empty() => {
                tokens.remove(i % len);
            }
            Edit::Duplicate(i) if !tokens.is_empty() => {
                let t = tokens[i % len].clone();
                tokens.insert(i % len, t);
            }
            Edit::Insert(i, t) => tokens.insert(i % (tokens.len() + 1), (*t).to_string()),
            Edit::InsertValue(i, v) => tokens.insert(i % (tokens.len() + 1), v.clone()),
            Edit::Replace(i, v) if !tokens.is_empty() => tokens[i % len] = v.clone(),
            Edit::Swap(i, j) if !tokens.is_empty() => tokens.swap(i % len, j % len),
            Edit::Alias(i, a) => tokens.insert(i % (tokens.len() + 1), format!("{a}:")),
            Edit::Splice(i, t, s, n) => {
                let other = tokenize(TEMPLATES[t % TEMPLATES.len()]);
                let start = s % other.len().max(1);
                let end = (start + n).min(other.len());
                let at = i % (tokens.len() + 1);
                tokens.splice(at..at, other[start..end].iter().cloned());
            }
            Edit::Nest(i, depth) => {
                let at = i % (tokens.len() + 1);
                let depth = usize::from(*depth % 40) + 1;
                for _ in 0..depth {
                    tokens.insert(at, "x {".into());
                    tokens.push("}".into());
                }
            }
            _ => {}
        }
    }
    tokens.join(" ")
}

fn mutated_template() -> impl Strategy<Value = String> {
    (0..TEMPLATES.len(), proptest::collection::vec(edit(), 0..6))
        .prop_map(|(t, edits)| mutate(TEMPLATES[t], &edits))
}

/// Valid variables of each template (same order as [`TEMPLATES`]).
fn template_variables(t: usize) -> Value {
    match t {
        1 => json!({ "id": "product-p1", "limit": 2 }),
        2 => json!({ "after": "0", "limit": 10, "filter": { "categories": ["order"] } }),
        3 => json!({ "id": "o1", "at": "1" }),
        4 => json!({ "customer": "c1", "status": "PLACED", "first": 5 }),
        5 => json!({ "id": "p1", "first": 5, "threshold": 100 }),
        7 => json!({ "id": "p2", "price": 100, "key": "k-1" }),
        8 => json!({ "id": "p1", "qty": 1 }),
        9 => json!({ "id": "p1", "price": 300 }),
        10 => {
            json!({ "order": "o2", "customer": "c1", "lines": [{ "productId": "p1", "quantity": 1 }] })
        }
        11 | 12 => json!({ "order": "o1", "reason": "changed mind" }),
        13 => json!({ "stream": "note-1", "expected": { "state": "ANY" },
                      "events": [{ "type": "NoteTaken", "payload": { "text": "hi" } }] }),
        14 => json!({ "name": "orders" }),
        16 => json!({ "after": "0" }),
        _ => json!({}),
    }
}

/// A template with few edits and its valid variables with a few values replaced: most
/// of these pass validation and reach the resolvers with odd values.
fn templated_case() -> impl Strategy<Value = (String, Value)> {
    (
        0..TEMPLATES.len(),
        prop_oneof![2 => Just(Vec::new()), 1 => proptest::collection::vec(edit(), 1..3)],
        proptest::collection::vec((any::<proptest::sample::Index>(), arbitrary_json()), 0..3),
    )
        .prop_map(|(t, edits, overrides)| {
            let mut variables = template_variables(t);
            if let Value::Object(map) = &mut variables {
                let names: Vec<String> = map.keys().cloned().collect();
                for (index, value) in overrides {
                    if !names.is_empty() {
                        map.insert(index.get(&names).clone(), value);
                    }
                }
            }
            (mutate(TEMPLATES[t], &edits), variables)
        })
}

fn document() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => mutated_template(),
        2 => generated_document(),
        1 => "\\PC{0,120}",
        1 => "[{}()\\[\\]:!$@=|. a-zA-Z0-9_\"#\n]{0,120}",
        // Deep nesting of braces, brackets or parentheses: the parser's recursion.
        1 => (prop_oneof![Just("{a"), Just("{ a(x: ["), Just("[") , Just("{...on Query")], 1usize..3000)
            .prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("p1"),
            Just("o1"),
            Just("c1"),
            Just("product-p1"),
            Just("order-o1"),
            Just("0"),
            Just("-1"),
            Just("18446744073709551615"),
            Just("orders"),
            Just("products"),
            Just("ANY"),
            Just("PLACED"),
            Just(""),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("productId".to_string()),
                    Just("quantity".to_string()),
                    Just("type".to_string()),
                    Just("payload".to_string()),
                    Just("exact".to_string()),
                    Just("state".to_string()),
                    Just("categories".to_string()),
                    "[a-zA-Z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Variables: mostly an object with the templates' variable names, sometimes anything.
fn variables() -> impl Strategy<Value = Value> {
    let names = prop_oneof![
        Just("id"),
        Just("from"),
        Just("back"),
        Just("limit"),
        Just("after"),
        Just("filter"),
        Just("at"),
        Just("customer"),
        Just("status"),
        Just("first"),
        Just("threshold"),
        Just("price"),
        Just("qty"),
        Just("key"),
        Just("order"),
        Just("lines"),
        Just("reason"),
        Just("stream"),
        Just("expected"),
        Just("events"),
        Just("name"),
        Just("x"),
    ]
    .prop_map(str::to_string);
    prop_oneof![
        4 => proptest::collection::btree_map(names, arbitrary_json(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => arbitrary_json(),
    ]
}

#[derive(Clone, Debug)]
struct GraphqlCase {
    query: String,
    variables: Value,
    operation_name: Option<String>,
    /// 0 reader, 1 writer, 2 admin, 3 a wrong key, `None` no key.
    who: Option<usize>,
    /// Sent as a `GET` query string instead of a `POST` body.
    get: bool,
}

fn graphql_case() -> impl Strategy<Value = GraphqlCase> {
    (
        prop_oneof![templated_case(), (document(), variables())],
        proptest::option::weighted(
            0.2,
            prop_oneof![
                Just("Q".to_string()),
                Just("A".to_string()),
                Just("B".to_string()),
                "\\PC{0,10}",
            ],
        ),
        prop_oneof![18 => (0usize..3).prop_map(Some), 1 => Just(Some(3)), 1 => Just(None)],
        proptest::bool::weighted(0.15),
    )
        .prop_map(
            |((query, variables), operation_name, who, get)| GraphqlCase {
                query,
                variables,
                operation_name,
                who,
                get,
            },
        )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn run_case(fixture: &Fixture, case: &GraphqlCase) -> Result<(), TestCaseError> {
    let mut answer = None;
    if case.get {
        let mut qs = format!(
            "query={}&variables={}",
            percent_encode(&case.query),
            percent_encode(&case.variables.to_string())
        );
        if let Some(name) = &case.operation_name {
            qs.push_str(&format!("&operationName={}", percent_encode(name)));
        }
        answer = fixture.get(case.who, &qs);
    }
    // A POST, also for a GET whose URI would be too long to send.
    let (status, body) = match answer {
        Some(answer) => answer,
        None => {
            let mut body = json!({ "query": case.query, "variables": case.variables });
            if let Some(name) = &case.operation_name {
                body["operationName"] = Value::String(name.clone());
            }
            fixture.post_raw(case.who, body.to_string().into_bytes())
        }
    };
    check_response(fixture, status, &body, case)?;
    fixture.still_serving()
}

/// Runs `cases()` cases of `strategy` through `test` on one fixture.
fn fuzz<S: Strategy>(strategy: S, test: impl Fn(&Fixture, S::Value) -> Result<(), TestCaseError>) {
    let fixture = Fixture::new();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |value| test(&fixture, value));
    eprintln!(
        "{} cases; first outcome of each response: {:?}",
        cases(),
        fixture.outcomes.lock().unwrap()
    );
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn arbitrary_documents_and_variables_get_data_or_coded_errors() {
    fuzz(graphql_case(), |fixture, case| run_case(fixture, &case));
}

#[derive(Clone, Debug)]
enum RawBody {
    Bytes(Vec<u8>),
    Json(Value),
    Text(String),
}

fn raw_body() -> impl Strategy<Value = RawBody> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(RawBody::Bytes),
        arbitrary_json().prop_map(RawBody::Json),
        // A request object with fields of the wrong types.
        (arbitrary_json(), arbitrary_json(), arbitrary_json()).prop_map(|(q, v, o)| {
            RawBody::Json(json!({ "query": q, "variables": v, "operationName": o }))
        }),
        (document(), arbitrary_json())
            .prop_map(|(q, e)| { RawBody::Json(json!({ "query": q, "extensions": e })) }),
        // A batch: this server takes one operation per request.
        proptest::collection::vec(document(), 0..3).prop_map(|qs| {
            RawBody::Json(Value::Array(
                qs.into_iter().map(|q| json!({ "query": q })).collect(),
            ))
        }),
        "\\PC{0,200}".prop_map(RawBody::Text),
        (1usize..2000).prop_map(|n| RawBody::Text(format!("{}{}", "[".repeat(n), "]".repeat(n)))),
        (1usize..2000).prop_map(|n| RawBody::Text(format!(
            "{{\"query\": \"{{ head }}\", \"variables\": {}0{} }}",
            "{\"a\":".repeat(n),
            "}".repeat(n)
        ))),
    ]
}

#[test]
fn arbitrary_request_bodies_get_coded_errors() {
    fuzz(
        (
            raw_body(),
            prop_oneof![Just(Some(2)), Just(Some(0)), Just(None)],
        ),
        |fixture, (body, who)| {
            let bytes = match &body {
                RawBody::Bytes(b) => b.clone(),
                RawBody::Json(v) => v.to_string().into_bytes(),
                RawBody::Text(t) => t.clone().into_bytes(),
            };
            let (status, answer) = fixture.post_raw(who, bytes);
            check_response(fixture, status, &answer, &body)?;
            fixture.still_serving()
        },
    );
}

/// Inputs the fuzzer found, kept as regression tests.
#[test]
fn regressions() {
    let fixture = Fixture::new();
    let found = [
        // An input object variable given as a list came back as INTERNAL.
        (
            TEMPLATES[2],
            json!({ "after": "0", "filter": [], "limit": 10 }),
        ),
    ];
    for (query, variables) in found {
        let case = GraphqlCase {
            query: query.to_string(),
            variables,
            operation_name: None,
            who: Some(0),
            get: false,
        };
        run_case(&fixture, &case).unwrap();
    }
}
