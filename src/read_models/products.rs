//! The `products` projection: stock per product and the low-stock index.

use annals_projections::{HandlerError, Projection, ReadModelTx};
use annals_store::{ReadFilter, RecordedEvent};
use serde::{Deserialize, Serialize};

use super::aggregate_id;
use crate::domain::ProductEvent;

/// A product's catalogue data and stock as clients see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductView {
    /// The product's id.
    pub id: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Current unit price in cents.
    pub price_cents: u64,
    /// Units received in total.
    pub on_hand: u64,
    /// Units held by open orders.
    pub reserved: u64,
    /// Units that can still be ordered.
    pub available: u64,
    /// The product stream's version.
    pub version: u64,
    /// When it last changed (microseconds since the Unix epoch).
    pub updated_at_micros: i64,
}

pub(super) const PRODUCT_PREFIX: &[u8] = b"p/";
pub(super) const LOW_STOCK_PREFIX: &[u8] = b"l/";

pub(super) fn product_key(id: &str) -> Vec<u8> {
    [PRODUCT_PREFIX, id.as_bytes()].concat()
}

/// Low-stock index key: big-endian available units, then the id, so a scan from the
/// start lists the scarcest products first.
fn low_stock_key(product: &ProductView) -> Vec<u8> {
    [
        LOW_STOCK_PREFIX,
        &product.available.to_be_bytes(),
        product.id.as_bytes(),
    ]
    .concat()
}

/// The first low-stock key with `threshold` or more units available (relative to the
/// view, i.e. without the keyspace prefix).
pub(super) fn low_stock_bound(threshold: u64) -> Vec<u8> {
    [LOW_STOCK_PREFIX, &threshold.to_be_bytes()].concat()
}

/// Builds the product stock read models.
pub struct ProductsProjection;

impl Projection for ProductsProjection {
    fn name(&self) -> &str {
        super::PRODUCTS
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter::categories(["product"])
    }

    fn handle(&self, event: &RecordedEvent, tx: &mut ReadModelTx<'_>) -> Result<(), HandlerError> {
        let decoded: ProductEvent = super::decode(event)?;
        let id = aggregate_id(&event.stream_id);
        let key = product_key(id);
        let previous: Option<ProductView> = tx.get_typed(&key)?;
        let old_low_stock = previous.as_ref().map(low_stock_key);
        let mut product = match (&decoded, previous) {
            (ProductEvent::ProductRegistered { .. }, None) => ProductView {
                id: id.to_string(),
                ..ProductView::default()
            },
            (ProductEvent::ProductRegistered { .. }, Some(_)) => {
                return Err(format!("product {id} registered twice").into());
            }
            (_, None) => {
                return Err(format!("{} for unknown product {id}", event.event_type).into());
            }
            (_, Some(product)) => product,
        };
        match decoded {
            ProductEvent::ProductRegistered {
                sku,
                name,
                price_cents,
            } => {
                product.sku = sku;
                product.name = name;
                product.price_cents = price_cents;
            }
            ProductEvent::StockReceived { quantity } => product.on_hand += quantity,
            ProductEvent::StockReserved { quantity, .. } => product.reserved += quantity,
            ProductEvent::StockShipped { quantity, .. } => {
                product.on_hand = product.on_hand.saturating_sub(quantity);
                product.reserved = product.reserved.saturating_sub(quantity);
            }
            ProductEvent::StockReleased { quantity, .. } => {
                product.reserved = product.reserved.saturating_sub(quantity);
            }
            ProductEvent::PriceChanged { price_cents } => product.price_cents = price_cents,
        }
        product.available = product.on_hand.saturating_sub(product.reserved);
        product.version = event.stream_version;
        product.updated_at_micros = event.recorded_at.as_micros();
        let low_stock = low_stock_key(&product);
        match old_low_stock {
            Some(old) if old == low_stock => {}
            Some(old) => {
                tx.delete(old);
                tx.put(low_stock, product.id.as_bytes().to_vec());
            }
            None => tx.put(low_stock, product.id.as_bytes().to_vec()),
        }
        tx.put_typed(key, product);
        Ok(())
    }
}
