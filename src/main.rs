//! `tflock`: the command-line entry point. Everything lives in `tflock-cli`; this
//! binary only calls it.

fn main() -> std::process::ExitCode {
    tflock_cli::main()
}
