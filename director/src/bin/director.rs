//! `director`: the operator's command line. Everything lives in `director::cli`.

use clap::Parser;

fn main() {
    let cli = director::cli::Cli::parse();
    let code = match director::cli::run(&cli, &mut std::io::stdout(), &mut std::io::stderr()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("director: cannot write output: {e}");
            1
        }
    };
    std::process::exit(code);
}
