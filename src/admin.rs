//! `annals projections ...` and `annals processes ...`: a running server's projections
//! and process managers, through its GraphQL API (an admin key): their status, parked
//! events or commands, retry, skip and rewind. The same operations as the admin mutations,
//! for scripts and terminals.

use serde_json::{Value, json};

/// Why a command against the server failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server could not be reached or did not answer with GraphQL.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// The endpoint tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the request: its error code and message.
    #[error("{message} [{code}]")]
    Refused {
        /// The GraphQL `extensions.code`.
        code: String,
        /// The server's message.
        message: String,
    },
}

/// What to do (the subcommands of `annals projections`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminRequest {
    /// Every projection's state, checkpoint, lag and parked events.
    Status,
    /// The events a projection parked, with the handler's last error.
    Parked {
        /// The projection (`orders`, `products`).
        projection: String,
    },
    /// Hands a parked event to its projection again.
    Retry {
        /// The projection.
        projection: String,
        /// The parked event's position.
        position: u64,
    },
    /// Drops a parked event: the read model stays without it until a rebuild.
    Skip {
        /// The projection.
        projection: String,
        /// The parked event's position.
        position: u64,
    },
    /// Hands the events from a position on to the projection again.
    Rewind {
        /// The projection.
        projection: String,
        /// The first position handed again.
        from: u64,
    },
}

const STATUS: &str =
    "{ projections { name state checkpoint head lag parked lastError failedPosition } }";
const PARKED: &str = "query($p: String!) { parkedEvents(projection: $p) { position streamId eventType attempts parkedAt error } }";
const RETRY: &str =
    "mutation($p: String!, $at: Position!) { retryParkedEvent(projection: $p, position: $at) }";
const SKIP: &str =
    "mutation($p: String!, $at: Position!) { skipParkedEvent(projection: $p, position: $at) }";
const REWIND: &str = "mutation($p: String!, $at: Position!) { rewindProjection(name: $p, from: $at) { name state checkpoint } }";

