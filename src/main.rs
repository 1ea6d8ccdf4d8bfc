//! The `rusd` binary: etcd's command line in, one member or one proxy (`gateway start`,
//! `grpc-proxy start`) out. Everything else lives in the library (src/lib.rs).

use std::ffi::OsString;

use rusd::config::{self, Command};
use rusd::log_error;

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let result = match config::parse_command(&args, &env) {
        Ok(Command::Version) => {
            print!("{}", config::version_text());
            Ok(())
        }
        Ok(Command::Help(text)) => {
            print!("{text}");
            Ok(())
        }
        Ok(Command::Gateway(cfg)) => rusd::proxy::tcp::run(cfg),
        Ok(Command::GrpcProxy(cfg)) => rusd::proxy::grpc::run(*cfg),
        Ok(Command::Serve(cfg)) => rusd::server::serve(*cfg),
        Err(e) => {
            e.report();
            std::process::exit(e.exit_code());
        }
    };
    if let Err(e) = result {
        // Logging may not be up yet; stderr always is.
        log_error!("rusd stopped", "error" => format!("{e:#}"));
        eprintln!("rusd: {e:#}");
        std::process::exit(1);
    }
}
