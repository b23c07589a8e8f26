//! The `caretaker` command line; all work happens in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    caretaker::cli::main(caretaker::cli::Cli::parse())
}
