//! The `annals` binary: parses the command line and hands over to the library.

use anyhow::Context;
use clap::Parser;

use annals::audit::cli as audit;
use annals::cli::{Cli, Command, KeysCommand};
use annals_store::{EventStore, RocksEventStore, StoreOptions};

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
        Command::Export(args) => audit::exit_on_error(audit::run_export(args)),
        Command::Verify(args) => audit::exit_on_error(audit::run_verify(args)),
        Command::Keys(KeysCommand::NewSigning(args)) => {
            audit::exit_on_error(audit::run_new_signing(args))
        }
    }
    Ok(())
}
