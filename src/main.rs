//! `layerstore`: the reference registry server and maintenance CLI.
//!
//! Everything here uses only the library's public API.

mod cli_gc;
mod cli_scrub;
mod config;
mod server;

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "layerstore",
    version,
    about = "A container registry on the layerstore engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OCI Distribution API (default: 127.0.0.1:5000, filesystem in ./layerstore-data).
    Serve {
        /// Address to listen on, HOST:PORT (overrides the configuration).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Filesystem storage in this directory (overrides the configuration's storage).
        #[arg(long)]
        root: Option<PathBuf>,
        /// A YAML configuration in the CNCF Distribution `config.yml` layout.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Purge upload sessions inactive for longer than DURATION, once, and print the report.
    PurgeUploads {
        /// Inactivity after which a session is purged, such as `168h` or `30m`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "168h")]
        older_than: Duration,
        /// Only report what would be purged.
        #[arg(long)]
        dry_run: bool,
        /// Filesystem storage in this directory.
        #[arg(long)]
        root: Option<PathBuf>,
        /// A YAML configuration (its storage section is used).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check every blob, link, tag and manifest of the storage, print the problems found, and
    /// exit non-zero if any remains.
    Scrub {
        /// Remove links and tags that point at nothing, and move corrupt blobs to quarantine/.
        #[arg(long)]
        repair: bool,
        /// Hash at most this many megabytes (10^6 bytes) per second, such as `50` or `0.5`.
        #[arg(long, value_name = "MB/s", value_parser = cli_scrub::parse_rate)]
        rate: Option<NonZeroU64>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Filesystem storage in this directory.
        #[arg(long)]
        root: Option<PathBuf>,
        /// A YAML configuration (its storage section is used).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Delete what no repository reaches any more (online: servers keep serving), and print
    /// what was found and removed.
    Gc {
        /// Only report what would be removed; delete nothing, take no lock, do not wait.
        #[arg(long)]
        dry_run: bool,
        /// Also remove manifests no tag reaches (index children and referrers of a kept
        /// manifest stay).
        #[arg(long)]
        delete_untagged: bool,
        /// Keep what a client was told exists or was stored within this long, such as `1h`,
        /// `30m` or `0s`; the run waits this long (plus 3 s) before it marks.
        #[arg(long, value_name = "DURATION", value_parser = cli_gc::parse_grace, default_value = "1h")]
        grace: Duration,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Filesystem storage in this directory.
        #[arg(long)]
        root: Option<PathBuf>,
        /// A YAML configuration (its storage section is used).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print what it resolves to.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("layerstore: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("layerstore: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { addr, root, config } => {
            let config = config::Config::resolve(config.as_deref(), addr, root)?;
            server::serve(config).await
        }
        Command::PurgeUploads {
            older_than,
            dry_run,
            root,
            config,
        } => {
            let config = config::Config::resolve(config.as_deref(), None, root)?;
            let store = config.open_store()?;
            let report = store
                .purge_uploads(layerstore::upload::PurgeOptions {
                    older_than,
                    dry_run,
                })
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "scanned {} sessions, purged {}{}, freed {} bytes, {} errors",
                report.scanned,
                report.purged,
                if dry_run {
                    " (dry run: nothing deleted)"
                } else {
                    ""
                },
                report.bytes_freed,
                report.errors.len()
            );
            for error in &report.errors {
                println!("error: {error}");
            }
            if report.errors.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} sessions could not be purged",
                    report.errors.len()
                ))
            }
        }
        Command::Scrub {
            repair,
            rate,
            json,
            root,
            config,
        } => {
            let config = config::Config::resolve(config.as_deref(), None, root)?;
            let store = config.open_store()?;
            let options = layerstore::ScrubOptions {
                repair,
                rate,
                ..layerstore::ScrubOptions::default()
            };
            cli_scrub::run(&store, options, json).await
        }
        Command::Gc {
            dry_run,
            delete_untagged,
            grace,
            json,
            root,
            config,
        } => {
            let config = config::Config::resolve(config.as_deref(), None, root)?;
            let store = config.open_store()?;
            let options = layerstore::gc::GcOptions {
                delete_untagged,
                grace,
                dry_run,
                ..layerstore::gc::GcOptions::default()
            };
            cli_gc::run(&store, options, json).await
        }
        Command::CheckConfig { file } => {
            let config = config::Config::resolve(Some(&file), None, None)?;
            let loaded = server::check_auth(&config)?;
            print!("{}", config.describe());
            if let Some(loaded) = loaded {
                println!("{loaded}");
            }
            Ok(())
        }
    }
}
