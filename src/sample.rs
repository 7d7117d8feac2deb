//! A sample log of the reference domain: orders placed, confirmed and cancelled, with the
//! stock reservations and releases they cause, over 200 products. The projection catch-up
//! benchmarks and the crash tests of the read models build their logs with it.

use annals_store::{
    Durability, EventStore, ExpectedVersion, NewEvent, RocksEventStore, StoreError, StoreOptions,
    StreamAppend, StreamId,
};
use serde_json::json;

const PRODUCTS: usize = 200;
const ORDERS_PER_COMMIT: usize = 100;

/// Writes the sample log until the store holds at least `target` events, in large
/// multi-stream commits.
pub async fn build_log(store: &RocksEventStore, target: u64) -> Result<(), StoreError> {
    for p in 0..PRODUCTS {
        let stream = StreamId::new(format!("product-p{p}"))?;
        if store.stream_version(&stream).await? > 0 {
            continue;
        }
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::json("ProductRegistered", &json!({"sku": format!("SKU-{p}"), "name": format!("Product {p}"), "price_cents": 250})),
                    NewEvent::json("StockReceived", &json!({"quantity": 100_000_000u64})),
                ],
            )
            .await?;
    }
    let mut order = store.head().0 as usize;
    while store.head().0 < target {
        let mut appends = Vec::new();
        let mut per_product: Vec<Vec<NewEvent>> = vec![Vec::new(); PRODUCTS];
        for _ in 0..ORDERS_PER_COMMIT {
            let p = order % PRODUCTS;
            let quantity = 1 + (order % 3) as u64;
            // Schema version 2, with `total_cents`, as the domain writes it today.
            let mut events = vec![NewEvent::json(
                "OrderPlaced",
                &json!({"customer_id": format!("c{}", order % 5_000), "lines": [{"product_id": format!("p{p}"), "quantity": quantity, "unit_price_cents": 250}], "total_cents": 250 * quantity}),
            ).with_schema_version(2)];
            per_product[p].push(NewEvent::json(
                "StockReserved",
                &json!({"order_id": format!("o{order}"), "quantity": quantity}),
            ));
            if order.is_multiple_of(3) {
                events.push(NewEvent::json("OrderConfirmed", &json!({})));
            }
            if order % 5 == 1 {
                events.push(NewEvent::json(
                    "OrderCancelled",
                    &json!({"reason": "bench"}),
                ));
                per_product[p].push(NewEvent::json(
                    "StockReleased",
                    &json!({"order_id": format!("o{order}"), "quantity": quantity}),
                ));
            }
            appends.push(StreamAppend::new(
                StreamId::new(format!("order-o{order}"))?,
                ExpectedVersion::NoStream,
                events,
            ));
            order += 1;
        }
        for (p, events) in per_product.into_iter().enumerate() {
            if !events.is_empty() {
                appends.push(StreamAppend::new(
                    StreamId::new(format!("product-p{p}"))?,
                    ExpectedVersion::Any,
                    events,
                ));
            }
        }
        store.append_multi(appends).await?;
    }
    Ok(())
}

/// Options for the store a generated log is written with: big commits, no fsync.
pub fn log_options() -> StoreOptions {
    StoreOptions {
        max_events_per_append: 10_000,
        ..StoreOptions::with_durability(Durability::Buffered)
    }
}
