//! The live `events` subscription: catch-up from a position, then live.
//!
//! The stream reads the log in bounded pages and yields one event at a time; it reads
//! the next page only when the client has taken the previous one (the WebSocket sink
//! pulls), so a slow client slows its own reads instead of growing a buffer. When caught
//! up it waits on the store's durable-head watch, which moves only after a commit is
//! durable: a subscriber never sees an event that could still be lost. Every event is
//! yielded once, in position order, and resuming with `after` = the last position seen
//! continues exactly after it.

use std::collections::VecDeque;

use annals_store::{EventStore, Position as StorePosition, ReadFilter, RecordedEvent, SharedStore};
use async_graphql::{Context, Subscription};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;

use super::error::ApiError;
use super::scalars::Position;
use super::types::{Event, EventFilter};
use super::{RoleGuard, SubscriptionSlot, api};
use crate::server::auth::{KeyRing, Principal, Role};

/// Events read from the log per page while catching up: the most a subscription holds.
const PAGE: usize = 256;

/// Live subscriptions.
#[derive(Default)]
pub struct LogSubscription;

struct Tail {
    store: SharedStore,
    filter: ReadFilter,
    /// The first position not yet read.
    next: StorePosition,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<StorePosition>,
    shutdown: watch::Receiver<bool>,
    failed: bool,
    /// Held as long as the stream lives: the principal's subscription slot.
    _slot: SubscriptionSlot,
    /// Who subscribed, re-checked against the keys whenever they are replaced.
    principal: Option<Principal>,
    keys: KeyRing,
    keys_changed: watch::Receiver<u64>,
}

impl Tail {
    /// An `UNAUTHENTICATED` error if the subscriber's key is no longer in force.
    fn revoked(&self) -> Option<ApiError> {
        let principal = self.principal.as_ref()?;
        (!self.keys.current().is_active(principal))
            .then(|| ApiError::unauthenticated("the API key of this subscription has been revoked"))
    }

    async fn next_event(&mut self) -> Option<Result<RecordedEvent, ApiError>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            let head = *self.head.borrow_and_update();
            if self.next <= head {
                match self.store.read_all(self.next, PAGE, &self.filter).await {
                    Ok(page) => {
                        let moved = page.next > self.next;
                        self.next = page.next.max(self.next);
                        self.buffer.extend(page.events);
                        if moved || !self.buffer.is_empty() {
                            continue;
                        }
                    }
                    Err(error) => {
                        self.failed = true;
                        return Some(Err(ApiError::from(error)));
                    }
                }
            }
            if *self.shutdown.borrow() {
                return None;
            }
            tokio::select! {
                changed = self.head.changed() => if changed.is_err() { return None },
                _ = self.shutdown.changed() => return None,
                changed = self.keys_changed.changed() => {
                    if changed.is_ok() && let Some(error) = self.revoked() {
                        self.failed = true;
                        return Some(Err(error));
                    }
                }
            }
        }
    }
}

#[Subscription]
impl LogSubscription {
    /// Every event after position `after` (exclusive; default 0: from the start) that
    /// passes `filter`: first the history, then live as commits become durable. To
    /// resume after a disconnect, pass the position of the last event received.
    #[graphql(guard = "RoleGuard(Role::Reader)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<Position>,
        filter: Option<EventFilter>,
    ) -> Result<BoxStream<'static, Result<Event, ApiError>>, ApiError> {
        let api = api(ctx);
        // The guard ran, so a principal is present; `anonymous` only without keys.
        let principal = ctx.data_opt::<Principal>().cloned();
        // A connection authenticates once; its key may have been revoked since.
        if let Some(p) = &principal
            && !api.keys.current().is_active(p)
        {
            return Err(ApiError::unauthenticated(
                "the API key of this connection has been revoked",
            ));
        }
        let slot = api.subscriptions.acquire(
            principal.as_ref().map_or("anonymous", |p| p.id.as_str()),
            api.limits.max_subscriptions_per_key,
        )?;
        let after = after.unwrap_or_default().0;
        let tail = Tail {
            store: api.store.clone(),
            filter: filter.unwrap_or_default().to_read_filter(),
            next: StorePosition(after.saturating_add(1)),
            buffer: VecDeque::with_capacity(PAGE),
            head: api.store.subscribe_head(),
            shutdown: api.shutdown.clone(),
            failed: after == u64::MAX,
            _slot: slot,
            principal,
            keys: api.keys.clone(),
            keys_changed: api.keys.watch(),
        };
        let privacy = api.privacy.clone();
        Ok(futures::stream::unfold(tail, move |mut tail| {
            let privacy = privacy.clone();
            async move {
                let item = tail.next_event().await?;
                Some((item.map(|e| Event::revealed(e, &privacy)), tail))
            }
        })
        .boxed())
    }
}
