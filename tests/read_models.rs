//! The read models of the reference domain: given events, then the read model — plus the
//! whole path from commands through the projection runtime to the queries.

use annals::error::HasCode;
use std::sync::Arc;
use std::time::Duration;

use annals::domain::{self, Commerce, LineRequest, OrderStatus};
use annals::read_models::{
    self, CommerceReadModels, OrderFilter, OrdersProjection, PageLimits, ProductsProjection,
};
use annals_projections::testkit::{EventLog, given};
use annals_projections::{ReadModelStore, RuntimeOptions};
use annals_store::{
    BusOptions, CommandBus, CommandContext, EventStore, ExpectedVersion, NewEvent, RocksEventStore,
    StoreOptions, StreamId,
};
use serde_json::json;

fn placed(log: EventLog, order: &str, customer: &str, total: u64) -> EventLog {
    log.event(
        &format!("order-{order}"),
        "OrderPlaced",
        json!({"customer_id": customer, "lines": [{"product_id": "p1", "quantity": 1, "unit_price_cents": total}], "total_cents": total}),
    )
}

fn queries(read: &Arc<ReadModelStore>) -> CommerceReadModels {
    CommerceReadModels::new(read.clone(), PageLimits { default: 2, max: 3 })
}

#[test]
fn placed_order_has_details_indexes_and_customer_stats() {
    let log = placed(EventLog::new(), "o1", "alice", 1200);
    given(OrdersProjection, log.into_events()).then_store(|read| {
        let q = queries(read);
        let order = q.order("o1").unwrap().unwrap();
        assert_eq!(order.customer_id, "alice");
        assert_eq!(order.status, OrderStatus::Placed);
        assert_eq!(order.total_cents, 1200);
        assert_eq!(order.lines[0].product_id, "p1");
        assert_eq!((order.version, order.placed_position), (1, 1));
        let stats = q.customer_stats("alice").unwrap().unwrap();
        assert_eq!((stats.total_orders, stats.revenue_cents), (1, 1200));
        assert_eq!(stats.average_order_value_cents(), 1200);
        assert!(q.order("o2").unwrap().is_none());
        assert!(q.customer_stats("bob").unwrap().is_none());
    });
}

#[test]
fn status_changes_move_the_order_between_indexes() {
    let log = placed(EventLog::new(), "o1", "alice", 1000)
        .event("order-o1", "OrderConfirmed", json!({}))
        .event(
            "order-o1",
            "OrderShipped",
            json!({"tracking_number": "TRK-1"}),
        );
    given(OrdersProjection, log.into_events()).then_store(|read| {
        let q = queries(read);
        let order = q.order("o1").unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Shipped);
        assert_eq!(order.tracking_number.as_deref(), Some("TRK-1"));
        assert_eq!(order.version, 3);
        let by = |status| OrderFilter {
            customer_id: None,
            status: Some(status),
        };
        assert!(
            q.orders(&by(OrderStatus::Placed), None, None)
                .unwrap()
                .items
                .is_empty()
        );
        assert!(
            q.orders(&by(OrderStatus::Confirmed), None, None)
                .unwrap()
                .items
                .is_empty()
        );
        assert_eq!(
            q.orders(&by(OrderStatus::Shipped), None, None)
                .unwrap()
                .items
                .len(),
            1
        );
    });
}

#[test]
fn cancellation_takes_the_order_out_of_revenue() {
    let log = placed(EventLog::new(), "o1", "alice", 1000);
    let log = placed(log, "o2", "alice", 3000).event(
        "order-o1",
        "OrderCancelled",
        json!({"reason": "changed mind"}),
    );
    given(OrdersProjection, log.into_events()).then_store(|read| {
        let q = queries(read);
        let stats = q.customer_stats("alice").unwrap().unwrap();
        assert_eq!(stats.total_orders, 2);
        assert_eq!(stats.cancelled_orders, 1);
        assert_eq!(stats.revenue_cents, 3000);
        assert_eq!(stats.average_order_value_cents(), 3000);
        let order = q.order("o1").unwrap().unwrap();
        assert_eq!(order.cancel_reason.as_deref(), Some("changed mind"));
    });
}

