//! The executor every transport runs operations through: documents parsed and validated
//! once per text, automatic persisted queries, then the schema.
//!
//! Validation splits in two. What a document's text decides (fields exist, arguments are
//! known and their literals have the right types, fragments, variables declared and used
//! where allowed) is checked once per text by a second schema, `validator`, in strict
//! mode and with no variables, and the parsed document is kept. What the variables decide
//! is checked on every request, here: each variable the selected operation declares must
//! be a valid value of its declared type, as GraphQL's variable coercion requires before
//! execution, so a wrong value refuses the whole request and nothing runs. The executing
//! schema runs in fast mode, which still enforces the depth and complexity limits on every
//! request, so a cached document never skips a limit.
//!
//! No schema extension is installed: with any extension, async-graphql wraps every field
//! of every request in the extension chain, which costs more than the work of a small
//! query. Automatic persisted queries are therefore handled here too.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{ExecutableDocument, OperationDefinition, OperationType};
use async_graphql::registry::{MetaType, MetaTypeName, Registry};
use async_graphql::{Data, Name, Request, Response, SchemaEnv, ServerError, Value};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AnnalsSchema;

/// Documents kept at most; past it the cache starts over (the operations an application
/// sends are few, and a flood of one-off texts must not grow memory without bound).
const CAPACITY: usize = 1024;
/// Texts longer than this are parsed and validated every time rather than kept.
const MAX_TEXT: usize = 16 * 1024;

/// The schema behind the document cache. Cheap to clone; clones share the caches.
#[derive(Clone)]
pub struct Graphql {
    inner: Arc<Inner>,
}

struct Inner {
    /// Executes, in fast validation mode (limits only).
    schema: AnnalsSchema,
    /// Validates a text once, in strict mode; executes nothing.
    validator: AnnalsSchema,
    /// The validator's extension, which holds the type registry once it has run.
    validated: ValidateOnly,
    /// Validated documents by text.
    documents: Bounded<Arc<ExecutableDocument>>,
    /// Texts of automatic persisted queries by their sha256 (lowercase hex).
    persisted: Bounded<Arc<str>>,
}

/// A map of at most [`CAPACITY`] entries that starts over when full.
struct Bounded<V>(RwLock<HashMap<Box<str>, V>>);

impl<V: Clone> Bounded<V> {
    fn new() -> Self {
        Self(RwLock::new(HashMap::new()))
    }

    fn get(&self, key: &str) -> Option<V> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }

    fn insert(&self, key: &str, value: V) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key.into(), value);
    }
}

/// The `persistedQuery` request extension of Apollo's protocol.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PersistedQuery {
    version: u32,
    sha256_hash: String,
}

/// Stops a request after validation: the validator schema answers `null` for a valid
/// document and its errors for an invalid one. It also keeps the schema's environment,
/// whose type registry the variables are checked against.
#[derive(Clone, Default)]
pub(super) struct ValidateOnly {
    env: Arc<OnceLock<SchemaEnv>>,
}

impl ExtensionFactory for ValidateOnly {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Extension for ValidateOnly {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        _operation_name: Option<&str>,
        _next: NextExecute<'_>,
    ) -> Response {
        self.env.get_or_init(|| ctx.schema_env.clone());
        Response::new(Value::Null)
    }
}

