//! `annals export`, `annals verify` and `annals keys new-signing`: argument parsing and the
//! thin glue between the command line and the library.
//!
//! Exit codes: 0 success; 1 verification found a fault; 2 bad input (arguments, keys, a
//! file that is not an export); 3 I/O or store failure.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use annals_store::RocksEventStore;
use uuid::Uuid;

use super::AuditError;
use super::export::{ExportFilters, ExportOptions, Format, export_blocking};
use super::manifest::{generate_signing_key, parse_public_key, parse_signing_key};
use super::verify::{VerifyOptions, sidecar_path, verify};

/// Options of `annals export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The data directory (the event log is in DIR/log). Opened read-only: works while a server
    /// has it open.
    #[arg(long, env = "ANNALS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The output layout.
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub format: Format,
    /// Where to write, `-` for standard output. CSV and CloudEvents get their manifest
    /// in `FILE.manifest.json` (on standard error when writing to standard output).
    #[arg(long, short, default_value = "-")]
    pub output: String,
    /// Only this stream (repeatable).
    #[arg(long = "stream", value_name = "STREAM_ID")]
    pub streams: Vec<String>,
    /// Only streams of this category (repeatable).
    #[arg(long = "category")]
    pub categories: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    pub event_types: Vec<String>,
    /// First position to export (inclusive).
    #[arg(long)]
    pub from_position: Option<u64>,
    /// Last position to export (inclusive).
    #[arg(long)]
    pub to_position: Option<u64>,
    /// Only events recorded at or after this RFC 3339 time.
    #[arg(long, value_parser = rfc3339)]
    pub since: Option<String>,
    /// Only events recorded before this RFC 3339 time.
    #[arg(long, value_parser = rfc3339)]
    pub until: Option<String>,
    /// Only events whose metadata names this actor (repeatable).
    #[arg(long = "actor")]
    pub actors: Vec<String>,
    /// Only events with this correlation id (repeatable).
    #[arg(long = "correlation-id")]
    pub correlation_ids: Vec<Uuid>,
    /// Sign the manifest with this ed25519 private key: 64 hex digits or a file holding
    /// them (see `annals keys new-signing`).
    #[arg(long, env = "ANNALS_SIGN_KEY", hide_env_values = true)]
    pub sign_key: Option<String>,
    /// Events per page read from the store.
    #[arg(long, default_value_t = 2048, hide = true)]
    pub page_size: usize,
}

/// Options of `annals verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The export file (NDJSON, CSV or CloudEvents; the format is detected).
    pub file: PathBuf,
    /// Also check every event against the event log in this data directory (opened
    /// read-only).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Require the manifest to be signed with this ed25519 public key: 64 hex digits or
    /// a file holding them.
    #[arg(long)]
    pub public_key: Option<String>,
}

/// Options of `annals keys new-signing`.
#[derive(Debug, clap::Args)]
pub struct NewSigningArgs {
    /// Write the private key to this new file (mode 0600) instead of printing it.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

fn rfc3339(text: &str) -> Result<String, String> {
    match crate::time::parse(text) {
        Some(_) => Ok(text.to_string()),
        None => Err("not an RFC 3339 time (like 2026-11-23T12:00:00Z)".into()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, AuditError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| AuditError::io("starting the runtime", e))
}

/// Prints an error with its code and exits with its exit code; returns on success.
pub fn exit_on_error(result: Result<(), AuditError>) {
    if let Err(e) = result {
        eprintln!("annals: {e} [{}]", crate::error::HasCode::code(&e));
        std::process::exit(e.exit_code());
    }
}

/// Runs `annals export`.
pub fn run_export(args: ExportArgs) -> Result<(), AuditError> {
    let filters = ExportFilters {
        streams: args.streams,
        categories: args.categories,
        event_types: args.event_types,
        from_position: args.from_position,
        to_position: args.to_position,
        since: args.since,
        until: args.until,
        actors: args.actors,
        correlation_ids: args.correlation_ids,
    };
    let options = ExportOptions {
        format: args.format,
        filters,
        signing_key: args
            .sign_key
            .as_deref()
            .map(parse_signing_key)
            .transpose()?,
        page_size: args.page_size,
    };
    // Check the options before opening anything, so a bad range is reported as such.
    options.filters.compile()?;
    let store = RocksEventStore::open_read_only(crate::node::DataDir::new(&args.data_dir).log())?;
    let to_stdout = args.output == "-";
    let out: Box<dyn Write + Send> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::File::create(&args.output)
                .map_err(|e| AuditError::io(format!("creating {}", args.output), e))?,
        )
    };
    let out = BufWriter::with_capacity(1024 * 1024, out);
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} exporting [{bar:40}] {pos}/{len} positions ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let manifest = export_blocking(&store, options, out, |done, total| {
        if let Some(bar) = &progress {
            bar.set_length(total);
            bar.set_position(done);
        }
    })
    .map_err(|e| match e {
        AuditError::Io { source, .. } => AuditError::io(format!("writing {}", args.output), source),
        e => e,
    })?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if args.format.has_sidecar_manifest() {
        let line = manifest.to_line();
        if to_stdout {
            eprintln!("{line}");
        } else {
            let path = sidecar_path(std::path::Path::new(&args.output));
            std::fs::write(&path, format!("{line}\n"))
                .map_err(|e| AuditError::io(format!("writing {}", path.display()), e))?;
        }
    }
    let range = match (manifest.first_position, manifest.last_position) {
        (Some(a), Some(b)) => format!(" (positions {a}..={b})"),
        _ => String::new(),
    };
    eprintln!(
        "annals: exported {} events{range} as {}, log head {}{}",
        manifest.count,
        manifest.format.as_str(),
        manifest.head_at_start,
        if manifest.signature.is_some() {
            ", manifest signed"
        } else {
            ""
        }
    );
    Ok(())
}

/// Runs `annals verify`: prints the `OK` report on standard output, or returns the first
/// fault.
pub fn run_verify(args: VerifyArgs) -> Result<(), AuditError> {
    let options = VerifyOptions {
        public_key: args
            .public_key
            .as_deref()
            .map(parse_public_key)
            .transpose()?,
    };
    let store = args
        .data_dir
        .as_ref()
        .map(|dir| RocksEventStore::open_read_only(crate::node::DataDir::new(dir).log()))
        .transpose()?;
    let report = runtime()?.block_on(verify(&args.file, store.as_ref(), &options))?;
    println!("{report}");
    Ok(())
}

/// Runs `annals keys new-signing`.
pub fn run_new_signing(args: NewSigningArgs) -> Result<(), AuditError> {
    let key = generate_signing_key()?;
    let secret = hex::encode(key.to_bytes());
    let public = hex::encode(key.verifying_key().as_bytes());
    match args.secret_file {
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&path)
                .map_err(|e| AuditError::io(format!("creating {}", path.display()), e))?;
            writeln!(file, "{secret}")
                .map_err(|e| AuditError::io(format!("writing {}", path.display()), e))?;
            println!("private-key-file: {}", path.display());
        }
        None => println!("private-key: {secret}"),
    }
    println!("public-key: {public}");
    Ok(())
}
