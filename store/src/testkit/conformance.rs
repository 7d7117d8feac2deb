//! One conformance suite, run against every `EventStore` implementation.
//!
//! Each check is a generic `async fn` over a fresh, empty store. `store/tests/conformance.rs`
//! runs each as its own test for the embedded stores; a backend whose stores are expensive
//! to start (a cluster's) runs them in order with [`run_all`].

use std::future::Future;

use crate::{
    ChainFault, Direction, EventStore, ExpectedVersion, Metadata, NewEvent, Position, ReadFilter,
    StoreError, StreamAppend, StreamId,
};
use serde_json::json;
use uuid::Uuid;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(event_type: &str, n: u64) -> NewEvent {
    NewEvent::json(event_type, &json!({ "n": n }))
}

fn evs(event_type: &str, count: u64) -> Vec<NewEvent> {
    (0..count).map(|n| ev(event_type, n)).collect()
}

fn with_ids(ids: &[u128]) -> Vec<NewEvent> {
    ids.iter()
        .map(|i| ev("Thing", *i as u64).with_id(Uuid::from_u128(*i)))
        .collect()
}

/// Appended events read back as sent, with positions, versions, v7 ids and the chain.
pub async fn append_then_read_back<S: EventStore>(store: S) {
    let metadata = Metadata {
        correlation_id: Some(Uuid::from_u128(7)),
        causation_id: Some(Uuid::from_u128(8)),
        actor: Some("alice".into()),
        extra: [("source".to_string(), "test".to_string())].into(),
    };
    let events = vec![
        ev("OrderPlaced", 1)
            .with_metadata(metadata.clone())
            .with_schema_version(2),
        ev("OrderConfirmed", 2),
        ev("OrderShipped", 3),
    ];
    let result = store
        .append(sid("order-1"), ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!((result.first_version, result.last_version), (1, 3));
    assert_eq!(result.first_position, Position(1));
    assert_eq!(result.last_position, Position(3));
    assert!(!result.duplicate);
    assert_eq!(store.head(), Position(3));

    let read = store
        .read_stream(&sid("order-1"), 1, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(read.len(), 3);
    for (i, (recorded, sent)) in read.iter().zip(&events).enumerate() {
        assert_eq!(recorded.position, Position(i as u64 + 1));
        assert_eq!(recorded.stream_version, i as u64 + 1);
        assert_eq!(recorded.stream_id, sid("order-1"));
        assert_eq!(recorded.event_type, sent.event_type);
        assert_eq!(recorded.schema_version, sent.schema_version);
        assert_eq!(recorded.metadata, sent.metadata);
        assert_eq!(recorded.payload, sent.payload);
        assert_eq!(
            recorded.event_id.get_version_num(),
            7,
            "generated ids are v7"
        );
        assert!(recorded.recorded_at.as_micros() > 1_600_000_000_000_000);
    }
    assert_eq!(read[0].prev_hash, [0; 32], "genesis prev_hash is all zeros");
    assert_eq!(read[1].prev_hash, read[0].hash);
    assert_eq!(read[2].prev_hash, read[1].hash);
    assert_eq!(
        read[0].hash,
        crate::codec::recompute_hash(&read[0]),
        "hash = blake3(prev_hash ‖ canonical body)"
    );
}

/// Every kind of expected version is accepted or refused as documented.
pub async fn expected_version_cases<S: EventStore>(store: S) {
    let s = sid("acct-1");
    let wrong = |r: Result<_, StoreError>, exp: ExpectedVersion, act: u64| match r {
        Err(StoreError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, sid("acct-1"));
            assert_eq!(expected, exp);
            assert_eq!(actual, act);
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    };

    // On a stream that does not exist.
    wrong(
        store
            .append(s.clone(), ExpectedVersion::StreamExists, evs("A", 1))
            .await,
        ExpectedVersion::StreamExists,
        0,
    );
    wrong(
        store
            .append(s.clone(), ExpectedVersion::Exact(3), evs("A", 1))
            .await,
        ExpectedVersion::Exact(3),
        0,
    );
    let r = store
        .append(s.clone(), ExpectedVersion::Exact(0), evs("A", 1))
        .await
        .unwrap();
    assert_eq!(r.last_version, 1);

    // On a stream at version 1.
    wrong(
        store
            .append(s.clone(), ExpectedVersion::NoStream, evs("A", 1))
            .await,
        ExpectedVersion::NoStream,
        1,
    );
    wrong(
        store
            .append(s.clone(), ExpectedVersion::Exact(0), evs("A", 1))
            .await,
        ExpectedVersion::Exact(0),
        1,
    );
    let r = store
        .append(s.clone(), ExpectedVersion::StreamExists, evs("A", 2))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (2, 3));
    let r = store
        .append(s.clone(), ExpectedVersion::Exact(3), evs("A", 1))
        .await
        .unwrap();
    assert_eq!(r.last_version, 4);
    let r = store
        .append(s.clone(), ExpectedVersion::Any, evs("A", 1))
        .await
        .unwrap();
    assert_eq!(r.last_version, 5);
    let r = store
        .append(sid("acct-2"), ExpectedVersion::Any, evs("A", 1))
        .await
        .unwrap();
    assert_eq!(r.last_version, 1);
    let r = store
        .append(sid("acct-3"), ExpectedVersion::NoStream, evs("A", 1))
        .await
        .unwrap();
    assert_eq!(r.last_version, 1);

    assert_eq!(store.stream_version(&s).await.unwrap(), 5);
    assert_eq!(store.stream_version(&sid("acct-9")).await.unwrap(), 0);
    // Failed expectations wrote nothing: 5 + 1 + 1 events.
    assert_eq!(store.head(), Position(7));
}

/// Stream reads forward and backward, from any version, with limits.
pub async fn read_stream_directions_and_limits<S: EventStore>(store: S) {
    let a = sid("cart-a");
    // Interleave another stream so stream versions and positions differ.
    for (stream, count) in [
        (&a, 3),
        (&sid("cart-b"), 2),
        (&a, 4),
        (&sid("cart-b"), 1),
        (&a, 3),
    ] {
        store
            .append(stream.clone(), ExpectedVersion::Any, evs("Item", count))
            .await
            .unwrap();
    }
    let versions = |events: Vec<crate::RecordedEvent>| {
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>()
    };
    let fwd = store
        .read_stream(&a, 1, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(versions(fwd.clone()), (1..=10).collect::<Vec<_>>());
    assert!(fwd.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(
        versions(
            store
                .read_stream(&a, 4, Direction::Forward, 3)
                .await
                .unwrap()
        ),
        vec![4, 5, 6]
    );
    assert_eq!(
        versions(
            store
                .read_stream(&a, 0, Direction::Forward, 2)
                .await
                .unwrap()
        ),
        vec![1, 2]
    );
    assert_eq!(
        versions(
            store
                .read_stream(&a, u64::MAX, Direction::Backward, 2)
                .await
                .unwrap()
        ),
        vec![10, 9]
    );
    assert_eq!(
        versions(
            store
                .read_stream(&a, 5, Direction::Backward, 100)
                .await
                .unwrap()
        ),
        vec![5, 4, 3, 2, 1]
    );
    assert!(
        store
            .read_stream(&a, 11, Direction::Forward, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_stream(&a, 1, Direction::Forward, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_stream(&sid("cart-zzz"), 1, Direction::Forward, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Streams whose ids share a prefix stay apart.
    store
        .append(sid("cart-a2"), ExpectedVersion::Any, evs("Item", 1))
        .await
        .unwrap();
    assert_eq!(
        store
            .read_stream(&a, 1, Direction::Forward, 100)
            .await
            .unwrap()
            .len(),
        10
    );
}

/// Global reads with category and event-type filters, cursors and limits.
pub async fn read_all_with_filters<S: EventStore>(store: S) {
    store
        .append(
            sid("order-1"),
            ExpectedVersion::Any,
            vec![ev("OrderPlaced", 1)],
        )
        .await
        .unwrap();
    store
        .append(
            sid("product-1"),
            ExpectedVersion::Any,
            vec![ev("StockReceived", 2), ev("PriceChanged", 3)],
        )
        .await
        .unwrap();
    store
        .append(
            sid("order-2"),
            ExpectedVersion::Any,
            vec![ev("OrderPlaced", 4)],
        )
        .await
        .unwrap();
    store
        .append(
            sid("orderless"),
            ExpectedVersion::Any,
            vec![ev("OrderPlaced", 5)],
        )
        .await
        .unwrap();

    let all = store
        .read_all(Position(1), 100, &ReadFilter::all())
        .await
        .unwrap();
    let positions: Vec<u64> = all.events.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5], "gapless and in order");
    assert_eq!(all.next, Position(6));
    assert_eq!(all.head, Position(5));

    let page = store
        .read_all(Position(2), 2, &ReadFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.events[0].position, Position(2));
    assert_eq!(page.next, Position(4));

    let orders = store
        .read_all(Position(1), 100, &ReadFilter::categories(["order"]))
        .await
        .unwrap();
    let ids: Vec<&str> = orders.events.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["order-1", "order-2"],
        "category is the part before the first '-'"
    );

    let prices = store
        .read_all(Position(1), 100, &ReadFilter::event_types(["PriceChanged"]))
        .await
        .unwrap();
    assert_eq!(prices.events.len(), 1);
    assert_eq!(prices.events[0].position, Position(3));

    let both = ReadFilter {
        categories: vec!["order".into(), "orderless".into()],
        event_types: vec!["OrderPlaced".into()],
    };
    assert_eq!(
        store
            .read_all(Position(1), 100, &both)
            .await
            .unwrap()
            .events
            .len(),
        3
    );

    // A sparse filter with a small limit still moves the cursor past what it examined.
    let first = store
        .read_all(Position(1), 1, &ReadFilter::categories(["product"]))
        .await
        .unwrap();
    assert_eq!(first.events[0].position, Position(2));
    assert_eq!(first.next, Position(3));

    let beyond = store
        .read_all(Position(99), 10, &ReadFilter::all())
        .await
        .unwrap();
    assert!(beyond.events.is_empty());
    let zero = store
        .read_all(Position(0), 1, &ReadFilter::all())
        .await
        .unwrap();
    assert_eq!(
        zero.events[0].position,
        Position(1),
        "position 0 reads from the start"
    );
}

/// The head and its subscription move with each commit.
pub async fn head_and_subscription<S: EventStore>(store: S) {
    assert_eq!(store.head(), Position::ZERO);
    let mut rx = store.subscribe_head();
    assert_eq!(*rx.borrow_and_update(), Position::ZERO);
    let r = store
        .append(sid("s-1"), ExpectedVersion::Any, evs("E", 2))
        .await
        .unwrap();
    assert!(rx.has_changed().unwrap(), "the head moved with the commit");
    assert_eq!(*rx.borrow_and_update(), r.last_position);
    assert_eq!(store.head(), Position(2));
}

/// Retries with the same event ids return the original result and write nothing; any other reuse is a conflict.
pub async fn idempotent_appends<S: EventStore>(store: S) {
    let s = sid("pay-1");
    store
        .append(sid("pay-0"), ExpectedVersion::Any, evs("X", 1))
        .await
        .unwrap();
    let first = store
        .append(s.clone(), ExpectedVersion::NoStream, with_ids(&[1, 2, 3]))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let head = store.head();

    // The identical retry, even with an expectation that no longer holds.
    let retry = store
        .append(s.clone(), ExpectedVersion::NoStream, with_ids(&[1, 2, 3]))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (
            retry.first_version,
            retry.last_version,
            retry.first_position,
            retry.last_position
        ),
        (
            first.first_version,
            first.last_version,
            first.first_position,
            first.last_position
        )
    );
    assert_eq!(store.head(), head, "a duplicate writes nothing");

    let conflict = |r: Result<crate::AppendResult, StoreError>| {
        assert!(
            matches!(r, Err(StoreError::IdempotencyConflict { .. })),
            "expected IdempotencyConflict, got {r:?}"
        );
    };
    // A prefix of the original append.
    conflict(
        store
            .append(s.clone(), ExpectedVersion::Any, with_ids(&[1, 2]))
            .await,
    );
    // A suffix.
    conflict(
        store
            .append(s.clone(), ExpectedVersion::Any, with_ids(&[2, 3]))
            .await,
    );
    // Reordered.
    conflict(
        store
            .append(s.clone(), ExpectedVersion::Any, with_ids(&[1, 3, 2]))
            .await,
    );
    // The original plus a new event.
    conflict(
        store
            .append(s.clone(), ExpectedVersion::Any, with_ids(&[1, 2, 3, 4]))
            .await,
    );
    // A known id mixed with generated ones.
    let mut mixed = evs("X", 1);
    mixed.extend(with_ids(&[2]));
    conflict(store.append(s.clone(), ExpectedVersion::Any, mixed).await);
    // The same ids on another stream.
    conflict(
        store
            .append(sid("pay-2"), ExpectedVersion::Any, with_ids(&[1, 2, 3]))
            .await,
    );
    // The same id twice in one request.
    conflict(
        store
            .append(sid("pay-3"), ExpectedVersion::Any, with_ids(&[9, 9]))
            .await,
    );
    assert_eq!(store.head(), head, "no conflict wrote anything");

    // New ids keep working.
    let next = store
        .append(s.clone(), ExpectedVersion::Exact(3), with_ids(&[4]))
        .await
        .unwrap();
    assert_eq!(next.last_version, 4);
}

/// A multi-stream append commits all of its streams or none.
pub async fn multi_stream_atomicity<S: EventStore>(store: S) {
    store
        .append(sid("product-1"), ExpectedVersion::Any, evs("P", 2))
        .await
        .unwrap();
    let head = store.head();
    let failing = vec![
        StreamAppend::new(
            sid("order-9"),
            ExpectedVersion::NoStream,
            evs("OrderPlaced", 1),
        ),
        StreamAppend::new(
            sid("product-1"),
            ExpectedVersion::Exact(5),
            evs("StockReserved", 1),
        ),
    ];
    match store.append_multi(failing).await {
        Err(StoreError::WrongExpectedVersion { stream, actual, .. }) => {
            assert_eq!(
                stream,
                sid("product-1"),
                "the error names the failing stream"
            );
            assert_eq!(actual, 2);
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    assert_eq!(
        store.head(),
        head,
        "nothing of a failed multi-append is written"
    );
    assert_eq!(store.stream_version(&sid("order-9")).await.unwrap(), 0);

    let ok = vec![
        StreamAppend::new(sid("order-9"), ExpectedVersion::NoStream, with_ids(&[100])),
        StreamAppend::new(
            sid("product-1"),
            ExpectedVersion::Exact(2),
            with_ids(&[101, 102]),
        ),
    ];
    let result = store.append_multi(ok.clone()).await.unwrap();
    assert_eq!(result.streams.len(), 2);
    assert_eq!(result.streams[0].stream_id, sid("order-9"));
    assert_eq!(result.streams[0].last_version, 1);
    assert_eq!(result.streams[1].last_version, 4);
    assert_eq!(result.first_position, Position(3));
    assert_eq!(result.last_position, Position(5));
    assert_eq!(
        result.streams[1].first_position,
        Position(4),
        "positions are consecutive"
    );

    let retry = store.append_multi(ok).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.last_position, Position(5));
    assert_eq!(store.head(), Position(5));
}

/// Bad input is refused with its typed error and writes nothing.
pub async fn invalid_input<S: EventStore>(store: S) {
    for bad in ["", "a\u{0}b", "tab\there", "new\nline"] {
        assert!(
            matches!(StreamId::new(bad), Err(StoreError::InvalidStreamId { .. })),
            "{bad:?} must be rejected"
        );
    }
    assert!(StreamId::new("x".repeat(256)).is_ok());
    let long = StreamId::new("x".repeat(10 * 1024));
    match long {
        Err(e @ StoreError::InvalidStreamId { .. }) => {
            assert!(e.to_string().len() < 200, "errors stay short: {e}");
        }
        other => panic!("10 KB stream id accepted: {other:?}"),
    }
    assert!(serde_json::from_str::<StreamId>("\"\"").is_err());

    for bad_type in ["", "has space", "emoji😀", &"T".repeat(129)] {
        let r = store
            .append(sid("v-1"), ExpectedVersion::Any, vec![ev(bad_type, 0)])
            .await;
        assert!(
            matches!(r, Err(StoreError::InvalidEventType { .. })),
            "{bad_type:?}: {r:?}"
        );
    }
    let r = store.append(sid("v-1"), ExpectedVersion::Any, vec![]).await;
    assert!(matches!(r, Err(StoreError::EmptyAppend)), "{r:?}");
    let r = store.append_multi(vec![]).await;
    assert!(matches!(r, Err(StoreError::EmptyAppend)), "{r:?}");
    let r = store
        .append(sid("v-1"), ExpectedVersion::Any, evs("E", 1001))
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::TooManyEvents {
                count: 1001,
                limit: 1000
            })
        ),
        "{r:?}"
    );
    let big = NewEvent {
        payload: vec![b'x'; 1024 * 1024 + 1],
        ..ev("E", 0)
    };
    let r = store
        .append(sid("v-1"), ExpectedVersion::Any, vec![big])
        .await;
    assert!(
        matches!(r, Err(StoreError::PayloadTooLarge { .. })),
        "{r:?}"
    );
    let r = store
        .append_multi(vec![
            StreamAppend::new(sid("v-1"), ExpectedVersion::Any, evs("E", 1)),
            StreamAppend::new(sid("v-1"), ExpectedVersion::Any, evs("E", 1)),
        ])
        .await;
    assert!(
        matches!(r, Err(StoreError::DuplicateStream { .. })),
        "{r:?}"
    );
    assert_eq!(
        store.head(),
        Position::ZERO,
        "no invalid append wrote anything"
    );
    let max = NewEvent {
        payload: vec![b'x'; 1024 * 1024],
        ..ev("E", 0)
    };
    store
        .append(sid("v-1"), ExpectedVersion::Any, vec![max])
        .await
        .unwrap();
}

/// The hash chain verifies over any range, clamped to the log.
pub async fn chain_verifies<S: EventStore>(store: S) {
    for i in 0..20u64 {
        store
            .append(
                sid(&format!("c-{}", i % 3)),
                ExpectedVersion::Any,
                evs("E", 1 + i % 4),
            )
            .await
            .unwrap();
    }
    let head = store.head();
    let report = store.verify_chain(Position(1), head).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, head.0);
    let part = store
        .verify_chain(Position(10), Position(20))
        .await
        .unwrap();
    assert!(part.is_ok());
    assert_eq!(part.checked, 11);
    let clamped = store
        .verify_chain(Position(0), Position(u64::MAX))
        .await
        .unwrap();
    assert_eq!(clamped.checked, head.0);
    let _ = ChainFault::Missing;
}

/// The name of every check, in the order [`run_all`] runs them.
pub const CASES: [&str; 9] = [
    "append_then_read_back",
    "expected_version_cases",
    "read_stream_directions_and_limits",
    "read_all_with_filters",
    "head_and_subscription",
    "idempotent_appends",
    "multi_stream_atomicity",
    "invalid_input",
    "chain_verifies",
];

/// Runs every check in order, each on the fresh store `make(name)` returns.
pub async fn run_all<S, F, Fut>(mut make: F)
where
    S: EventStore,
    F: FnMut(&'static str) -> Fut,
    Fut: Future<Output = S>,
{
    append_then_read_back(make("append_then_read_back").await).await;
    expected_version_cases(make("expected_version_cases").await).await;
    read_stream_directions_and_limits(make("read_stream_directions_and_limits").await).await;
    read_all_with_filters(make("read_all_with_filters").await).await;
    head_and_subscription(make("head_and_subscription").await).await;
    idempotent_appends(make("idempotent_appends").await).await;
    multi_stream_atomicity(make("multi_stream_atomicity").await).await;
    invalid_input(make("invalid_input").await).await;
    chain_verifies(make("chain_verifies").await).await;
}
