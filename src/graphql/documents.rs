//! Parsed documents cached by their text: a client that sends the same operation with
//! new variables (what applications do) skips the parser. Validation still runs on every
//! request, because it looks at the variables.
//!
//! An extension of the schema rather than a step of the HTTP handler, so that it sees the
//! text an automatic persisted query stands for (filled in before parsing).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ServerResult, Variables};

/// Documents kept at most; past it the cache starts over (the operations an application
/// sends are few, and a flood of one-off texts must not grow memory).
const CAPACITY: usize = 1024;
/// Texts longer than this are parsed every time rather than kept.
const MAX_TEXT: usize = 16 * 1024;

/// The cache, shared by every request of a schema.
#[derive(Default)]
pub struct DocumentCache {
    documents: Arc<RwLock<HashMap<String, Arc<ExecutableDocument>>>>,
}

impl ExtensionFactory for DocumentCache {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Cached(self.documents.clone()))
    }
}

struct Cached(Arc<RwLock<HashMap<String, Arc<ExecutableDocument>>>>);

#[async_trait::async_trait]
impl Extension for Cached {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let held = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(query)
            .cloned();
        if let Some(document) = held {
            return Ok((*document).clone());
        }
        // Parsing (and the depth checks that come with it) succeeded once for this text,
        // so a copy of its result stands for it.
        let document = next.run(ctx, query, variables).await?;
        if query.len() <= MAX_TEXT {
            let mut documents = self
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if documents.len() >= CAPACITY {
                documents.clear();
            }
            documents.insert(query.to_string(), Arc::new(document.clone()));
        }
        Ok(document)
    }
}