#[test]
fn orders_paginate_by_cursor_per_customer_and_status() {
    let mut log = EventLog::new();
    for i in 0..5 {
        log = placed(log, &format!("a{i}"), "alice", 100 + i);
        log = placed(log, &format!("b{i}"), "bob", 200 + i);
    }
    log = log.event("order-a3", "OrderConfirmed", json!({}));
    log = log.event("order-b1", "OrderCancelled", json!({"reason": "r"}));
    log = log.event("order-b3", "OrderConfirmed", json!({})).event(
        "order-b3",
        "OrderShipped",
        json!({"tracking_number": "T"}),
    );
    given(OrdersProjection, log.into_events()).then_store(|read| {
        let q = queries(read);
        let alice = OrderFilter {
            customer_id: Some("alice".into()),
            status: None,
        };
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = q.orders(&alice, None, after.as_deref()).unwrap();
            assert!(page.items.len() <= 2, "default page size");
            seen.extend(page.items.iter().map(|(_, o)| o.id.clone()));
            if !page.has_next_page {
                break;
            }
            after = page.end_cursor().map(str::to_string);
        }
        assert_eq!(seen, ["a0", "a1", "a2", "a3", "a4"]);

        let alice_placed = OrderFilter {
            customer_id: Some("alice".into()),
            status: Some(OrderStatus::Placed),
        };
        let page = q.orders(&alice_placed, Some(3), None).unwrap();
        let ids: Vec<_> = page.items.iter().map(|(_, o)| o.id.as_str()).collect();
        assert_eq!(ids, ["a0", "a1", "a2"]);
        let rest = q.orders(&alice_placed, Some(3), page.end_cursor()).unwrap();
        let ids: Vec<_> = rest.items.iter().map(|(_, o)| o.id.as_str()).collect();
        assert_eq!(ids, ["a4"]);
        assert!(!rest.has_next_page);

        // Every order, in placement order, across all four statuses, page by page.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = q
                .orders(&OrderFilter::default(), Some(3), after.as_deref())
                .unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|(_, o)| o.id.clone()));
            if !page.has_next_page {
                break;
            }
            after = page.end_cursor().map(str::to_string);
        }
        assert_eq!(
            seen,
            ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]
        );
        let bob = OrderFilter {
            customer_id: Some("bob".into()),
            status: None,
        };
        let page = q.orders(&bob, Some(3), None).unwrap();
        let ids: Vec<_> = page.items.iter().map(|(_, o)| o.id.as_str()).collect();
        assert_eq!(ids, ["b0", "b1", "b2"]);
        let rest = q.orders(&bob, Some(3), page.end_cursor()).unwrap();
        let ids: Vec<_> = rest.items.iter().map(|(_, o)| o.id.as_str()).collect();
        assert_eq!(ids, ["b3", "b4"]);
        assert!(!rest.has_next_page);

        assert_eq!(
            q.orders(&alice, Some(4), None).unwrap_err().code(),
            "BAD_USER_INPUT"
        );
        assert_eq!(
            q.orders(&alice, Some(0), None).unwrap_err().code(),
            "BAD_USER_INPUT"
        );
        assert_eq!(
            q.orders(&alice, None, Some("zz")).unwrap_err().code(),
            "BAD_USER_INPUT"
        );
    });
}

#[test]
fn product_stock_follows_receipts_reservations_and_releases() {
    let log = EventLog::new()
        .event(
            "product-p1",
            "ProductRegistered",
            json!({"sku": "SKU-1", "name": "Mug", "price_cents": 900}),
        )
        .event("product-p1", "StockReceived", json!({"quantity": 10}))
        .event(
            "product-p1",
            "StockReserved",
            json!({"order_id": "o1", "quantity": 4}),
        )
        .event(
            "product-p1",
            "StockReserved",
            json!({"order_id": "o2", "quantity": 3}),
        )
        .event(
            "product-p1",
            "StockReleased",
            json!({"order_id": "o1", "quantity": 4}),
        )
        .event("product-p1", "PriceChanged", json!({"price_cents": 1100}));
    given(ProductsProjection, log.into_events()).then_store(|read| {
        let product = queries(read).product("p1").unwrap().unwrap();
        assert_eq!(
            (product.sku.as_str(), product.name.as_str()),
            ("SKU-1", "Mug")
        );
        assert_eq!(product.price_cents, 1100);
        assert_eq!(
            (product.on_hand, product.reserved, product.available),
            (10, 3, 7)
        );
        assert_eq!(product.version, 6);
    });
}

