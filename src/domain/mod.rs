//! The e-commerce reference domain: products with inventory, and orders.
//!
//! Single-aggregate commands go straight through `CommandBus::execute`. Placing and
//! cancelling an order span several aggregates: the order and the stock of every product
//! on it change in **one atomic commit**, each stream at its own exact expected version,
//! so two orders racing for the last unit cannot both win.

mod order;
mod payment;
mod product;

use std::sync::Arc;

use annals_store::{
    Aggregate, CommandBus, CommandContext, CommandError, CommandOutcome, Decision, EventStore,
    SnapshotStore, Transaction, Upcasters,
};
use serde_json::Value;

pub use order::{Order, OrderCommand, OrderEvent, OrderLine, OrderPlacedV1, OrderStatus};
pub use payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus};
pub use product::{Product, ProductCommand, ProductEvent};

use crate::payments::{Authorization, GatewayOptions, GuardedGateway};
use crate::privacy::{Privacy, PrivacyError};

/// Why the domain refused a command. Each error names the aggregate it is about; its
/// client-visible code is in `crate::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommerceError {
    /// Not enough units available for a reservation.
    #[error(
        "insufficient stock for product {product_id}: requested {requested}, available {available}"
    )]
    InsufficientStock {
        /// The product.
        product_id: String,
        /// Units asked for.
        requested: u64,
        /// Units available.
        available: u64,
    },
    /// The aggregate is not in a state that allows the command.
    #[error("{reason}")]
    InvalidState {
        /// What state forbids what.
        reason: String,
    },
    /// An order line names a product that is not registered.
    #[error("unknown product {product_id}")]
    UnknownProduct {
        /// The product.
        product_id: String,
    },
    /// The order does not exist.
    #[error("order {order_id} not found")]
    NotFound {
        /// The order.
        order_id: String,
    },
    /// The command's input breaks a rule (empty name, non-positive quantity, ...).
    #[error("{reason}")]
    Validation {
        /// Which rule.
        reason: String,
    },
    /// The payment does not exist.
    #[error("payment {payment_id} not found")]
    PaymentNotFound {
        /// The payment.
        payment_id: String,
    },
    /// The payment gateway did not answer (timeout, outage, circuit open): nothing was
    /// recorded, and the same command can be sent again.
    #[error("the payment gateway is unavailable: {reason}")]
    GatewayUnavailable {
        /// What the gateway (or the breaker in front of it) said.
        reason: String,
    },
}

impl CommerceError {
    /// `Ok` when the rule holds, a `Validation` error naming it otherwise.
    pub(crate) fn check(rule_holds: bool, reason: &str) -> Result<(), CommerceError> {
        if rule_holds {
            Ok(())
        } else {
            Err(CommerceError::Validation {
                reason: reason.to_string(),
            })
        }
    }
}

/// The upcasters of the domain's old event versions.
///
/// `OrderPlaced` v1 (early releases) had no `total_cents`; v2 adds it, computed from the
/// lines exactly as the aggregate computes it today.
pub fn upcasters() -> Upcasters {
    Upcasters::new().register("OrderPlaced", 1, |mut payload: Value| {
        let lines = payload
            .get("lines")
            .and_then(Value::as_array)
            .ok_or("OrderPlaced v1 without lines")?;
        let mut total: u64 = 0;
        for line in lines {
            let quantity = line.get("quantity").and_then(Value::as_u64);
            let price = line.get("unit_price_cents").and_then(Value::as_u64);
            let (Some(quantity), Some(price)) = (quantity, price) else {
                return Err("OrderPlaced v1 line without quantity or unit_price_cents".into());
            };
            total = quantity
                .checked_mul(price)
                .and_then(|t| t.checked_add(total))
                .ok_or("OrderPlaced v1 total overflows")?;
        }
        payload["total_cents"] = Value::from(total);
        Ok(payload)
    })
}

/// A line as the client asks for it: the price comes from the product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRequest {
    /// The product.
    pub product_id: String,
    /// Units (positive).
    pub quantity: u64,
}

/// The domain's commands, as the API and the checkout send them.
#[derive(Debug)]
pub struct Commerce<S> {
    bus: CommandBus<S>,
    gateway: Arc<GuardedGateway>,
    /// Whether orders are confirmed by hand (`confirm_order`), or by the checkout once
    /// paid.
    manual_confirmation: bool,
    /// Seals the personal fields of the events it writes (the customer id).
    privacy: Privacy,
}

