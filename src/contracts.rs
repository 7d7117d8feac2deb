//! The published contracts, generated from code: the GraphQL SDL
//! (`schema/annals.graphql`) and one JSON Schema per domain event type and schema
//! version (`schema/events/<Type>.v<N>.json`, the payload as stored).
//!
//! `annals schema` writes them; `tests/graphql_schema.rs` fails when the committed files
//! differ from what the code generates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use annals_store::DomainEvent;
use schemars::JsonSchema;
use serde_json::{Map, Value, json};

use crate::domain::{OrderEvent, OrderPlacedV1, PaymentEvent, ProductEvent};
use crate::webhooks::WebhookEvent;

/// One generated file, with its path relative to the schema directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contract {
    /// Path under the schema directory (`annals.graphql`, `events/OrderPlaced.v2.json`).
    pub path: PathBuf,
    /// The file's contents.
    pub contents: String,
}

/// Every contract, in a stable order.
pub fn generate() -> Result<Vec<Contract>, String> {
    let mut contracts = vec![Contract {
        path: PathBuf::from("annals.graphql"),
        contents: crate::graphql::sdl(),
    }];
    contracts.extend(variant_schemas::<OrderEvent>(&order_samples())?);
    contracts.extend(variant_schemas::<ProductEvent>(&product_samples())?);
    contracts.extend(variant_schemas::<PaymentEvent>(&payment_samples())?);
    contracts.extend(variant_schemas::<WebhookEvent>(&webhook_samples())?);
    contracts.push(struct_schema::<DeadlineReached>(
        annals_projections::process::DEADLINE_REACHED,
        1,
        "A process manager's deadline fired (stream `{process}-{instance}`, e.g. `checkout-{order id}`).",
    ));
    contracts.push(struct_schema::<crate::lifecycle::SubjectForgotten>(
        crate::lifecycle::SUBJECT_FORGOTTEN,
        1,
        "A subject's personal data was erased: its key is deleted (stream `erasure-{subject ref}`). Names the subject by its ref only.",
    ));
    contracts.push(struct_schema::<OrderPlacedV1>(
        "OrderPlaced",
        1,
        "The customer placed the order (schema v1, before `total_cents`; upcast to v2 on read).",
    ));
    contracts.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(contracts)
}

/// One value of every variant: the schema version is the event's own, and
/// [`variant_schemas`] refuses to run if a variant of the enum has no sample.
fn order_samples() -> Vec<OrderEvent> {
    vec![
        OrderEvent::OrderPlaced {
            customer_id: String::new(),
            lines: Vec::new(),
            total_cents: 0,
        },
        OrderEvent::OrderAwaitingPayment {
            payment_id: String::new(),
        },
        OrderEvent::OrderConfirmed {},
        OrderEvent::OrderShipped {
            tracking_number: String::new(),
        },
        OrderEvent::OrderCancelled {
            reason: String::new(),
        },
    ]
}

fn product_samples() -> Vec<ProductEvent> {
    vec![
        ProductEvent::ProductRegistered {
            sku: String::new(),
            name: String::new(),
            price_cents: 0,
        },
        ProductEvent::StockReceived { quantity: 0 },
        ProductEvent::StockReserved {
            order_id: String::new(),
            quantity: 0,
        },
        ProductEvent::StockShipped {
            order_id: String::new(),
            quantity: 0,
        },
        ProductEvent::StockReleased {
            order_id: String::new(),
            quantity: 0,
        },
        ProductEvent::PriceChanged { price_cents: 0 },
    ]
}

fn webhook_samples() -> Vec<WebhookEvent> {
    vec![
        WebhookEvent::WebhookSubscribed {
            url: String::new(),
            event_types: Vec::new(),
            categories: Vec::new(),
        },
        WebhookEvent::WebhookDeleted {},
        WebhookEvent::WebhookDelivered { up_to: 0 },
    ]
}

fn payment_samples() -> Vec<PaymentEvent> {
    vec![
        PaymentEvent::PaymentRequested {
            order_id: String::new(),
            amount_cents: 0,
        },
        PaymentEvent::PaymentAuthorized {
            authorization: String::new(),
        },
        PaymentEvent::PaymentDeclined {
            reason: String::new(),
        },
        PaymentEvent::PaymentCaptured { amount_cents: 0 },
        PaymentEvent::PaymentRefunded {
            amount_cents: 0,
            reason: String::new(),
        },
    ]
}

// The payload of `DeadlineReached` as its contract describes it: the shape of
// `annals_projections::process::DeadlineReached`, which the engine crate writes without
// depending on a schema generator (a test checks that the two agree). A plain comment, not
// a doc comment: the contract's description is the one `generate` gives.
#[derive(schemars::JsonSchema, serde::Serialize, serde::Deserialize)]
#[allow(dead_code)]
struct DeadlineReached {
    /// The deadline's name (`payment`).
    deadline: String,
    /// When it was due (microseconds since the Unix epoch).
    due_micros: i64,
}

fn file_name(event_type: &str, version: u16) -> PathBuf {
    PathBuf::from(format!("events/{event_type}.v{version}.json"))
}

