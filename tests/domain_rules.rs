//! Given/when/then tests of every command, rule and error of the reference domain.

use annals::domain::{
    CommerceError, Order, OrderCommand, OrderEvent, OrderLine, OrderStatus, Payment,
    PaymentCommand, PaymentEvent, PaymentStatus, Product, ProductCommand, ProductEvent,
};
use annals::error::HasCode;
use annals_store::testkit::{given, given_no_history};

/// Matches a refusal by its code.
fn code(expected: &'static str) -> impl FnOnce(&CommerceError) -> bool {
    move |error| error.code() == expected
}

fn registered() -> ProductEvent {
    ProductEvent::ProductRegistered {
        sku: "SKU-1".into(),
        name: "Mug".into(),
        price_cents: 1250,
    }
}

fn received(quantity: u64) -> ProductEvent {
    ProductEvent::StockReceived { quantity }
}

fn reserved(order: &str, quantity: u64) -> ProductEvent {
    ProductEvent::StockReserved {
        order_id: order.into(),
        quantity,
    }
}

fn validation(reason: &str) -> CommerceError {
    CommerceError::Validation {
        reason: reason.into(),
    }
}

fn line(product: &str, quantity: u64, price: u64) -> OrderLine {
    OrderLine {
        product_id: product.into(),
        quantity,
        unit_price_cents: price,
    }
}

fn placed() -> OrderEvent {
    OrderEvent::OrderPlaced {
        customer_id: "c-1".into(),
        lines: vec![line("p-1", 2, 1250), line("p-2", 1, 500)],
        total_cents: 3000,
    }
}

// ---- Product -------------------------------------------------------------------------

#[test]
fn register_product() {
    let state = given_no_history::<Product>()
        .when(ProductCommand::Register {
            sku: "SKU-1".into(),
            name: "Mug".into(),
            price_cents: 1250,
        })
        .then_expect_events(vec![registered()]);
    assert!(state.registered);
    assert_eq!(state.price_cents, 1250);
}

#[test]
fn register_twice_is_invalid_state() {
    given::<Product>(vec![registered()])
        .when(ProductCommand::Register {
            sku: "SKU-1".into(),
            name: "Mug".into(),
            price_cents: 1,
        })
        .then_expect_error_matching(code("INVALID_STATE"));
}

#[test]
fn register_validates_its_input() {
    for (sku, name, price, reason) in [
        ("", "Mug", 1, "sku must not be empty"),
        ("S", "  ", 1, "name must not be empty"),
        ("S", "Mug", 0, "price_cents must be positive"),
    ] {
        given_no_history::<Product>()
            .when(ProductCommand::Register {
                sku: sku.into(),
                name: name.into(),
                price_cents: price,
            })
            .then_expect_error(validation(reason));
    }
}

#[test]
fn commands_on_an_unregistered_product_are_unknown_product() {
    for command in [
        ProductCommand::ReceiveStock { quantity: 1 },
        ProductCommand::ChangePrice { price_cents: 1 },
        ProductCommand::Reserve {
            order_id: "o".into(),
            quantity: 1,
        },
        ProductCommand::Release {
            order_id: "o".into(),
        },
    ] {
        given_no_history::<Product>()
            .with_id("p-9")
            .when(command)
            .then_expect_error(CommerceError::UnknownProduct {
                product_id: "p-9".into(),
            });
    }
}

#[test]
fn receive_stock() {
    let state = given::<Product>(vec![registered(), received(3)])
        .when(ProductCommand::ReceiveStock { quantity: 4 })
        .then_expect_events(vec![received(4)]);
    assert_eq!(state.on_hand, 7);
    given::<Product>(vec![registered()])
        .when(ProductCommand::ReceiveStock { quantity: 0 })
        .then_expect_error(validation("quantity must be positive"));
    given::<Product>(vec![registered(), received(u64::MAX)])
        .when(ProductCommand::ReceiveStock { quantity: 1 })
        .then_expect_error(validation("quantity is too large"));
}

#[test]
fn change_price() {
    given::<Product>(vec![registered()])
        .when(ProductCommand::ChangePrice { price_cents: 999 })
        .then_expect_events(vec![ProductEvent::PriceChanged { price_cents: 999 }]);
    // The same price again decides nothing.
    given::<Product>(vec![registered()])
        .when(ProductCommand::ChangePrice { price_cents: 1250 })
        .then_expect_events(vec![]);
    given::<Product>(vec![registered()])
        .when(ProductCommand::ChangePrice { price_cents: 0 })
        .then_expect_error(validation("price_cents must be positive"));
}

#[test]
fn reserve_stock_within_what_is_available() {
    let state = given::<Product>(vec![registered(), received(5), reserved("o-1", 2)])
        .when(ProductCommand::Reserve {
            order_id: "o-2".into(),
            quantity: 3,
        })
        .then_expect_events(vec![reserved("o-2", 3)]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (5, 5, 0)
    );
}

