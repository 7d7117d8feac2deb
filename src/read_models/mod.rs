//! The read models of the reference domain, built by two projections:
//!
//! - `orders`: order details; orders by status and by customer and status, each an index
//!   ordered by the position the order was placed at (all orders, and all of a customer's,
//!   are read as the merge of the status indexes); per-customer statistics.
//! - `products`: stock per product (on hand, reserved, available) and a low-stock index
//!   ordered by available units.
//! - `payments`: every payment with its status and the gateway's answers.
//! - `streams`: the stream catalog of `annals-projections` (every stream by id and
//!   category), which the API's `streams` and `categories` queries read.
//!
//! The checkout saga's instances are the process manager's own state, read through
//! [`crate::checkout::load`].
//!
//! [`CommerceReadModels`] answers the queries over them, with cursor pagination done in
//! the read-model store (a cursor is the hex of the index key it stopped at).

mod orders;
mod payments;
mod products;

use std::sync::Arc;

use annals_projections::{
    Projection, ProjectionError, ProjectionRuntime, ReadModelStore, ReadView, RuntimeOptions,
};
use annals_store::EventStore;
use serde::{Deserialize, Serialize};

pub use orders::{CustomerStats, OrderLineView, OrderView, OrdersProjection};
pub use payments::{PaymentView, PaymentsProjection};
pub use products::{ProductView, ProductsProjection};

use crate::domain::OrderStatus;

/// Name of the orders projection.
pub const ORDERS: &str = "orders";
/// Name of the products projection.
pub const PRODUCTS: &str = "products";
/// Name of the payments projection.
pub const PAYMENTS: &str = "payments";

/// The read-model projections of the reference domain, in the order the runtime starts
/// them.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(OrdersProjection),
        Arc::new(ProductsProjection),
        Arc::new(PaymentsProjection),
        // Domain-free: every stream by id and category, for `streams` and the console.
        Arc::new(annals_projections::catalog::StreamCatalogProjection),
    ]
}

/// Starts the reference projections over `store`, reading old event versions through the
/// domain's upcasters: what `annals serve`, `annals replay` and the benches run.
pub fn start<S: EventStore>(
    store: Arc<S>,
    read: Arc<ReadModelStore>,
    options: RuntimeOptions,
) -> Result<ProjectionRuntime, ProjectionError> {
    ProjectionRuntime::start(
        store,
        read,
        projections(),
        Arc::new(crate::domain::upcasters()),
        options,
    )
}

/// Page-size limits of list queries.
#[derive(Clone, Copy, Debug)]
pub struct PageLimits {
    /// Page size when the client gives none.
    pub default: usize,
    /// Largest page a client may ask for.
    pub max: usize,
}

impl Default for PageLimits {
    fn default() -> Self {
        Self {
            default: 20,
            max: 100,
        }
    }
}

/// One page of a list query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, each with the cursor that resumes after it.
    pub items: Vec<(String, T)>,
    /// Whether more items follow the last one.
    pub has_next_page: bool,
}

impl<T> Page<T> {
    /// The cursor of the last item.
    pub fn end_cursor(&self) -> Option<&str> {
        self.items.last().map(|(c, _)| c.as_str())
    }
}

/// Why a read-model query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A cursor that this API did not hand out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// A page size of zero or above the maximum.
    #[error("page size must be between 1 and {max}")]
    InvalidPageSize {
        /// The maximum.
        max: usize,
    },
    /// The read models failed.
    #[error(transparent)]
    ReadModel(#[from] ProjectionError),
}

/// Which orders to list.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    /// Only this customer's orders.
    pub customer_id: Option<String>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
}

/// The queries of the reference domain over its read models.
#[derive(Clone, Debug)]
pub struct CommerceReadModels {
    read: Arc<ReadModelStore>,
    limits: PageLimits,
}

impl CommerceReadModels {
    /// Queries over `read` with these page limits.
    pub fn new(read: Arc<ReadModelStore>, limits: PageLimits) -> Self {
        Self { read, limits }
    }

    /// The page limits.
    pub fn limits(&self) -> PageLimits {
        self.limits
    }