impl Graphql {
    /// The executor over `schema`, built in fast validation mode, and `validator`, the
    /// same schema's shape in strict mode, without data and with `validated` installed.
    pub(super) fn new(
        schema: AnnalsSchema,
        validator: AnnalsSchema,
        validated: ValidateOnly,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                schema,
                validator,
                validated,
                documents: Bounded::new(),
                persisted: Bounded::new(),
            }),
        }
    }

    /// Resolves the request's document: its persisted text, then the validated and
    /// parsed document of that text, which is set on the request. An error answers the
    /// request without running it.
    pub async fn prepare(&self, mut request: Request) -> Result<Request, Vec<ServerError>> {
        self.resolve_persisted(&mut request)?;
        let document = match self.inner.documents.get(&request.query) {
            Some(document) => document,
            None => {
                let document = self.validate(&request).await?;
                if request.query.len() <= MAX_TEXT {
                    self.inner
                        .documents
                        .insert(&request.query, document.clone());
                }
                document
            }
        };
        if let Some(env) = self.inner.validated.env.get() {
            check_variables(&env.registry, &document, &request)?;
        }
        request.set_parsed_query((*document).clone());
        Ok(request)
    }

    /// Runs a request [`Self::prepare`] answered.
    pub async fn execute_prepared(&self, request: Request) -> Response {
        self.inner.schema.execute(request).await
    }

    /// The operation type the request selects, once [`Self::prepare`] has set its
    /// document (`None` when it selects none: the schema then names the error).
    pub fn operation_type(request: &mut Request) -> Option<OperationType> {
        let wanted = request.operation_name.clone();
        let document = request.parsed_query().ok()?;
        selected_operation(document, wanted.as_deref()).map(|operation| operation.node.ty)
    }

    /// Fills in the text of an automatic persisted query (Apollo's protocol): a hash the
    /// server has not seen is `PersistedQueryNotFound`, after which the client sends the
    /// text with its hash once.
    fn resolve_persisted(&self, request: &mut Request) -> Result<(), Vec<ServerError>> {
        let Some(extension) = request.extensions.remove("persistedQuery") else {
            return Ok(());
        };
        let refuse = |message: &str| Err(vec![error(message)]);
        let Ok(persisted) = extension
            .into_json()
            .map_err(|_| ())
            .and_then(|json| serde_json::from_value::<PersistedQuery>(json).map_err(|_| ()))
        else {
            return refuse("invalid persistedQuery extension: expected {version: 1, sha256Hash}");
        };
        if persisted.version != 1 {
            return refuse("only version 1 of the persistedQuery extension is supported");
        }
        let hash = persisted.sha256_hash.to_ascii_lowercase();
        if request.query.is_empty() {
            match self.inner.persisted.get(&hash) {
                Some(text) => request.query = text.to_string(),
                None => return refuse("PersistedQueryNotFound"),
            }
        } else {
            let actual = hex::encode(Sha256::digest(request.query.as_bytes()));
            if actual != hash {
                return refuse("the persistedQuery's sha256Hash does not match the query");
            }
            if request.query.len() <= MAX_TEXT {
                self.inner
                    .persisted
                    .insert(&hash, request.query.as_str().into());
            }
        }
        Ok(())
    }

    /// Parses and validates the request's text with the strict validator, without the
    /// request's variables (see the module docs).
    async fn validate(
        &self,
        request: &Request,
    ) -> Result<Arc<ExecutableDocument>, Vec<ServerError>> {
        let document = async_graphql::parser::parse_query(&request.query)
            .map_err(|e| vec![ServerError::from(e)])?;
        let mut check = Request::new(request.query.clone());
        check.operation_name = request.operation_name.clone();
        check.set_parsed_query(document.clone());
        let checked = self.inner.validator.execute(check).await;
        if checked.is_err() {
            return Err(checked.errors);
        }
        Ok(Arc::new(document))
    }
}

fn error(message: &str) -> ServerError {
    ServerError::new(message, None)
}

/// The operation a request selects: the one named `wanted`, or the document's only one.
/// `None` when the name is unknown or the document holds several and none is named.
fn selected_operation<'a>(
    document: &'a ExecutableDocument,
    wanted: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    let mut operations = document.operations.iter();
    match wanted {
        Some(wanted) => operations
            .find(|(name, _)| name.is_some_and(|name| name.as_str() == wanted))
            .map(|(_, operation)| operation),
        None => match (operations.next(), operations.next()) {
            (Some((_, operation)), None) => Some(operation),
            _ => None,
        },
    }
}