impl<S: EventStore + SnapshotStore> Commerce<S> {
    /// The domain over a command bus (which should carry [`upcasters`]), with the
    /// simulated payment gateway's defaults (it approves everything at once).
    pub fn new(bus: CommandBus<S>) -> Self {
        Self::with_gateway(bus, GuardedGateway::simulated(GatewayOptions::default()))
    }

    /// The domain over a command bus and a payment gateway.
    pub fn with_gateway(bus: CommandBus<S>, gateway: GuardedGateway) -> Self {
        Self {
            bus,
            gateway: Arc::new(gateway),
            manual_confirmation: true,
            privacy: Privacy::disabled(),
        }
    }

    /// The same domain sealing personal fields with `privacy`'s keys.
    pub fn with_privacy(mut self, privacy: Privacy) -> Self {
        self.privacy = privacy;
        self
    }

    /// How this domain seals personal fields.
    pub fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    /// The same domain with orders confirmed by the checkout only: `confirm_order` is
    /// refused, so no order is confirmed in the moment between its placement and its
    /// payment request.
    pub fn confirmed_by_checkout(mut self) -> Self {
        self.manual_confirmation = false;
        self
    }

    /// The payment gateway, behind its guard.
    pub fn gateway(&self) -> &GuardedGateway {
        &self.gateway
    }

    /// The command bus underneath.
    pub fn bus(&self) -> &CommandBus<S> {
        &self.bus
    }

    /// Registers a product.
    pub async fn register_product(
        &self,
        product_id: &str,
        sku: String,
        name: String,
        price_cents: u64,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        let command = ProductCommand::Register {
            sku,
            name,
            price_cents,
        };
        self.bus.execute::<Product>(product_id, command, ctx).await
    }

    /// Records units arriving for a product.
    pub async fn receive_stock(
        &self,
        product_id: &str,
        quantity: u64,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.product_command(product_id, ProductCommand::ReceiveStock { quantity }, ctx)
            .await
    }

    /// Changes a product's price (orders already placed keep their prices).
    pub async fn change_price(
        &self,
        product_id: &str,
        price_cents: u64,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.product_command(product_id, ProductCommand::ChangePrice { price_cents }, ctx)
            .await
    }

    async fn product_command(
        &self,
        product_id: &str,
        command: ProductCommand,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.bus.execute::<Product>(product_id, command, ctx).await
    }

    /// Places an order: prices every line from its product, and reserves the stock of
    /// every line in the same atomic commit as `OrderPlaced`.
    pub async fn place_order(
        &self,
        order_id: &str,
        customer_id: &str,
        lines: &[LineRequest],
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        if customer_id.trim().is_empty() {
            return Err(CommandError::Rejected(CommerceError::Validation {
                reason: "customer_id must not be empty".into(),
            }));
        }
        // The customer id is personal data: stored sealed under the customer's key, so
        // forgetting the customer erases it everywhere without touching the log.
        let sealed = self
            .privacy
            .seal(customer_id, customer_id)
            .await
            .map_err(|e| match e {
                PrivacyError::Store(e) => CommandError::Store(e),
                e => CommandError::Store(annals_store::StoreError::Unavailable {
                    reason: e.to_string(),
                }),
            })?;
        let decision = PlaceOrder {
            order_id,
            customer_id: &sealed,
            lines,
        };
        self.bus.run(ctx, &decision).await
    }

    /// Confirms a placed order by hand (refused when the checkout confirms orders).
    pub async fn confirm_order(
        &self,
        order_id: &str,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        if !self.manual_confirmation {
            if self.bus.load::<Order>(order_id).await?.state.status == OrderStatus::New {
                return Err(CommandError::Rejected(CommerceError::NotFound {
                    order_id: order_id.to_string(),
                }));
            }
            return Err(CommandError::Rejected(CommerceError::InvalidState {
                reason: format!(
                    "cannot confirm order {order_id} by hand: the checkout confirms orders once their payment is authorized"
                ),
            }));
        }
        self.bus
            .execute::<Order>(order_id, OrderCommand::Confirm, ctx)
            .await
    }

    /// Confirms an order whose payment was authorized (what the checkout sends).
    pub async fn confirm_paid_order(
        &self,
        order_id: &str,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.bus
            .execute::<Order>(order_id, OrderCommand::ConfirmPaid, ctx)
            .await
    }

