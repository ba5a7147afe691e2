//! The `sdgraph` command: parses arguments and hands off to the engine.
//! Exit codes: 0 success, 1 failure while running, 2 invalid graph or usage.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
