//! The `rusd` binary: etcd's command line in, one member (or a subcommand) out. Everything
//! else lives in the library (src/lib.rs).

use std::ffi::OsString;

use rusd::config::{self, Command};
use rusd::log_error;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let env: Vec<(String, String)> = std::env::vars().collect();
    match config::parse_command(&args, &env) {
        Ok(Command::Version) => {
            print!("{}", config::version_text());
        }
        Ok(Command::Help(text)) => {
            print!("{text}");
        }
        Ok(Command::Unsupported(what)) => {
            eprintln!("rusd: {what} is not supported");
            std::process::exit(2);
        }
        Ok(Command::Serve(cfg)) => {
            if let Err(e) = rusd::server::serve(*cfg) {
                // Logging may not be up yet; stderr always is.
                log_error!("rusd stopped", "error" => format!("{e:#}"));
                eprintln!("rusd: {e:#}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            e.report();
            std::process::exit(e.exit_code());
        }
    }
}
