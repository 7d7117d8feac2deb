//! The `annals` binary: parses the command line and hands over to the library.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, bail};
use clap::Parser;

use annals::admin::AdminCall;
use annals::audit::cli as audit;
use annals::cli::{
    AdminServerArgs, BenchCommand, Cli, Command, KeysCommand, LogFormat, SchemaArgs, ServeArgs,
};
use annals::node::{DataDir, Node, Storage};
use annals::server::AppState;
use annals::server::auth::{RateLimit, check_exposure, generate_key};
use annals_cluster::ClusterEventStore;
use annals_store::EventStore;

mod bench;
mod ops;

/// mimalloc: the many small allocations of record decoding and read-model batches are
/// markedly cheaper than with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(args))
        }
        Command::Keys(KeysCommand::New { role }) => {
            let (key, line) = generate_key(role).map_err(anyhow::Error::msg)?;
            println!("API key (shown once, keep it secret): {key}");
            println!("Configuration line for --api-keys-file / ANNALS_API_KEYS:");
            println!("{line}");
            Ok(())
        }
        Command::Schema(args) => schema(&args),
        Command::Replay(args) => {
            let names: Vec<String> = args.projection.into_iter().collect();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let report = runtime
                .block_on(annals::replay::replay(&args.data_dir, &names))
                .map_err(|e| coded(&e))?;
            for (name, checkpoint) in report.rebuilt {
                println!("{name}: rebuilt at position {checkpoint}");
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Append(args)) => {
            let report = bench::run_append(&bench::AppendBench {
                writers: args.writers,
                events_per_append: args.events_per_append,
                payload_bytes: args.payload_bytes,
                streams: args.streams,
                durability: args.durability.into(),
                limit: (&args.limit).into(),
                data_dir: args.data_dir,
                baseline: args.baseline,
                cluster: args.cluster,
            })?;
            print_report(&report, args.json, || report.table())
        }
        Command::Bench(BenchCommand::Command(args)) => {
            let report = bench::run_command(&bench::CommandBench {
                writers: args.writers,
                durability: args.durability.into(),
                limit: (&args.limit).into(),
                data_dir: args.data_dir,
                saga: args.saga,
                seal: args.seal == annals::cli::Switch::On,
            })?;
            print_report(&report, args.json, || report.table())
        }
        Command::Bench(BenchCommand::Catchup(args)) => {
            let report = bench::run_catchup(&bench::CatchupBench {
                events: args.events,
                data_dir: args.data_dir,
                batch_size: args.batch_size,
                rebuild: args.rebuild,
            })?;
            print_report(&report, args.json, || report.table())
        }
        Command::Bench(BenchCommand::Graphql(args)) => {
            let report = bench::run_graphql(&bench::GraphqlBench {
                url: args.url.clone(),
                connections: args.connections,
                limit: (&args).into(),
                mix: args.mix,
                api_key: args.api_key.clone(),
                data_dir: args.data_dir.clone(),
            })?;
            print_report(&report, args.json, || report.table())
        }
        Command::Export(args) => {
            audit::exit_on_error(audit::run_export(args));
            Ok(())
        }
        Command::Verify(args) => {
            audit::exit_on_error(audit::run_verify(args));
            Ok(())
        }
        Command::Projections(args) => admin(&args.server, &args.action),
        Command::Processes(args) => admin(&args.server, &args.action),
        Command::Forget(args) => ops::forget(args),
        Command::Backup(args) => ops::backup(args),
        Command::Restore(args) => ops::restore(args),
        Command::Import(args) => ops::import(args),
        Command::Keys(KeysCommand::NewSigning(args)) => {
            audit::exit_on_error(audit::run_new_signing(args));
            Ok(())
        }
    }
}

/// Runs an admin subcommand against a server and prints its answer.
fn admin(server: &AdminServerArgs, request: &impl AdminCall) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let data = runtime
        .block_on(annals::admin::send(
            &server.url,
            server.api_key.as_deref(),
            request,
        ))
        .map_err(anyhow::Error::from)?;
    if server.json {
        println!("{data}");
    } else {
        print!("{}", request.render(&data));
    }
    Ok(())
}

