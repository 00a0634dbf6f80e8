//! `fieldgate check` and `fieldgate schema`: validate a mapping file and print what it will do,
//! or print the schema of mapping files. Neither touches the network.

use std::path::Path;
use std::process::ExitCode;

use fieldgate::config::{self, ConfigError};

pub(crate) fn check(path: &Path, sample: bool, expand: bool) -> ExitCode {
    match config::load(path) {
        Ok(model) => {
            let mut text = format!("{}: ok\n", path.display());
            text.push_str(&fieldgate::check::summary(&model));
            if sample {
                text.push_str("sample messages:\n");
                text.push_str(&fieldgate::check::samples(&model));
            }
            if expand {
                text.push_str(&fieldgate::check::expanded(&model));
            }
            out(&text);
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

/// Write `text` to standard output. A reader that went away (`check … | head`) ends the
/// output quietly, as with other command-line tools, instead of a panic.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Print the JSON Schema of mapping files, or of device libraries.
pub(crate) fn schema(library: bool) -> ExitCode {
    let schema = if library {
        config::library_schema()
    } else {
        config::schema()
    };
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(&schema).unwrap_or_default()
    ));
    ExitCode::SUCCESS
}
