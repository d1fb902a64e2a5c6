//! The `micro` binary: `micro server` runs a node; every other subcommand is a client.

/// mimalloc instead of glibc malloc: under write load a node spent ~12 % of its CPU in glibc's
/// malloc and free (docs/benchmarks.md, "Fifth").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    micro_services::cli::main()
}