/// Checks each variable the selected operation declares against its declared type, as
/// GraphQL's variable coercion does before execution: a wrong value is a request error
/// and nothing runs (which matters for a mutation of several fields). An operation the
/// request does not select unambiguously is left to the schema, which names the error.
fn check_variables(
    registry: &Registry,
    document: &ExecutableDocument,
    request: &Request,
) -> Result<(), Vec<ServerError>> {
    let Some(operation) = selected_operation(document, request.operation_name.as_deref()) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for definition in &operation.node.variable_definitions {
        let definition = &definition.node;
        let name = &definition.name.node;
        let value = request
            .variables
            .get(name)
            .or(definition.default_value.as_ref().map(|v| &v.node));
        let ty = definition.var_type.node.to_string();
        let reason = match value {
            Some(value) => invalid_value(registry, &ty, value),
            None if !definition.var_type.node.nullable => {
                Some(format!("expected type \"{ty}\", found no value"))
            }
            None => None,
        };
        if let Some(reason) = reason {
            errors.push(ServerError::new(
                format!("Invalid value for variable \"${name}\": {reason}"),
                Some(definition.name.pos),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Why `value` is not a valid input of type `ty` (a GraphQL type reference such as
/// `[EventInput!]!`), or `None` when it is. The same rules as async-graphql's validation
/// of literal arguments.
fn invalid_value(registry: &Registry, ty: &str, value: &Value) -> Option<String> {
    match MetaTypeName::create(ty) {
        MetaTypeName::NonNull(inner) => match value {
            Value::Null => Some(format!("expected type \"{inner}\", found null")),
            _ => invalid_value(registry, inner, value),
        },
        MetaTypeName::List(inner) => match value {
            Value::List(items) => items.iter().enumerate().find_map(|(i, item)| {
                invalid_value(registry, inner, item).map(|r| format!("[{i}] {r}"))
            }),
            Value::Null => None,
            _ => invalid_value(registry, inner, value),
        },
        MetaTypeName::Named(name) => {
            if matches!(value, Value::Null) {
                return None;
            }
            let expected = || Some(format!("expected type \"{name}\""));
            match registry.types.get(name)? {
                MetaType::Scalar {
                    is_valid: Some(is_valid),
                    ..
                } => (!is_valid(value)).then(|| format!("expected type \"{name}\"")),
                MetaType::Scalar { is_valid: None, .. } => None,
                MetaType::Enum { enum_values, .. } => match value {
                    Value::Enum(v) if enum_values.contains_key(v.as_str()) => None,
                    Value::String(v) if enum_values.contains_key(v.as_str()) => None,
                    Value::Enum(v) => Some(format!("\"{name}\" has no value \"{v}\"")),
                    Value::String(v) => Some(format!("\"{name}\" has no value \"{v}\"")),
                    _ => expected(),
                },
                MetaType::InputObject {
                    input_fields,
                    oneof,
                    ..
                } => match value {
                    Value::Object(fields) => {
                        if *oneof
                            && (fields.len() != 1
                                || fields.values().any(|v| matches!(v, Value::Null)))
                        {
                            return Some(format!("\"{name}\" takes exactly one non-null field"));
                        }
                        for field in input_fields.values() {
                            match fields.get(field.name.as_str()) {
                                Some(v) => {
                                    if let Some(reason) = invalid_value(registry, &field.ty, v) {
                                        return Some(format!("{}: {reason}", field.name));
                                    }
                                }
                                None if MetaTypeName::create(&field.ty).is_non_null()
                                    && field.default_value.is_none() =>
                                {
                                    return Some(format!(
                                        "field \"{}\" of type \"{}\" is required but not provided",
                                        field.name, field.ty
                                    ));
                                }
                                None => {}
                            }
                        }
                        fields
                            .keys()
                            .find(|key: &&Name| !input_fields.contains_key(key.as_str()))
                            .map(|key| format!("unknown field \"{key}\" of type \"{name}\""))
                    }
                    _ => expected(),
                },
                _ => None,
            }
        }
    }
}

impl async_graphql::Executor for Graphql {
    async fn execute(&self, request: Request) -> Response {
        match self.prepare(request).await {
            Ok(request) => self.execute_prepared(request).await,
            Err(errors) => Response::from_errors(errors),
        }
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        let this = self.clone();
        async move {
            match this.prepare(request).await {
                Ok(request) => this
                    .inner
                    .schema
                    .execute_stream_with_session_data(request, session_data.unwrap_or_default()),
                Err(errors) => {
                    futures::stream::once(async move { Response::from_errors(errors) }).boxed()
                }
            }
        }
        .flatten_stream()
        .boxed()
    }
}
