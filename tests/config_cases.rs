//! Golden config cases: each folder under `tests/config_cases/` holds a `mapping.yaml` and the
//! exact `expected.txt` that `fieldgate check` prints for it (stderr and stdout, merged).
//!
//! To add a case: create the folder and the mapping, write the expected output by hand, and
//! check it against `fieldgate check -c mapping.yaml` run from inside the folder. A case whose
//! expected output ends in `N problem(s) found` must fail `check`; any other (a valid mapping
//! with warnings) must pass it.

use std::path::Path;
use std::process::Command;

#[test]
fn every_case_prints_exactly_its_expected_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config_cases");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the golden cases in {}",
        root.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let expected = std::fs::read_to_string(case.join("expected.txt")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
            .args(["check", "-c", "mapping.yaml"])
            .current_dir(case)
            // The host name is in `check`'s output (the identity line).
            .env("HOSTNAME", "cabinet-1")
            .env_remove("PLC_HOST")
            .env_remove("SITE")
            .output()
            .unwrap();
        let mut got = String::from_utf8_lossy(&out.stdout).into_owned();
        got.push_str(&String::from_utf8_lossy(&out.stderr));
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                case.display()
            ));
        }
        let invalid = expected.trim_end().ends_with("problem(s) found");
        assert_eq!(
            out.status.code(),
            Some(if invalid { 1 } else { 0 }),
            "{}",
            case.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_shipped_mapping_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The secure mappings read certificates, a password and a key: make them.
    let etc = tempfile::tempdir().unwrap();
    let made = Command::new("bash")
        .arg(root.join("certs/gen.sh"))
        .arg(etc.path().join("certs"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::write(etc.path().join("mqtt-password"), "not-a-real-password\n").unwrap();
    std::fs::write(etc.path().join("payload.key"), [7u8; 32]).unwrap();
    // The web console's users (examples/web-console.yaml): one bearer token's digest.
    std::fs::write(
        etc.path().join("web-users"),
        format!("token ci view sha256:{}\n", "0".repeat(64)),
    )
    .unwrap();
    let mut checked = 0;
    for dir in ["mappings", "examples"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
                    .arg("check")
                    .arg("-c")
                    .arg(&path)
                    .env("FIELDGATE_ETC", etc.path())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let summary = String::from_utf8_lossy(&out.stdout);
                assert!(summary.contains("read plan"), "{summary}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 1);
}

#[test]
fn water_tower_check_summary_names_the_spec_topics_and_read_plan() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["check", "-c"])
        .arg(root.join("mappings/water-tower.yaml"))
        .env_remove("TOPIC_PREFIX")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "ISBTest/pumpcontrol/waterlevel (qos 2, plain, every 500ms)",
        "ISBTest/pumpcontrol/pumpcode (qos 2",
        "ISBTest/pumpcontrol/pump (qos 2): startp1 => tower.p1_command=1; startp2 => tower.p2_command=1; stopp1 => tower.p1_command=0; stopp2 => tower.p2_command=0",
        "FC04 unit 1 start 0 count 9 (input_register)",
        "FC02 unit 1 start 0 count 2 (discrete_input)",
    ] {
        assert!(s.contains(needle), "missing `{needle}` in:\n{s}");
    }
}

#[test]
fn check_prints_bus_time_and_warns_when_a_bus_is_over_subscribed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.yaml");
    // 9600 8E1: 9 input registers cost 31 characters (35.5 ms) plus two 4.0 ms gaps = 43.5 ms,
    // more than the 40 ms poll interval.
    std::fs::write(
        &path,
        r#"
mqtt: { host: 127.0.0.1, status_topic: s }
buses:
  - { name: slow, serial: { device: /dev/ttyS9, baud: 9600 } }
devices:
  - name: tower
    bus: slow
    poll_interval: 40ms
    points:
      - { name: all, kind: input_register, address: 0, type: string, length: 9 }
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("slow: rtu:///dev/ttyS9 9600 8E1"), "{s}");
    assert!(
        s.contains("timing: character 1.146 ms, frame gap 4.010 ms"),
        "{s}"
    );
    assert!(
        s.contains("tower (unit 1) 1 requests, 8 B out, 23 B in, 43.5 ms every 40ms"),
        "{s}"
    );
    assert!(
        s.contains(
            "warning: tower's poll cycle needs 43.5 ms of bus time but its poll_interval is 40ms"
        ),
        "{s}"
    );
    assert!(s.contains("warning: the bus is over-subscribed"), "{s}");
}

/// `check --expand | head`: the reader closes the pipe early; `check` stops writing and exits
/// 0, without a panic. The twenty meters' output (about 200 KB) is more than a pipe holds, so
/// the write meets the closed pipe.
#[test]
fn check_stops_quietly_when_its_reader_goes_away() {
    use std::io::Read;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["check", "--expand", "-c"])
        .arg(root.join("examples/twenty-meters.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
    assert!(String::from_utf8_lossy(&first).contains("twenty-meters.yaml: ok"));
}
