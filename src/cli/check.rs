//! `fieldgate check` and `fieldgate schema`: validate a mapping file and print what it will do,
//! or print the schema of mapping files. Neither touches the network.

use std::path::Path;
use std::process::ExitCode;

use fieldgate::config::{self, ConfigError};

pub(crate) fn check(path: &Path, sample: bool, expand: bool) -> ExitCode {
    match config::load(path) {
        Ok(model) => {
            println!("{}: ok", path.display());
            print!("{}", fieldgate::check::summary(&model));
            if sample {
                println!("sample messages:");
                print!("{}", fieldgate::check::samples(&model));
            }
            if expand {
                print!("{}", fieldgate::check::expanded(&model));
            }
            eprint!("{}", fieldgate::check::warnings(path, &model));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            if let ConfigError::Invalid { issues, .. } = &e {
                eprintln!("{} problem(s) found", issues.len());
            }
            ExitCode::FAILURE
        }
    }
}

/// Print the JSON Schema of mapping files, or of device libraries.
pub(crate) fn schema(library: bool) -> ExitCode {
    let schema = if library {
        config::library_schema()
    } else {
        config::schema()
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&schema).unwrap_or_default()
    );
    ExitCode::SUCCESS
}