#[test]
fn low_stock_lists_products_below_the_threshold_scarcest_first() {
    let mut log = EventLog::new();
    for (id, stock) in [("a", 5u64), ("b", 0), ("c", 50), ("d", 2)] {
        let stream = format!("product-{id}");
        log = log.event(
            &stream,
            "ProductRegistered",
            json!({"sku": id, "name": id, "price_cents": 1}),
        );
        if stock > 0 {
            log = log.event(&stream, "StockReceived", json!({"quantity": stock}));
        }
    }
    log = log.event(
        "product-c",
        "StockReserved",
        json!({"order_id": "o", "quantity": 47}),
    );
    given(ProductsProjection, log.into_events()).then_store(|read| {
        let q = queries(read);
        let low: Vec<_> = q
            .low_stock(5)
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.available))
            .collect();
        assert_eq!(
            low,
            [("b".to_string(), 0), ("d".into(), 2), ("c".into(), 3)]
        );
        assert!(q.low_stock(0).unwrap().is_empty());
        let page = q.products(Some(3), None).unwrap();
        let ids: Vec<_> = page.items.iter().map(|(_, p)| p.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let rest = q.products(Some(3), page.end_cursor()).unwrap();
        assert_eq!(rest.items.len(), 1);
        assert!(!rest.has_next_page);
    });
}

#[test]
fn an_order_placed_v1_event_is_upcast_before_the_projection_sees_it() {
    let log = EventLog::new().event_v(
        "order-legacy",
        "OrderPlaced",
        1,
        json!({"customer_id": "carol", "lines": [{"product_id": "p", "quantity": 3, "unit_price_cents": 250}]}),
    );
    given(OrdersProjection, log.into_events())
        .with_upcasters(Arc::new(domain::upcasters()))
        .then_store(|read| {
            let order = queries(read).order("legacy").unwrap().unwrap();
            assert_eq!(order.total_cents, 750);
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_read_models_and_wait_for_reads_the_own_write() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(RocksEventStore::open(dir.path().join("log"), StoreOptions::default()).unwrap());
    let read = Arc::new(ReadModelStore::open(dir.path().join("read")).unwrap());
    let runtime =
        annals::read_models::start(store.clone(), read.clone(), RuntimeOptions::default()).unwrap();
    let app = Commerce::new(CommandBus::with_options(
        store.clone(),
        domain::upcasters(),
        BusOptions::default(),
    ));
    let ctx = CommandContext::by("test");
    app.register_product("mug", "SKU-MUG".into(), "Mug".into(), 900, &ctx)
        .await
        .unwrap();
    app.receive_stock("mug", 5, &ctx).await.unwrap();
    let outcome = app
        .place_order(
            "o-1",
            "dave",
            &[LineRequest {
                product_id: "mug".into(),
                quantity: 2,
            }],
            &ctx,
        )
        .await
        .unwrap();
    // No sleeping: wait for the commit's position, then read.
    runtime
        .wait_for_all(outcome.position, Duration::from_secs(10))
        .await
        .unwrap();
    let q = CommerceReadModels::new(read.clone(), PageLimits::default());
    let order = q.order("o-1").unwrap().unwrap();
    assert_eq!(
        (order.total_cents, order.status),
        (1800, OrderStatus::Placed)
    );
    let product = q.product("mug").unwrap().unwrap();
    assert_eq!(
        (product.on_hand, product.reserved, product.available),
        (5, 2, 3)
    );
    assert_eq!(
        q.customer_stats("dave").unwrap().unwrap().revenue_cents,
        1800
    );

    // An event the projection cannot apply is parked, and the projection moves on.
    let bad = store
        .append(
            StreamId::new("order-ghost").unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::json("OrderConfirmed", &json!({}))],
        )
        .await
        .unwrap();
    runtime
        .wait_for(
            read_models::ORDERS,
            bad.last_position,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let parked = runtime.parked(read_models::ORDERS).unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("unknown order"),
        "{}",
        parked[0].error
    );
    runtime.shutdown().await;
}
