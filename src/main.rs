//! The `annals` binary: parses the command line and hands over to the library.

use anyhow::Context;
use clap::Parser;

use annals::audit::cli as audit;
use annals::bench;
use annals::cli::{BenchCommand, Cli, Command, KeysCommand};
use annals_store::{EventStore, RocksEventStore, StoreOptions};

/// mimalloc: the many small allocations of record decoding and read-model batches are
/// markedly cheaper than with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let store = RocksEventStore::open(&args.data_dir, StoreOptions::default())
                .with_context(|| format!("opening the event log in {}", args.data_dir.display()))?;
            println!(
                "annals: event log open in {} at position {}; the HTTP server arrives with the GraphQL issue (would listen on {})",
                args.data_dir.display(),
                store.head(),
                args.listen
            );
            store.close();
        }
        Command::Replay(args) => {
            let names: Vec<String> = args.projection.into_iter().collect();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let report = runtime.block_on(annals::replay::replay(&args.data_dir, &names))?;
            for (name, checkpoint) in report.rebuilt {
                println!("{name}: rebuilt at position {checkpoint}");
            }
        }
        Command::Bench(BenchCommand::Append(args)) => {
            let report = bench::run_append(&bench::AppendBench {
                writers: args.writers,
                events_per_append: args.events_per_append,
                payload_bytes: args.payload_bytes,
                streams: args.streams,
                durability: args.durability.into(),
                limit: args.limit.limit(),
                data_dir: args.data_dir,
                baseline: args.baseline,
            })?;
            print_report(&report, args.json, || report.table())?;
        }
        Command::Bench(BenchCommand::Command(args)) => {
            let report = bench::run_command(&bench::CommandBench {
                writers: args.writers,
                durability: args.durability.into(),
                limit: args.limit.limit(),
                data_dir: args.data_dir,
            })?;
            print_report(&report, args.json, || report.table())?;
        }
        Command::Bench(BenchCommand::Catchup(args)) => {
            let report = bench::run_catchup(&bench::CatchupBench {
                events: args.events,
                data_dir: args.data_dir,
                batch_size: args.batch_size,
            })?;
            print_report(&report, args.json, || report.table())?;
        }
        Command::Export(args) => audit::exit_on_error(audit::run_export(args)),
        Command::Verify(args) => audit::exit_on_error(audit::run_verify(args)),
        Command::Keys(KeysCommand::NewSigning(args)) => {
            audit::exit_on_error(audit::run_new_signing(args))
        }
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