fn print_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", table());
    }
    Ok(())
}

fn schema(args: &SchemaArgs) -> anyhow::Result<()> {
    if args.check {
        let problems = annals::contracts::check(&args.out).map_err(anyhow::Error::msg)?;
        if !problems.is_empty() {
            bail!(
                "contracts are stale (run `annals schema`):\n{}",
                problems.join("\n")
            );
        }
        println!("contracts in {} are current", args.out.display());
        return Ok(());
    }
    for path in annals::contracts::write(&args.out).map_err(anyhow::Error::msg)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let addr: SocketAddr = args
        .listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {}: not an address", args.listen))?
        .next()
        .with_context(|| format!("--listen {}: resolves to no address", args.listen))?;
    let keys = args.load_keys().map_err(anyhow::Error::msg)?;
    check_exposure(&addr, &keys).map_err(anyhow::Error::msg)?;
    if keys.is_empty() {
        tracing::warn!(
            %addr,
            "no API keys configured: every request is allowed (admin); loopback only"
        );
    } else {
        tracing::info!(keys = keys.len(), "API keys loaded");
    }
    let rate_limit = RateLimit {
        per_second: args
            .rate_limit
            .try_into()
            .context("--rate-limit must be positive")?,
        burst: args
            .rate_burst
            .try_into()
            .context("--rate-burst must be positive")?,
    };
    let mut config = args.node_config();
    config.server.api_keys = keys;
    config.server.rate_limit = rate_limit;
    config.server.export_signing_key =
        args.load_export_signing_key().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    if let Some(mut cluster) = args.cluster_options() {
        cluster.store = config.store.clone();
        let dir = DataDir::new(&args.data_dir);
        let store = ClusterEventStore::start(dir.log(), cluster)
            .await
            .context("joining the cluster")?;
        store
            .share_keys(dir.keys())
            .await
            .context("opening the key store with the cluster's keys")?;
        config.storage = Storage::Cluster(dir, store);
    }
    let node = Node::start(config).map_err(|e| coded(&e))?;
    let data_dir = DataDir::new(&args.data_dir);
    if let Err(error) = data_dir.announce(listener.local_addr()?) {
        tracing::warn!(%error, "cannot write serve.json: `annals backup` and `annals forget` need --url");
    }
    tracing::info!(
        addr = %listener.local_addr()?,
        head = node.store().head().get(),
        "annals serving GraphQL on /graphql"
    );
    #[cfg(unix)]
    let reloader = tokio::spawn(reload_keys_on_hangup(args, node.state().clone()));
    // Serving ends on SIGINT/SIGTERM; the node then stops its workers at a checkpoint and
    // closes the log, even when serving failed.
    let served = node.serve(listener, shutdown_signal()).await;
    data_dir.withdraw();
    #[cfg(unix)]
    reloader.abort();
    tracing::info!("event store closed");
    served.context("serving HTTP")
}

/// Logs to stderr in the chosen format, filtered by `RUST_LOG` (default `info`). JSON
/// lines carry the fields of their spans, so every line of a request has its request id
/// and principal.
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// An error for the command line: its message with its code from the one table.
pub(crate) fn coded<E: annals::error::HasCode + std::fmt::Display>(error: &E) -> anyhow::Error {
    anyhow::anyhow!("{error} [{}]", error.code())
}

/// Re-reads the API keys (file and inline) on every SIGHUP and puts them in force: how a
/// key is revoked without a restart. A file that does not parse, or that would leave the
/// server without keys, is refused and the keys in force stay.
#[cfg(unix)]
async fn reload_keys_on_hangup(args: ServeArgs, state: AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP: API keys will not be reloaded");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let reloaded = args.load_keys().and_then(|keys| {
            let counts = (keys.len(), keys.revoked());
            state.replace_api_keys(keys).map(|()| counts)
        });
        match reloaded {
            Ok((keys, revoked)) => tracing::info!(keys, revoked, "SIGHUP: API keys reloaded"),
            Err(error) => tracing::error!(
                %error,
                "SIGHUP: API keys not reloaded; the keys in force stay"
            ),
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
