use std::process::ExitCode;

fn main() -> ExitCode {
    gantry::cli::main()
}