    /// Ships a confirmed order: the order is shipped and the stock it reserved leaves
    /// the warehouse (each product's on-hand and reserved units fall), in one commit.
    pub async fn ship_order(
        &self,
        order_id: &str,
        tracking_number: String,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.bus
            .run(
                ctx,
                &OrderWithStock {
                    order_id,
                    order: OrderCommand::Ship { tracking_number },
                    stock: |order_id| ProductCommand::Fulfil { order_id },
                },
            )
            .await
    }

    /// Requests the payment of a placed order: the payment `payment-{order id}` is
    /// requested for the order's total and the order waits for it, in one commit.
    pub async fn request_payment(
        &self,
        order_id: &str,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.bus.run(ctx, &RequestPayment { order_id }).await
    }

    /// Asks the gateway to authorize a requested payment and records its answer
    /// (authorized or declined). The gateway is called with the payment's id as its
    /// idempotency key, so a repeated command gets the same answer. The payment of an
    /// order cancelled in the meantime (its deadline passed) is declined without calling
    /// the gateway: no money is reserved only to be given back.
    pub async fn authorize_payment(
        &self,
        payment_id: &str,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        if let Some(done) = self.bus.already_executed(ctx).await? {
            return Ok(done);
        }
        let payment = self.bus.load::<Payment>(payment_id).await?;
        let decline = PaymentCommand::Decline {
            reason: String::new(),
        };
        payment
            .state
            .handle(payment_id, decline)
            .map_err(CommandError::Rejected)?;
        let order = self.bus.load::<Order>(&payment.state.order_id).await?;
        if order.state.status == OrderStatus::Cancelled {
            let reason = "the order was cancelled before the payment was authorized".into();
            let command = PaymentCommand::Decline { reason };
            return self.bus.execute::<Payment>(payment_id, command, ctx).await;
        }
        let answer = self
            .gateway
            .authorize(payment_id, payment.state.amount_cents)
            .await
            .map_err(unavailable)?;
        let command = match answer {
            Authorization::Approved { reference } => PaymentCommand::Authorize {
                authorization: reference,
            },
            Authorization::Declined { reason } => PaymentCommand::Decline { reason },
        };
        self.bus.execute::<Payment>(payment_id, command, ctx).await
    }

    /// Captures an authorized payment at the gateway and records it.
    pub async fn capture_payment(
        &self,
        payment_id: &str,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.move_money(payment_id, PaymentCommand::Capture, ctx)
            .await
    }

    /// Gives an authorized or captured payment back at the gateway and records it.
    pub async fn refund_payment(
        &self,
        payment_id: &str,
        reason: String,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.move_money(payment_id, PaymentCommand::Refund { reason }, ctx)
            .await
    }

    /// A capture or a refund: checked against the payment first (no gateway call for a
    /// command the payment refuses), then made at the gateway under the key
    /// `{payment id}/capture` or `/refund`, then recorded.
    async fn move_money(
        &self,
        payment_id: &str,
        command: PaymentCommand,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        if let Some(done) = self.bus.already_executed(ctx).await? {
            return Ok(done);
        }
        let payment = self.bus.load::<Payment>(payment_id).await?;
        payment
            .state
            .handle(payment_id, command.clone())
            .map_err(CommandError::Rejected)?;
        let amount = payment.state.amount_cents;
        let moved = match &command {
            PaymentCommand::Capture => {
                self.gateway
                    .capture(&format!("{payment_id}/capture"), amount)
                    .await
            }
            _ => {
                self.gateway
                    .refund(&format!("{payment_id}/refund"), amount)
                    .await
            }
        };
        moved.map_err(unavailable)?;
        self.bus.execute::<Payment>(payment_id, command, ctx).await
    }

    /// Cancels a placed or confirmed order and releases its stock in the same commit.
    pub async fn cancel_order(
        &self,
        order_id: &str,
        reason: String,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError<CommerceError>> {
        self.bus
            .run(
                ctx,
                &OrderWithStock {
                    order_id,
                    order: OrderCommand::Cancel { reason },
                    stock: |order_id| ProductCommand::Release { order_id },
                },
            )
            .await
    }
}

/// A gateway failure as the domain reports it.
fn unavailable(error: crate::payments::GatewayError) -> CommandError<CommerceError> {
    CommandError::Rejected(CommerceError::GatewayUnavailable {
        reason: error.to_string(),
    })
}

/// Requests an order's payment: the payment is requested and the order waits for it.
struct RequestPayment<'a> {
    order_id: &'a str,
}

