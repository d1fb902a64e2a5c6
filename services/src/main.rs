//! The `micro` binary: `micro server` runs a node; every other subcommand is a client.

fn main() -> std::process::ExitCode {
    micro_services::cli::main()
}