    fn page_size(&self, first: Option<usize>) -> Result<usize, QueryError> {
        let size = first.unwrap_or(self.limits.default);
        if size == 0 || size > self.limits.max {
            return Err(QueryError::InvalidPageSize {
                max: self.limits.max,
            });
        }
        Ok(size)
    }

    /// One order.
    pub fn order(&self, id: &str) -> Result<Option<OrderView>, QueryError> {
        Ok(self.read.view(ORDERS)?.get_json(&orders::order_key(id))?)
    }

    /// Orders by placement, filtered by customer and/or status.
    pub fn orders(
        &self,
        filter: &OrderFilter,
        first: Option<usize>,
        after: Option<&str>,
    ) -> Result<Page<OrderView>, QueryError> {
        let size = self.page_size(first)?;
        let view = self.read.view(ORDERS)?;
        let prefixes = orders::index_prefixes(filter.customer_id.as_deref(), filter.status);
        let ids = paginate(&view, &prefixes, after, size)?;
        let mut items = Vec::with_capacity(ids.items.len());
        for (cursor, id) in ids.items {
            let id = String::from_utf8(id).map_err(|_| corrupt("order index"))?;
            let order = view
                .get_json(&orders::order_key(&id))?
                .ok_or_else(|| corrupt("order index names a missing order"))?;
            items.push((cursor, order));
        }
        Ok(Page {
            items,
            has_next_page: ids.has_next_page,
        })
    }

    /// One payment.
    pub fn payment(&self, id: &str) -> Result<Option<PaymentView>, QueryError> {
        Ok(self
            .read
            .view(PAYMENTS)?
            .get_json(&payments::payment_key(id))?)
    }

    /// A customer's order statistics.
    pub fn customer_stats(&self, customer_id: &str) -> Result<Option<CustomerStats>, QueryError> {
        Ok(self
            .read
            .view(ORDERS)?
            .get_json(&orders::customer_stats_key(customer_id))?)
    }

    /// One product's stock.
    pub fn product(&self, id: &str) -> Result<Option<ProductView>, QueryError> {
        Ok(self
            .read
            .view(PRODUCTS)?
            .get_json(&products::product_key(id))?)
    }

    /// Every product, by id.
    pub fn products(
        &self,
        first: Option<usize>,
        after: Option<&str>,
    ) -> Result<Page<ProductView>, QueryError> {
        let size = self.page_size(first)?;
        let view = self.read.view(PRODUCTS)?;
        let rows = paginate(&view, &[products::PRODUCT_PREFIX.to_vec()], after, size)?;
        let items = rows
            .items
            .into_iter()
            .map(|(cursor, value)| {
                Ok((
                    cursor,
                    serde_json::from_slice(&value).map_err(ProjectionError::from)?,
                ))
            })
            .collect::<Result<_, QueryError>>()?;
        Ok(Page {
            items,
            has_next_page: rows.has_next_page,
        })
    }

    /// Products with fewer than `threshold` units available, fewest first (at most the
    /// maximum page size).
    pub fn low_stock(&self, threshold: u64) -> Result<Vec<ProductView>, QueryError> {
        let view = self.read.view(PRODUCTS)?;
        let end = products::low_stock_bound(threshold);
        let mut out = Vec::new();
        for (key, id) in view.scan(products::LOW_STOCK_PREFIX, None, self.limits.max)? {
            if key >= end {
                break;
            }
            let id = String::from_utf8(id).map_err(|_| corrupt("low-stock index"))?;
            if let Some(product) = view.get_json(&products::product_key(&id))? {
                out.push(product);
            }
        }
        Ok(out)
    }
}

fn corrupt(what: &str) -> QueryError {
    QueryError::ReadModel(ProjectionError::Corruption {
        what: what.to_string(),
        reason: "inconsistent read model".into(),
    })
}