impl<S: EventStore + SnapshotStore> Decision<S> for RequestPayment<'_> {
    type Error = CommerceError;

    async fn decide(&self, tx: &mut Transaction<'_, S>) -> Result<(), CommandError<CommerceError>> {
        let order = tx.load::<Order>(self.order_id).await?;
        let amount_cents = order.state.total_cents;
        let waiting = order
            .state
            .handle(
                self.order_id,
                OrderCommand::AwaitPayment {
                    payment_id: self.order_id.to_string(),
                },
            )
            .map_err(CommandError::Rejected)?;
        tx.emit(order, waiting)?;
        let payment = tx.load::<Payment>(self.order_id).await?;
        let requested = payment
            .state
            .handle(
                self.order_id,
                PaymentCommand::Request {
                    order_id: self.order_id.to_string(),
                    amount_cents,
                },
            )
            .map_err(CommandError::Rejected)?;
        tx.emit(payment, requested)?;
        Ok(())
    }
}

/// Places an order over the order and every product on it.
struct PlaceOrder<'a> {
    order_id: &'a str,
    customer_id: &'a str,
    lines: &'a [LineRequest],
}

impl<S: EventStore + SnapshotStore> Decision<S> for PlaceOrder<'_> {
    type Error = CommerceError;

    async fn decide(&self, tx: &mut Transaction<'_, S>) -> Result<(), CommandError<CommerceError>> {
        // The products first: a transaction waits in the queue of the first aggregate it
        // loads, and the products are where orders meet (a new order's stream is nobody
        // else's), so orders for one product follow each other instead of racing to a
        // conflict.
        let mut priced = Vec::with_capacity(self.lines.len());
        let mut products = Vec::with_capacity(self.lines.len());
        for line in self.lines {
            let unknown = || {
                CommandError::Rejected(CommerceError::UnknownProduct {
                    product_id: line.product_id.clone(),
                })
            };
            // The id must make a valid stream before it can name a product.
            Product::stream_id(&line.product_id).map_err(|_| unknown())?;
            let product = tx.load::<Product>(&line.product_id).await?;
            if !product.state.registered {
                return Err(unknown());
            }
            priced.push(OrderLine {
                product_id: line.product_id.clone(),
                quantity: line.quantity,
                unit_price_cents: product.state.price_cents,
            });
            products.push(product);
        }
        let order = tx.load::<Order>(self.order_id).await?;
        if order.state.status != OrderStatus::New {
            return Err(CommandError::Rejected(CommerceError::InvalidState {
                reason: format!("order {} already exists", self.order_id),
            }));
        }
        let placed = order
            .state
            .handle(
                self.order_id,
                OrderCommand::Place {
                    customer_id: self.customer_id.to_string(),
                    lines: priced,
                },
            )
            .map_err(CommandError::Rejected)?;
        tx.emit(order, placed)?;
        for (product, line) in products.into_iter().zip(self.lines) {
            let reserved = product
                .state
                .handle(
                    &line.product_id,
                    ProductCommand::Reserve {
                        order_id: self.order_id.to_string(),
                        quantity: line.quantity,
                    },
                )
                .map_err(CommandError::Rejected)?;
            tx.emit(product, reserved)?;
        }
        Ok(())
    }
}

/// A command to an order that closes its reservations the same way on every product on
/// it, in one commit: shipping fulfils them, cancelling releases them.
struct OrderWithStock<'a> {
    order_id: &'a str,
    order: OrderCommand,
    /// The command to each product on the order, given the order's id.
    stock: fn(String) -> ProductCommand,
}

impl<S: EventStore + SnapshotStore> Decision<S> for OrderWithStock<'_> {
    type Error = CommerceError;

    async fn decide(&self, tx: &mut Transaction<'_, S>) -> Result<(), CommandError<CommerceError>> {
        let order = tx.load::<Order>(self.order_id).await?;
        let decided = order
            .state
            .handle(self.order_id, self.order.clone())
            .map_err(CommandError::Rejected)?;
        let lines = order.state.lines.clone();
        tx.emit(order, decided)?;
        for line in &lines {
            let product = tx.load::<Product>(&line.product_id).await?;
            let closed = product
                .state
                .handle(&line.product_id, (self.stock)(self.order_id.to_string()))
                .map_err(CommandError::Rejected)?;
            tx.emit(product, closed)?;
        }
        Ok(())
    }
}