#[test]
fn reserve_more_than_available_is_insufficient_stock() {
    given::<Product>(vec![registered(), received(5), reserved("o-1", 4)])
        .with_id("p-1")
        .when(ProductCommand::Reserve {
            order_id: "o-2".into(),
            quantity: 2,
        })
        .then_expect_error(CommerceError::InsufficientStock {
            product_id: "p-1".into(),
            requested: 2,
            available: 1,
        });
}

#[test]
fn reserve_rules() {
    given::<Product>(vec![registered(), received(5)])
        .when(ProductCommand::Reserve {
            order_id: "o-1".into(),
            quantity: 0,
        })
        .then_expect_error(validation("quantity must be positive"));
    given::<Product>(vec![registered(), received(5), reserved("o-1", 1)])
        .when(ProductCommand::Reserve {
            order_id: "o-1".into(),
            quantity: 1,
        })
        .then_expect_error_matching(code("INVALID_STATE"));
}

#[test]
fn release_gives_the_reservation_back_once() {
    let history = vec![registered(), received(5), reserved("o-1", 2)];
    let state = given::<Product>(history.clone())
        .when(ProductCommand::Release {
            order_id: "o-1".into(),
        })
        .then_expect_events(vec![ProductEvent::StockReleased {
            order_id: "o-1".into(),
            quantity: 2,
        }]);
    assert_eq!(state.available(), 5);
    let mut released = history;
    released.push(ProductEvent::StockReleased {
        order_id: "o-1".into(),
        quantity: 2,
    });
    given::<Product>(released.clone())
        .when(ProductCommand::Release {
            order_id: "o-1".into(),
        })
        .then_expect_error_matching(code("INVALID_STATE"));
    // Nor can a released reservation be shipped.
    given::<Product>(released)
        .when(ProductCommand::Fulfil {
            order_id: "o-1".into(),
        })
        .then_expect_error_matching(code("INVALID_STATE"));
    given::<Product>(vec![registered()])
        .when(ProductCommand::Release {
            order_id: "o-9".into(),
        })
        .then_expect_error_matching(code("INVALID_STATE"));
}

#[test]
fn shipping_fulfils_the_reservation_once() {
    let history = vec![registered(), received(5), reserved("o-1", 2)];
    let state = given::<Product>(history.clone())
        .when(ProductCommand::Fulfil {
            order_id: "o-1".into(),
        })
        .then_expect_events(vec![ProductEvent::StockShipped {
            order_id: "o-1".into(),
            quantity: 2,
        }]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (3, 0, 3)
    );
    let mut shipped = history;
    shipped.push(ProductEvent::StockShipped {
        order_id: "o-1".into(),
        quantity: 2,
    });
    for command in [
        ProductCommand::Fulfil {
            order_id: "o-1".into(),
        },
        ProductCommand::Release {
            order_id: "o-1".into(),
        },
    ] {
        given::<Product>(shipped.clone())
            .when(command)
            .then_expect_error_matching(code("INVALID_STATE"));
    }
}

/// However many orders a product has seen, its state holds only the open reservations.
#[test]
fn a_products_state_stays_bounded() {
    let mut history = vec![registered(), received(1_000_000)];
    for i in 0..2_000 {
        let order_id = format!("o-{i}");
        history.push(reserved(&order_id, 1));
        history.push(if i % 2 == 0 {
            ProductEvent::StockShipped {
                order_id,
                quantity: 1,
            }
        } else {
            ProductEvent::StockReleased {
                order_id,
                quantity: 1,
            }
        });
    }
    history.push(reserved("open", 3));
    let state = given::<Product>(history)
        .when(ProductCommand::ReceiveStock { quantity: 1 })
        .then_expect_events(vec![ProductEvent::StockReceived { quantity: 1 }]);
    assert_eq!(
        state.reservations.len(),
        1,
        "only the open reservation is kept"
    );
    assert_eq!(state.on_hand, 1_000_000 - 1_000 + 1);
    assert_eq!(state.reserved, 3);
    let encoded = serde_json::to_vec(&state).unwrap();
    assert!(encoded.len() < 512, "the state is {} bytes", encoded.len());
}

// ---- Order ---------------------------------------------------------------------------

#[test]
fn place_order_computes_the_total_in_cents() {
    let state = given_no_history::<Order>()
        .when(OrderCommand::Place {
            customer_id: "c-1".into(),
            lines: vec![line("p-1", 2, 1250), line("p-2", 1, 500)],
        })
        .then_expect_events(vec![placed()]);
    assert_eq!(state.status, OrderStatus::Placed);
    assert_eq!(state.total_cents, 3000);
}