fn document(
    event_type: &str,
    version: u16,
    description: Option<&Value>,
    body: &Value,
    defs: Option<&Map<String, Value>>,
) -> String {
    let mut doc = Map::new();
    doc.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    doc.insert("title".into(), json!(format!("{event_type} v{version}")));
    if let Some(description) = description {
        doc.insert("description".into(), description.clone());
    }
    doc.insert("x-annals-event-type".into(), json!(event_type));
    doc.insert("x-annals-schema-version".into(), json!(version));
    if let Some(body) = body.as_object() {
        for (k, v) in body {
            if k != "$schema" && k != "$defs" && k != "title" {
                doc.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(defs) = defs {
        let used = referenced_defs(body, defs);
        if !used.is_empty() {
            doc.insert("$defs".into(), Value::Object(used));
        }
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default();
    text.push('\n');
    text
}

/// The `$defs` entries `value` refers to, transitively.
fn referenced_defs(value: &Value, defs: &Map<String, Value>) -> Map<String, Value> {
    let mut used = Map::new();
    let mut pending = vec![value.clone()];
    while let Some(v) = pending.pop() {
        let text = v.to_string();
        for (name, def) in defs {
            if !used.contains_key(name) && text.contains(&format!("\"#/$defs/{name}\"")) {
                used.insert(name.clone(), def.clone());
                pending.push(def.clone());
            }
        }
    }
    used
}

/// One schema per variant of an adjacently tagged event enum (`{"type", "data"}`): the
/// stored payload is the `data` part.
fn variant_schemas<E: JsonSchema + DomainEvent>(samples: &[E]) -> Result<Vec<Contract>, String> {
    let root = schemars::schema_for!(E).to_value();
    let defs = root.get("$defs").and_then(Value::as_object);
    let branches = root
        .get("oneOf")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: expected a oneOf schema", E::schema_name()))?;
    let mut covered = BTreeSet::new();
    let mut out = Vec::new();
    for sample in samples {
        let event_type = sample.event_type();
        let branch = branches
            .iter()
            .find(|b| b["properties"]["type"]["const"] == event_type)
            .ok_or_else(|| format!("no schema branch for {event_type}"))?;
        covered.insert(event_type);
        let version = sample.schema_version();
        out.push(Contract {
            path: file_name(event_type, version),
            contents: document(
                event_type,
                version,
                branch.get("description"),
                &branch["properties"]["data"],
                defs,
            ),
        });
    }
    if covered.len() != branches.len() {
        return Err(format!(
            "{} has {} variants but {} samples: add a sample for the new variant in src/contracts.rs",
            E::schema_name(),
            branches.len(),
            covered.len()
        ));
    }
    Ok(out)
}

fn struct_schema<T: JsonSchema>(event_type: &str, version: u16, description: &str) -> Contract {
    let root = schemars::schema_for!(T).to_value();
    let defs = root.get("$defs").and_then(Value::as_object);
    Contract {
        path: file_name(event_type, version),
        contents: document(event_type, version, Some(&json!(description)), &root, defs),
    }
}

/// Writes every contract under `dir` and removes event schemas that the code no longer
/// generates. Returns the paths written.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let contracts = generate()?;
    let events = dir.join("events");
    std::fs::create_dir_all(&events)
        .map_err(|e| format!("cannot create {}: {e}", events.display()))?;
    for stale in stale_files(dir, &contracts) {
        std::fs::remove_file(dir.join(&stale))
            .map_err(|e| format!("cannot remove {}: {e}", stale.display()))?;
    }
    let mut written = Vec::new();
    for contract in contracts {
        let path = dir.join(&contract.path);
        std::fs::write(&path, contract.contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn stale_files(dir: &Path, contracts: &[Contract]) -> Vec<PathBuf> {
    let expected: BTreeSet<&Path> = contracts.iter().map(|c| c.path.as_path()).collect();
    let Ok(entries) = std::fs::read_dir(dir.join("events")) else {
        return Vec::new();
    };
    let mut stale: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| PathBuf::from("events").join(e.file_name()))
        .filter(|p| !expected.contains(p.as_path()))
        .collect();
    stale.sort();
    stale
}

/// What differs between the committed contracts in `dir` and the generated ones: one
/// line per stale, missing or unexpected file (empty when everything is current).
pub fn check(dir: &Path) -> Result<Vec<String>, String> {
    let contracts = generate()?;
    let mut problems = Vec::new();
    for contract in &contracts {
        let path = dir.join(&contract.path);
        match std::fs::read_to_string(&path) {
            Ok(text) if text == contract.contents => {}
            Ok(_) => problems.push(format!("{} is stale", path.display())),
            Err(_) => problems.push(format!("{} is missing", path.display())),
        }
    }
    for stale in stale_files(dir, &contracts) {
        problems.push(format!(
            "{} is not generated by the code any more",
            dir.join(stale).display()
        ));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_deadline_contract_has_the_engines_shape() {
        let engine = annals_projections::process::DeadlineReached {
            deadline: "payment".into(),
            due_micros: -3,
        };
        let json = serde_json::to_value(&engine).unwrap();
        let contract: super::DeadlineReached = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&contract).unwrap(), json);
    }
}
