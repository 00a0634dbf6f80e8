//! The one place that calls the YAML crate (serde-saphyr).
//!
//! Swapping the YAML library means changing this file only: [`parse`] and [`Located`].
//! `${VAR}` / `${VAR:-default}` interpolation is done by the parser itself, on scalars only,
//! so a variable's value can never change the document's structure.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Deserializer};

use super::Issue;

/// A value with the line and column (1-based) where it stands in the file.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub line: u32,
    pub col: u32,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Located {
            line: s.referenced.line() as u32,
            col: s.referenced.column() as u32,
            value: s.value,
        })
    }
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Parse `text` into `T`, interpolating `${VAR}` from `vars`. On failure, one issue with its
/// location and the path of the key (`devices[0].points[2].address`).
pub fn parse<T: for<'de> Deserialize<'de>>(
    text: &str,
    vars: HashMap<String, String>,
) -> Result<T, Issue> {
    let mut opts = serde_saphyr::options! { with_snippet: false };
    opts.property_map = Some(Rc::new(vars));
    opts.property_syntax = serde_saphyr::PropertySyntax::DockerCompose;
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, opts, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let (line, col) = e
            .location()
            .map(|l| (l.line() as u32, l.column() as u32))
            .unwrap_or((0, 0));
        // The crate prefixes "error: line L column C: " (or suffixes "at line L, column C");
        // we print the location ourselves, once.
        let mut message = e.to_string();
        if let Some(rest) = message.strip_prefix("error: ") {
            message = rest.to_owned();
        }
        let prefix = format!("line {line} column {col}: ");
        if let Some(rest) = message.strip_prefix(&prefix) {
            message = rest.to_owned();
        }
        let suffix = format!(" at line {line}, column {col}");
        if let Some(rest) = message.strip_suffix(&suffix) {
            message = rest.to_owned();
        }
        let path = match path.as_str() {
            "." | "" => String::new(),
            p => p.trim_end_matches(".?").to_owned(),
        };
        Issue {
            line,
            col,
            path,
            message,
        }
    })
}
