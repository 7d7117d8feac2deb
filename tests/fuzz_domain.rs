//! Fuzz targets of the domain's input surfaces, driven by proptest's generators: the
//! `OrderPlaced` v1 → v2 upcaster and the event decoders get arbitrary JSON and must answer
//! with a value or an error, never a panic or an overflow. `ANNALS_FUZZ_CASES` sets the
//! number of cases (default 2,000; `make fuzz` runs many more).

use annals::domain::{self, OrderEvent, ProductEvent};
use annals_store::DomainEvent;
use proptest::prelude::*;
use serde_json::{Value, json};

fn cases() -> u32 {
    std::env::var("ANNALS_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000)
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("lines".to_string()),
                    Just("quantity".to_string()),
                    Just("unit_price_cents".to_string()),
                    Just("customer_id".to_string()),
                    Just("product_id".to_string()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn line() -> impl Strategy<Value = (u64, u64)> {
    (any::<u64>(), any::<u64>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn upcaster_answers_arbitrary_json_without_panicking(payload in arbitrary_json()) {
        let upcasters = domain::upcasters();
        if let Ok((value, version)) = upcasters.upcast_value("OrderPlaced", 1, payload) {
            prop_assert_eq!(version, 2);
            prop_assert!(value["total_cents"].is_u64());
        }
    }

    #[test]
    fn upcaster_totals_are_exact_or_refused_on_overflow(lines in proptest::collection::vec(line(), 0..5)) {
        let payload = json!({
            "customer_id": "c",
            "lines": lines.iter().map(|(q, p)| json!({"product_id": "p", "quantity": q, "unit_price_cents": p})).collect::<Vec<_>>(),
        });
        let exact = lines.iter().try_fold(0u64, |acc, (q, p)| q.checked_mul(*p)?.checked_add(acc));
        let result = domain::upcasters().upcast_value("OrderPlaced", 1, payload);
        match exact {
            Some(total) => prop_assert_eq!(result.unwrap().0["total_cents"].as_u64(), Some(total)),
            None => prop_assert!(result.is_err()),
        }
    }

    #[test]
    fn event_decoders_answer_arbitrary_json_without_panicking(
        payload in arbitrary_json(),
        event_type in prop_oneof![
            Just("OrderPlaced"), Just("OrderConfirmed"), Just("OrderShipped"), Just("OrderCancelled"),
            Just("ProductRegistered"), Just("StockReceived"), Just("StockReserved"),
            Just("StockReleased"), Just("PriceChanged"), Just("Unknown"),
        ],
    ) {
        let _ = OrderEvent::decode(event_type, payload.clone());
        let _ = ProductEvent::decode(event_type, payload);
    }
}