/// A page of `(cursor, value)` rows under `prefixes` (merged, see
/// [`ReadView::scan_merged`]) after the cursor `after`; a cursor is the hex of the key
/// suffix after its prefix.
fn paginate(
    view: &ReadView<'_>,
    prefixes: &[Vec<u8>],
    after: Option<&str>,
    size: usize,
) -> Result<Page<Vec<u8>>, QueryError> {
    let after = match after {
        None => None,
        Some(cursor) => Some(decode_hex(cursor).ok_or(QueryError::InvalidCursor)?),
    };
    let mut rows = view.scan_merged(prefixes, after.as_deref(), size + 1)?;
    let has_next_page = rows.len() > size;
    rows.truncate(size);
    let items = rows
        .into_iter()
        .map(|(suffix, value)| (encode_hex(&suffix), value))
        .collect();
    Ok(Page {
        items,
        has_next_page,
    })
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 2048 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Decodes a domain event (an adjacently tagged enum, `{"type": .., "data": ..}`) straight
/// from the event type and the payload bytes, without the intermediate `serde_json::Value`
/// of `DomainEvent::decode` and without copying the payload into such a document: the
/// projections' hot path.
pub(crate) fn decode<E: serde::de::DeserializeOwned>(
    event: &annals_store::RecordedEvent,
) -> Result<E, annals_projections::HandlerError> {
    Ok(E::deserialize(Tagged {
        tag: &event.event_type,
        payload: &event.payload,
    })?)
}

/// An adjacently tagged document made of a tag and a JSON payload, read as the map
/// `{"type": tag, "data": payload}` would be.
struct Tagged<'a> {
    tag: &'a str,
    payload: &'a [u8],
}

impl<'de> serde::Deserializer<'de> for Tagged<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TaggedFields { doc: self, next: 0 })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// The two fields of a [`Tagged`] document, in order.
struct TaggedFields<'a> {
    doc: Tagged<'a>,
    /// 0: `type` is next, 1: `data`, 2: done.
    next: u8,
}

impl<'de> serde::de::MapAccess<'de> for TaggedFields<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::IntoDeserializer;
        let key = match self.next {
            0 => "type",
            1 => "data",
            _ => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::IntoDeserializer;
        self.next += 1;
        if self.next == 1 {
            return seed.deserialize(self.doc.tag.into_deserializer());
        }
        let mut payload = serde_json::Deserializer::from_slice(self.doc.payload);
        let value = seed.deserialize(&mut payload)?;
        payload.end()?;
        Ok(value)
    }
}

/// The id of an aggregate from its stream id (`order-42` → `42`; empty without a `-`).
fn aggregate_id(stream_id: &annals_store::StreamId) -> &str {
    stream_id.aggregate_id().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use annals_projections::testkit::EventLog;
    use serde_json::json;

    use super::decode;
    use crate::domain::{OrderEvent, ProductEvent};

    fn event(event_type: &str, payload: &[u8]) -> annals_store::RecordedEvent {
        let mut events = EventLog::new()
            .event("order-o1", event_type, json!({}))
            .into_events();
        let mut event = events.remove(0);
        event.payload = payload.to_vec();
        event
    }

    #[test]
    fn an_event_decodes_from_its_type_and_payload() {
        let placed = event(
            "OrderPlaced",
            br#"{"customer_id":"c1","lines":[{"product_id":"p1","quantity":2,"unit_price_cents":5}],"total_cents":10}"#,
        );
        let decoded: OrderEvent = decode(&placed).unwrap();
        assert!(matches!(
            decoded,
            OrderEvent::OrderPlaced { ref customer_id, total_cents: 10, ref lines }
                if customer_id == "c1" && lines.len() == 1
        ));
        let confirmed: OrderEvent = decode(&event("OrderConfirmed", b"{}")).unwrap();
        assert_eq!(confirmed, OrderEvent::OrderConfirmed {});
    }

    #[test]
    fn a_wrong_type_or_payload_is_an_error_not_a_panic() {
        // A type of another aggregate, a payload of the wrong shape, trailing bytes, and
        // bytes that are not JSON.
        assert!(decode::<ProductEvent>(&event("OrderConfirmed", b"{}")).is_err());
        assert!(decode::<OrderEvent>(&event("OrderShipped", br#"{"tracking":1}"#)).is_err());
        assert!(decode::<OrderEvent>(&event("OrderConfirmed", b"{} {}")).is_err());
        assert!(decode::<OrderEvent>(&event("OrderConfirmed", b"\xff")).is_err());
    }
}