#[test]
fn place_order_validates_its_input() {
    let cases = [
        ("", vec![line("p", 1, 1)], "customer_id must not be empty"),
        ("c", vec![], "an order needs at least one line"),
        ("c", vec![line("p", 0, 1)], "quantity must be positive"),
        (
            "c",
            vec![line("p", 1, 1), line("p", 2, 1)],
            "each product may appear on one line only",
        ),
        ("c", vec![line("p", u64::MAX, 2)], "order total overflows"),
    ];
    for (customer, lines, reason) in cases {
        given_no_history::<Order>()
            .when(OrderCommand::Place {
                customer_id: customer.into(),
                lines,
            })
            .then_expect_error(validation(reason));
    }
}

#[test]
fn an_order_is_placed_once() {
    given::<Order>(vec![placed()])
        .when(OrderCommand::Place {
            customer_id: "c".into(),
            lines: vec![line("p", 1, 1)],
        })
        .then_expect_error_matching(code("INVALID_STATE"));
}

#[test]
fn order_lifecycle() {
    given::<Order>(vec![placed()])
        .when(OrderCommand::Confirm)
        .then_expect_events(vec![OrderEvent::OrderConfirmed {}]);
    let shipped = given::<Order>(vec![placed(), OrderEvent::OrderConfirmed {}])
        .when(OrderCommand::Ship {
            tracking_number: "TRK1".into(),
        })
        .then_expect_events(vec![OrderEvent::OrderShipped {
            tracking_number: "TRK1".into(),
        }]);
    assert_eq!(shipped.status, OrderStatus::Shipped);
    assert_eq!(shipped.tracking_number.as_deref(), Some("TRK1"));
    for history in [
        vec![placed()],
        vec![placed(), OrderEvent::OrderConfirmed {}],
    ] {
        let cancelled = given::<Order>(history)
            .when(OrderCommand::Cancel {
                reason: "changed mind".into(),
            })
            .then_expect_events(vec![OrderEvent::OrderCancelled {
                reason: "changed mind".into(),
            }]);
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
    }
}

#[test]
fn illegal_transitions_are_invalid_state() {
    let shipped = vec![
        placed(),
        OrderEvent::OrderConfirmed {},
        OrderEvent::OrderShipped {
            tracking_number: "T".into(),
        },
    ];
    let cancelled = vec![placed(), OrderEvent::OrderCancelled { reason: "x".into() }];
    let ship = || OrderCommand::Ship {
        tracking_number: "T".into(),
    };
    let cancel = || OrderCommand::Cancel { reason: "r".into() };
    // Shipping needs confirmation first.
    given::<Order>(vec![placed()])
        .when(ship())
        .then_expect_error_matching(code("INVALID_STATE"));
    // Confirming twice.
    given::<Order>(vec![placed(), OrderEvent::OrderConfirmed {}])
        .when(OrderCommand::Confirm)
        .then_expect_error_matching(code("INVALID_STATE"));
    // Nothing changes after shipped or cancelled.
    for history in [shipped, cancelled] {
        for command in [OrderCommand::Confirm, ship(), cancel()] {
            given::<Order>(history.clone())
                .when(command)
                .then_expect_error_matching(code("INVALID_STATE"));
        }
    }
}

#[test]
fn ship_needs_a_tracking_number() {
    given::<Order>(vec![placed(), OrderEvent::OrderConfirmed {}])
        .when(OrderCommand::Ship {
            tracking_number: " ".into(),
        })
        .then_expect_error(validation("tracking_number must not be empty"));
}

#[test]
fn commands_on_a_missing_order_are_not_found() {
    for command in [
        OrderCommand::Confirm,
        OrderCommand::Ship {
            tracking_number: "T".into(),
        },
        OrderCommand::Cancel { reason: "r".into() },
    ] {
        given_no_history::<Order>()
            .with_id("o-404")
            .when(command)
            .then_expect_error(CommerceError::NotFound {
                order_id: "o-404".into(),
            });
    }
}

#[test]
fn error_codes_are_stable() {
    let codes: Vec<&str> = [
        CommerceError::InsufficientStock {
            product_id: "p".into(),
            requested: 1,
            available: 0,
        },
        CommerceError::InvalidState { reason: "r".into() },
        CommerceError::UnknownProduct {
            product_id: "p".into(),
        },
        CommerceError::NotFound {
            order_id: "o".into(),
        },
        validation("v"),
    ]
    .iter()
    .map(|e| e.code().as_str())
    .collect();
    assert_eq!(
        codes,
        [
            "INSUFFICIENT_STOCK",
            "INVALID_STATE",
            "UNKNOWN_PRODUCT",
            "NOT_FOUND",
            "VALIDATION_ERROR"
        ]
    );
}

// ---- Payment -------------------------------------------------------------------------

