//! The Product aggregate: catalogue data and inventory.

use std::collections::BTreeMap;

use annals_store::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CommerceError;

/// A product as its events made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Whether `ProductRegistered` happened.
    pub registered: bool,
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Current unit price in cents.
    pub price_cents: u64,
    /// Units received in total.
    pub on_hand: u64,
    /// Units held by open reservations.
    pub reserved: u64,
    /// Open reservations by order id: only open ones, so the state stays bounded however
    /// many orders the product has seen (a reservation closes when its order is shipped or
    /// cancelled; the order aggregate guarantees an order reserves once).
    pub reservations: BTreeMap<String, u64>,
}

impl Product {
    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }
}

/// What happens to a product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum ProductEvent {
    /// The product entered the catalogue.
    ProductRegistered {
        /// Stock keeping unit.
        sku: String,
        /// Display name.
        name: String,
        /// Unit price in cents.
        price_cents: u64,
    },
    /// Units arrived in the warehouse.
    StockReceived {
        /// How many.
        quantity: u64,
    },
    /// Units were set aside for an order.
    StockReserved {
        /// The order holding them.
        order_id: String,
        /// How many.
        quantity: u64,
    },
    /// An order's reserved units left the warehouse: on-hand and reserved stock both fall
    /// by the quantity, and the reservation is closed.
    StockShipped {
        /// The order that held them.
        order_id: String,
        /// How many.
        quantity: u64,
    },
    /// An order's reservation was given back.
    StockReleased {
        /// The order that held them.
        order_id: String,
        /// How many.
        quantity: u64,
    },
    /// The unit price changed.
    PriceChanged {
        /// The new unit price in cents.
        price_cents: u64,
    },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ProductEvent::ProductRegistered { .. } => "ProductRegistered",
            ProductEvent::StockReceived { .. } => "StockReceived",
            ProductEvent::StockReserved { .. } => "StockReserved",
            ProductEvent::StockShipped { .. } => "StockShipped",
            ProductEvent::StockReleased { .. } => "StockReleased",
            ProductEvent::PriceChanged { .. } => "PriceChanged",
        }
    }
}

/// What can be asked of a product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProductCommand {
    /// Enter the catalogue.
    Register {
        /// Stock keeping unit.
        sku: String,
        /// Display name.
        name: String,
        /// Unit price in cents (positive).
        price_cents: u64,
    },
    /// Record arriving units.
    ReceiveStock {
        /// How many (positive).
        quantity: u64,
    },
    /// Set a new unit price.
    ChangePrice {
        /// The new price in cents (positive).
        price_cents: u64,
    },
    /// Set units aside for an order.
    Reserve {
        /// The order.
        order_id: String,
        /// How many (positive).
        quantity: u64,
    },
    /// Give an order's reservation back.
    Release {
        /// The order.
        order_id: String,
    },
    /// Ship an order's reserved units.
    Fulfil {
        /// The order.
        order_id: String,
    },
}

impl Aggregate for Product {
    const CATEGORY: &'static str = "product";
    /// 2: the released-orders list is gone (the state keeps open reservations only).
    const SNAPSHOT_VERSION: u16 = 2;
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = CommerceError;

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductRegistered {
                sku,
                name,
                price_cents,
            } => {
                self.registered = true;
                self.sku.clone_from(sku);
                self.name.clone_from(name);
                self.price_cents = *price_cents;
            }
            ProductEvent::StockReceived { quantity } => self.on_hand += quantity,
            ProductEvent::StockReserved { order_id, quantity } => {
                self.reserved += quantity;
                *self.reservations.entry(order_id.clone()).or_default() += quantity;
            }
            ProductEvent::StockShipped { order_id, quantity } => {
                self.on_hand = self.on_hand.saturating_sub(*quantity);
                self.reserved = self.reserved.saturating_sub(*quantity);
                self.reservations.remove(order_id);
            }
            ProductEvent::StockReleased { order_id, quantity } => {
                self.reserved = self.reserved.saturating_sub(*quantity);
                self.reservations.remove(order_id);
            }
            ProductEvent::PriceChanged { price_cents } => self.price_cents = *price_cents,
        }
    }

    fn handle(
        &self,
        id: &str,
        command: ProductCommand,
    ) -> Result<Vec<ProductEvent>, CommerceError> {
        if !self.registered && !matches!(command, ProductCommand::Register { .. }) {
            return Err(CommerceError::UnknownProduct {
                product_id: id.to_string(),
            });
        }
        match command {
            ProductCommand::Register {
                sku,
                name,
                price_cents,
            } => {
                if self.registered {
                    return Err(CommerceError::InvalidState {
                        reason: format!("product {id} is already registered"),
                    });
                }
                CommerceError::check(!sku.trim().is_empty(), "sku must not be empty")?;
                CommerceError::check(!name.trim().is_empty(), "name must not be empty")?;
                CommerceError::check(price_cents > 0, "price_cents must be positive")?;
                Ok(vec![ProductEvent::ProductRegistered {
                    sku,
                    name,
                    price_cents,
                }])
            }
            ProductCommand::ReceiveStock { quantity } => {
                CommerceError::check(quantity > 0, "quantity must be positive")?;
                CommerceError::check(
                    self.on_hand.checked_add(quantity).is_some(),
                    "quantity is too large",
                )?;
                Ok(vec![ProductEvent::StockReceived { quantity }])
            }
            ProductCommand::ChangePrice { price_cents } => {
                CommerceError::check(price_cents > 0, "price_cents must be positive")?;
                if price_cents == self.price_cents {
                    return Ok(Vec::new());
                }
                Ok(vec![ProductEvent::PriceChanged { price_cents }])
            }
            ProductCommand::Reserve { order_id, quantity } => {
                CommerceError::check(quantity > 0, "quantity must be positive")?;
                if self.reservations.contains_key(&order_id) {
                    return Err(CommerceError::InvalidState {
                        reason: format!("order {order_id} already reserved product {id}"),
                    });
                }
                if quantity > self.available() {
                    return Err(CommerceError::InsufficientStock {
                        product_id: id.to_string(),
                        requested: quantity,
                        available: self.available(),
                    });
                }
                Ok(vec![ProductEvent::StockReserved { order_id, quantity }])
            }
            ProductCommand::Release { order_id } => match self.reservations.get(&order_id) {
                Some(quantity) => Ok(vec![ProductEvent::StockReleased {
                    quantity: *quantity,
                    order_id,
                }]),
                None => Err(no_reservation(&order_id, id, "release")),
            },
            ProductCommand::Fulfil { order_id } => match self.reservations.get(&order_id) {
                Some(quantity) => Ok(vec![ProductEvent::StockShipped {
                    quantity: *quantity,
                    order_id,
                }]),
                None => Err(no_reservation(&order_id, id, "ship")),
            },
        }
    }
}

fn no_reservation(order_id: &str, product_id: &str, action: &str) -> CommerceError {
    CommerceError::InvalidState {
        reason: format!(
            "order {order_id} holds no reservation of product {product_id} to {action}"
        ),
    }
}
