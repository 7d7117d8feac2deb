//! The data lifecycle commands of the binary: `annals forget`, `backup`, `restore` and
//! `import`.
//!
//! `forget` and `backup` act on a node: on its data directory directly when no server holds
//! it, otherwise through the server that does (the admin mutations `forgetSubject` and
//! `backup`), which it finds in the directory's `serve.json` or through `--url`.
//! `restore` and `import` build a new data directory and need no server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use annals::admin::AdminCall;
use annals::cli::{BackupArgs, ForgetArgs, ImportArgs, NodeTargetArgs, RestoreArgs};
use annals::lifecycle::{self, Lifecycle, backup};
use annals::node::{DataDir, Node, NodeConfig};

use crate::coded;

const FORGET: &str = "mutation($s: String!, $r: String) { forgetSubject(subjectId: $s, reason: $r) { subjectRef position backupsScrubbed } }";
const BACKUP: &str = "mutation($d: String!) { backup(directory: $d) { id directory createdAt head tip logBytes seconds } }";

struct Call {
    query: &'static str,
    variables: Value,
    field: &'static str,
}

impl AdminCall for Call {
    fn graphql(&self) -> (&'static str, Value) {
        (self.query, self.variables.clone())
    }

    fn render(&self, data: &Value) -> String {
        lines(&data[self.field])
    }
}

/// `key: value` lines of a flat JSON object.
fn lines(value: &Value) -> String {
    let mut out = String::new();
    if let Some(members) = value.as_object() {
        for (key, v) in members {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            out.push_str(&format!("{key}: {text}\n"));
        }
    }
    out
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Where the command runs.
enum Target {
    /// This process opened the node.
    Here(Node),
    /// A server holds the data directory: ask it.
    Server(String),
}

/// Opens the node on the data directory, or finds the server that holds it.
fn target(args: &NodeTargetArgs) -> anyhow::Result<Target> {
    if let Some(url) = &args.url {
        return Ok(Target::Server(url.clone()));
    }
    let mut config = NodeConfig::on_disk(&args.data_dir);
    // A node opened for one operation must not send the checkout's commands nor deliver
    // webhooks.
    config.checkout = None;
    config.webhooks.active_when = Some(annals_projections::process::ActiveWhen(
        std::sync::Arc::new(|| false),
    ));
    match Node::start(config) {
        Ok(node) => Ok(Target::Here(node)),
        Err(e) if e.in_use().is_some() => match DataDir::new(&args.data_dir).announced_url() {
            Some(url) => Ok(Target::Server(url)),
            None => bail!(
                "{} is in use by another process that does not announce a server: pass --url",
                args.data_dir.display()
            ),
        },
        Err(e) => Err(coded(&e)),
    }
}

fn print(json_out: bool, value: &Value) {
    if json_out {
        println!("{value}");
    } else {
        print!("{}", lines(value));
    }
}

async fn ask(url: &str, args: &NodeTargetArgs, call: Call) -> anyhow::Result<Value> {
    let data = annals::admin::send(url, args.api_key.as_deref(), &call)
        .await
        .map_err(anyhow::Error::from)?;
    Ok(data[call.field].clone())
}

/// Runs `here` on the node of the data directory when this process can open it, or sends
/// `call` to the server that holds it; returns the answer.
fn on_node<F, Fut>(args: &NodeTargetArgs, call: Call, here: F) -> anyhow::Result<Value>
where
    F: FnOnce(Arc<Lifecycle>) -> Fut,
    Fut: Future<Output = anyhow::Result<Value>>,
{
    let runtime = runtime()?;
    let _entered = runtime.enter();
    let target = target(args)?;
    runtime.block_on(async {
        match target {
            Target::Here(node) => {
                let result = here(node.lifecycle().clone()).await;
                node.shutdown().await;
                result
            }
            Target::Server(url) => ask(&url, args, call).await,
        }
    })
}

/// `annals forget SUBJECT`.
pub fn forget(args: ForgetArgs) -> anyhow::Result<()> {
    let call = Call {
        query: FORGET,
        variables: json!({ "s": args.subject, "r": args.reason }),
        field: "forgetSubject",
    };
    let answer = on_node(&args.target, call, |lifecycle| async move {
        let erasure = lifecycle
            .forget(&args.subject, args.reason.clone(), Some("cli".into()))
            .await
            .map_err(|e| coded(&e))?;
        Ok(json!({
            "subjectRef": erasure.subject_ref.to_hex(),
            "position": erasure.position.to_string(),
            "backupsScrubbed": erasure.backups_scrubbed,
        }))
    })?;
    print(args.target.json, &answer);
    Ok(())
}

/// `annals backup --to B`.
pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.to).with_context(|| format!("creating {}", args.to.display()))?;
    let to = args
        .to
        .canonicalize()
        .with_context(|| format!("resolving {}", args.to.display()))?;
    let call = Call {
        query: BACKUP,
        variables: json!({ "d": to.display().to_string() }),
        field: "backup",
    };
    let answer = on_node(&args.target, call, |lifecycle| async move {
        let entry = lifecycle.backup(&to).await.map_err(|e| coded(&e))?;
        Ok(entry_json(&to, &entry))
    })?;
    print(args.target.json, &answer);
    Ok(())
}

fn entry_json(dir: &Path, entry: &backup::BackupEntry) -> Value {
    json!({
        "id": entry.id,
        "directory": dir.display().to_string(),
        "createdAt": entry.created_at,
        "head": entry.log.head.0.to_string(),
        "tip": annals_store::backup::hash_hex(&entry.log.tip),
        "logBytes": entry.log.size.to_string(),
        "seconds": entry.seconds,
    })
}

/// `annals restore B --data-dir D`.
pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    if args.list {
        let entries = backup::list(&args.backup_dir).map_err(|e| coded(&e))?;
        let all: Vec<Value> = entries
            .iter()
            .map(|e| entry_json(&args.backup_dir, e))
            .collect();
        if args.json {
            println!("{}", Value::Array(all));
        } else if all.is_empty() {
            println!("no complete backup in {}", args.backup_dir.display());
        } else {
            for e in &entries {
                println!(
                    "backup {}: {} head {} ({:.1} s)",
                    e.id, e.created_at, e.log.head.0, e.seconds
                );
            }
        }
        return Ok(());
    }
    let data_dir: PathBuf = args
        .data_dir
        .clone()
        .context("--data-dir is required to restore")?;
    let runtime = runtime()?;
    let report = runtime
        .block_on(backup::restore(&args.backup_dir, args.backup, &data_dir))
        .map_err(|e| coded(&e))?;
    let answer = json!({
        "backup": report.backup.id,
        "head": report.backup.log.head.0.to_string(),
        "tip": annals_store::backup::hash_hex(&report.backup.log.tip),
        "verified": report.verified.to_string(),
        "dataDir": data_dir.display().to_string(),
    });
    print(args.json, &answer);
    Ok(())
}

/// `annals import FILE --data-dir D`.
pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let report = runtime
        .block_on(lifecycle::import(&args.file, &args.data_dir))
        .map_err(|e| coded(&e))?;
    // The read models are built from the imported log before the command returns.
    runtime
        .block_on(annals::replay::replay(&args.data_dir, &[]))
        .map_err(|e| coded(&e))?;
    let answer = json!({
        "head": report.head.to_string(),
        "tip": report.tip,
        "removed": report.removed.to_string(),
        "dataDir": args.data_dir.display().to_string(),
    });
    print(args.json, &answer);
    Ok(())
}