fn requested() -> PaymentEvent {
    PaymentEvent::PaymentRequested {
        order_id: "o-1".into(),
        amount_cents: 2500,
    }
}

fn authorized() -> PaymentEvent {
    PaymentEvent::PaymentAuthorized {
        authorization: "auth-1".into(),
    }
}

#[test]
fn a_payment_is_requested_once_for_a_positive_amount() {
    let state = given_no_history::<Payment>()
        .when(PaymentCommand::Request {
            order_id: "o-1".into(),
            amount_cents: 2500,
        })
        .then_expect_events(vec![requested()]);
    assert_eq!(state.status, PaymentStatus::Requested);
    given_no_history::<Payment>()
        .when(PaymentCommand::Request {
            order_id: "o-1".into(),
            amount_cents: 0,
        })
        .then_expect_error_matching(code("VALIDATION_ERROR"));
    given::<Payment>(vec![requested()])
        .when(PaymentCommand::Request {
            order_id: "o-1".into(),
            amount_cents: 2500,
        })
        .then_expect_error_matching(code("INVALID_STATE"));
    given_no_history::<Payment>()
        .when(PaymentCommand::Capture)
        .then_expect_error_matching(code("NOT_FOUND"));
}

#[test]
fn the_gateways_answer_is_recorded_once() {
    given::<Payment>(vec![requested()])
        .when(PaymentCommand::Authorize {
            authorization: "auth-1".into(),
        })
        .then_expect_events(vec![authorized()]);
    given::<Payment>(vec![requested()])
        .when(PaymentCommand::Decline {
            reason: "card declined".into(),
        })
        .then_expect_events(vec![PaymentEvent::PaymentDeclined {
            reason: "card declined".into(),
        }]);
    for answer in [
        PaymentCommand::Authorize {
            authorization: "auth-2".into(),
        },
        PaymentCommand::Decline {
            reason: "late".into(),
        },
    ] {
        given::<Payment>(vec![requested(), authorized()])
            .when(answer)
            .then_expect_error_matching(code("INVALID_STATE"));
    }
}

#[test]
fn an_authorized_payment_is_captured_or_refunded_once() {
    let captured = given::<Payment>(vec![requested(), authorized()])
        .when(PaymentCommand::Capture)
        .then_expect_events(vec![PaymentEvent::PaymentCaptured { amount_cents: 2500 }]);
    assert_eq!(captured.status, PaymentStatus::Captured);
    given::<Payment>(vec![
        requested(),
        authorized(),
        PaymentEvent::PaymentCaptured { amount_cents: 2500 },
    ])
    .when(PaymentCommand::Capture)
    .then_expect_error_matching(code("INVALID_STATE"));
    let refunded = PaymentEvent::PaymentRefunded {
        amount_cents: 2500,
        reason: "cancelled".into(),
    };
    given::<Payment>(vec![requested(), authorized()])
        .when(PaymentCommand::Refund {
            reason: "cancelled".into(),
        })
        .then_expect_events(vec![refunded.clone()]);
    for command in [
        PaymentCommand::Refund {
            reason: "again".into(),
        },
        PaymentCommand::Capture,
    ] {
        given::<Payment>(vec![requested(), authorized(), refunded.clone()])
            .when(command)
            .then_expect_error_matching(code("INVALID_STATE"));
    }
    // A payment never authorized cannot be captured or refunded.
    given::<Payment>(vec![requested()])
        .when(PaymentCommand::Capture)
        .then_expect_error_matching(code("INVALID_STATE"));
}

#[test]
fn only_the_checkout_confirms_an_order_waiting_for_its_payment() {
    let placed = OrderEvent::OrderPlaced {
        customer_id: "c-1".into(),
        lines: vec![line("p-1", 1, 100)],
        total_cents: 100,
    };
    let waiting = OrderEvent::OrderAwaitingPayment {
        payment_id: "o-1".into(),
    };
    given::<Order>(vec![placed.clone(), waiting.clone()])
        .when(OrderCommand::Confirm)
        .then_expect_error_matching(code("INVALID_STATE"));
    given::<Order>(vec![placed.clone(), waiting.clone()])
        .when(OrderCommand::ConfirmPaid)
        .then_expect_events(vec![OrderEvent::OrderConfirmed {}]);
    given::<Order>(vec![placed.clone()])
        .when(OrderCommand::ConfirmPaid)
        .then_expect_error_matching(code("INVALID_STATE"));
    let state = given::<Order>(vec![placed, waiting])
        .when(OrderCommand::Cancel {
            reason: "no payment".into(),
        })
        .then_expect_events(vec![OrderEvent::OrderCancelled {
            reason: "no payment".into(),
        }]);
    assert_eq!(state.status, OrderStatus::Cancelled);
}
