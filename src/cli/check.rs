//! `fieldgate check` and `fieldgate schema`: validate a mapping file and print what it will do,
//! or print the schema of mapping files. Neither touches the network.

use std::path::Path;
use std::process::ExitCode;

use fieldgate::config::{self, ConfigError};

pub(crate) fn check(path: &Path, sample: bool, expand: bool) -> ExitCode {
    match config::load(path) {
        Ok(model) => {
            let mut out = format!("{}: ok\n", path.display());
            out.push_str(&fieldgate::check::summary(&model));
            if sample {
                out.push_str("sample messages:\n");
                out.push_str(&fieldgate::check::samples(&model));
            }
            if expand {
                out.push_str(&fieldgate::check::expanded(&model));
            }
            // Not `print!`: a reader that stops early (`check --expand | head`) closes the pipe,
            // and that must end the output, not panic.
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
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
