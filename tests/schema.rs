//! The editor schema: `fieldgate schema` is what `docs/schemas/mapping.schema.json` holds, every
//! shipped mapping carries the modeline and validates against it, and a broken file does not.

mod common;

use std::process::Command;

use common::*;

const MODELINE: &str = "# yaml-language-server: $schema=../docs/schemas/mapping.schema.json\n";

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo("docs/schemas/mapping.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn shipped() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for dir in ["mappings", "examples"] {
        for e in std::fs::read_dir(repo(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    assert!(out.len() >= 4, "{out:?}");
    out
}

#[test]
fn the_shipped_schema_is_what_the_binary_generates() {
    let out = Command::new(bin()).arg("schema").output().unwrap();
    assert!(out.status.success());
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("docs/schemas/mapping.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        generated, shipped,
        "regenerate with: fieldgate schema > docs/schemas/mapping.schema.json"
    );
    // The field docs are the descriptions.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Zero-based protocol address"),
        "field docs missing from the schema"
    );
}

#[test]
fn every_shipped_mapping_has_the_modeline_and_validates() {
    let v = validator();
    for path in shipped() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(MODELINE),
            "{} lacks the modeline",
            path.display()
        );
        // As an editor sees it: YAML, variables not yet replaced.
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn a_broken_mapping_is_rejected() {
    let v = validator();
    let text = std::fs::read_to_string(repo("mappings/water-tower.yaml")).unwrap();
    for (from, to) in [
        ("    address: 0\n", "    adress: 0\n"),
        ("    unit: 1\n", "    unit: one\n"),
        ("kind: input_register", "kind: input_registers"),
        ("order: CDAB", "order: CBAD"),
        ("poll_interval: 500ms", "poll_interval: 500"),
    ] {
        assert!(text.contains(from), "{from}");
        let broken = text.replacen(from, to, 1);
        let doc: serde_json::Value = serde_saphyr::from_str(&broken).unwrap();
        assert!(!v.is_valid(&doc), "accepted a mapping with `{}`", to.trim());
    }
}

// --- device libraries (issue 18) ---

#[test]
fn the_device_library_schema_is_shipped_and_every_library_file_validates() {
    let out = Command::new(bin())
        .args(["schema", "--library"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("docs/schemas/device-library.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        generated, shipped,
        "regenerate with: fieldgate schema --library > docs/schemas/device-library.schema.json"
    );
    let v = jsonschema::validator_for(&shipped).unwrap();
    let mut files = 0;
    for e in std::fs::read_dir(repo("mappings/devices")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(
                "# yaml-language-server: $schema=../../docs/schemas/device-library.schema.json\n"
            ),
            "{} lacks the modeline",
            path.display()
        );
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        // A misspelt key is caught.
        let broken = text.replacen("    points:", "    pionts:", 1);
        let doc: serde_json::Value = serde_saphyr::from_str(&broken).unwrap();
        assert!(
            !v.is_valid(&doc),
            "{}: a misspelt key passes",
            path.display()
        );
        files += 1;
    }
    assert!(files >= 5, "{files} library files");
}