/// A request to a server's admin API: the GraphQL it sends and how its answer reads.
pub trait AdminCall {
    /// The GraphQL document and its variables.
    fn graphql(&self) -> (&'static str, Value);
    /// The answer's `data` as lines for a terminal.
    fn render(&self, data: &Value) -> String;
}

/// Sends `request` to the GraphQL endpoint at `url` (a bare `http://host:port` gets
/// `/graphql`) with `api_key`, and returns the `data` of the answer.
pub async fn send(
    url: &str,
    api_key: Option<&str>,
    request: &impl AdminCall,
) -> Result<Value, AdminError> {
    let (query, variables) = request.graphql();
    let endpoint = if url.trim_end_matches('/').ends_with("/graphql") {
        url.to_string()
    } else {
        format!("{}/graphql", url.trim_end_matches('/'))
    };
    let transport = |reason: String| AdminError::Transport {
        url: endpoint.clone(),
        reason,
    };
    let mut post = reqwest::Client::new()
        .post(&endpoint)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(key) = api_key {
        post = post.bearer_auth(key);
    }
    let response = post.send().await.map_err(|e| transport(e.to_string()))?;
    let body: Value = response
        .json()
        .await
        .map_err(|e| transport(format!("the answer is not GraphQL JSON: {e}")))?;
    if let Some(error) = body["errors"].get(0) {
        return Err(AdminError::Refused {
            code: error["extensions"]["code"]
                .as_str()
                .unwrap_or("INTERNAL")
                .to_string(),
            message: error["message"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(body["data"].clone())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

impl AdminCall for AdminRequest {
    fn graphql(&self) -> (&'static str, Value) {
        match self {
            Self::Status => (STATUS, json!({})),
            Self::Parked { projection } => (PARKED, json!({ "p": projection })),
            Self::Retry {
                projection,
                position,
            } => (
                RETRY,
                json!({ "p": projection, "at": position.to_string() }),
            ),
            Self::Skip {
                projection,
                position,
            } => (SKIP, json!({ "p": projection, "at": position.to_string() })),
            Self::Rewind { projection, from } => {
                (REWIND, json!({ "p": projection, "at": from.to_string() }))
            }
        }
    }

    fn render(&self, data: &Value) -> String {
        match self {
            Self::Status => {
                let mut out = format!(
                    "{:<16} {:<12} {:>12} {:>12} {:>8} {:>7}\n",
                    "projection", "state", "checkpoint", "head", "lag", "parked"
                );
                for p in data["projections"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:<16} {:<12} {:>12} {:>12} {:>8} {:>7}\n",
                        text(&p["name"]),
                        text(&p["state"]),
                        text(&p["checkpoint"]),
                        text(&p["head"]),
                        text(&p["lag"]),
                        text(&p["parked"]),
                    ));
                    if !p["lastError"].is_null() {
                        out.push_str(&format!("  last error: {}\n", text(&p["lastError"])));
                    }
                }
                out
            }
            Self::Parked { projection } => {
                let parked = data["parkedEvents"].as_array().cloned().unwrap_or_default();
                if parked.is_empty() {
                    return format!("{projection}: no parked events\n");
                }
                let mut out = String::new();
                for p in parked {
                    out.push_str(&format!(
                        "{} {} {} attempts={} parked={} error: {}\n",
                        text(&p["position"]),
                        text(&p["streamId"]),
                        text(&p["eventType"]),
                        text(&p["attempts"]),
                        text(&p["parkedAt"]),
                        text(&p["error"]),
                    ));
                }
                out
            }
            Self::Retry {
                projection,
                position,
            } => {
                if data["retryParkedEvent"] == json!(true) {
                    format!(
                        "{projection}: the event at {position} applied and is no longer parked\n"
                    )
                } else {
                    format!("{projection}: the event at {position} failed again and stays parked\n")
                }
            }
            Self::Skip {
                projection,
                position,
            } => format!("{projection}: the event at {position} is skipped\n"),
            Self::Rewind { projection, from } => {
                format!("{projection}: rewound to position {from}\n")
            }
        }
    }
}

/// What to do (the subcommands of `annals processes`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProcessRequest {
    /// Every process manager's checkpoint, outbox, deadlines and parked commands.
    Status,
    /// The commands a process manager parked after their retries.
    Parked {
        /// The process manager (`checkout`).
        process: String,
    },
    /// Puts a parked command back in the outbox; it is sent again at once.
    Retry {
        /// The process manager.
        process: String,
        /// The position of the event that decided the command.
        position: u64,
        /// The command's index among that event's commands.
        index: u16,
    },
    /// Gives up a parked command for good.
    Skip {
        /// The process manager.
        process: String,
        /// The position of the event that decided the command.
        position: u64,
        /// The command's index among that event's commands.
        index: u16,
    },
}

const PROCESS_STATUS: &str = "{ processes { name outbox deadlines nextDeadlineAt parked sent rejected retried deadlinesFired projection { state checkpoint lag lastError } } }";
const PARKED_COMMANDS: &str = "query($p: String!) { parkedCommands(process: $p) { position index instance command attempts parkedAt error } }";
const RETRY_COMMAND: &str = "mutation($p: String!, $at: Position!, $i: Int!) { retryParkedCommand(process: $p, position: $at, index: $i) }";
const SKIP_COMMAND: &str = "mutation($p: String!, $at: Position!, $i: Int!) { skipParkedCommand(process: $p, position: $at, index: $i) }";

impl AdminCall for ProcessRequest {
    fn graphql(&self) -> (&'static str, Value) {
        match self {
            Self::Status => (PROCESS_STATUS, json!({})),
            Self::Parked { process } => (PARKED_COMMANDS, json!({ "p": process })),
            Self::Retry {
                process,
                position,
                index,
            } => (
                RETRY_COMMAND,
                json!({ "p": process, "at": position.to_string(), "i": index }),
            ),
            Self::Skip {
                process,
                position,
                index,
            } => (
                SKIP_COMMAND,
                json!({ "p": process, "at": position.to_string(), "i": index }),
            ),
        }
    }

    fn render(&self, data: &Value) -> String {
        match self {
            Self::Status => {
                let mut out = format!(
                    "{:<12} {:<9} {:>12} {:>7} {:>9} {:>7} {:>9} {:>9}\n",
                    "process",
                    "state",
                    "checkpoint",
                    "outbox",
                    "deadlines",
                    "parked",
                    "sent",
                    "rejected"
                );
                for p in data["processes"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:<12} {:<9} {:>12} {:>7} {:>9} {:>7} {:>9} {:>9}\n",
                        text(&p["name"]),
                        text(&p["projection"]["state"]),
                        text(&p["projection"]["checkpoint"]),
                        text(&p["outbox"]),
                        text(&p["deadlines"]),
                        text(&p["parked"]),
                        text(&p["sent"]),
                        text(&p["rejected"]),
                    ));
                    if !p["nextDeadlineAt"].is_null() {
                        out.push_str(&format!(
                            "  next deadline: {}\n",
                            text(&p["nextDeadlineAt"])
                        ));
                    }
                    if !p["projection"]["lastError"].is_null() {
                        out.push_str(&format!(
                            "  last error: {}\n",
                            text(&p["projection"]["lastError"])
                        ));
                    }
                }
                out
            }
            Self::Parked { process } => {
                let parked = data["parkedCommands"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if parked.is_empty() {
                    return format!("{process}: no parked commands\n");
                }
                let mut out = String::new();
                for p in parked {
                    out.push_str(&format!(
                        "{} {} {} {} attempts={} parked={} error: {}\n",
                        text(&p["position"]),
                        text(&p["index"]),
                        text(&p["instance"]),
                        text(&p["command"]),
                        text(&p["attempts"]),
                        text(&p["parkedAt"]),
                        text(&p["error"]),
                    ));
                }
                out
            }
            Self::Retry {
                process,
                position,
                index,
            } => format!("{process}: the command {position}/{index} is back in the outbox\n"),
            Self::Skip {
                process,
                position,
                index,
            } => format!("{process}: the command {position}/{index} is skipped\n"),
        }
    }
}
