//! CI's smoke run of the benchmark command: `tflock-bench --smoke` (every measure for
//! a fraction of a second, no Python peers) into a temporary report, which must have
//! every section, its plots and its raw results, and must keep the hand-written
//! blocks of the report it replaces. No timing is asserted: on a shared CI machine the
//! figures mean nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Headings every report has (`report.rs` writes them).
const SECTIONS: [&str; 13] = [
    "## The run",
    "## Verdicts",
    "## Ceilings",
    "## Uncontended acquire+release",
    "## Hand-off latency",
    "## Fairness",
    "## Anti-starvation",
    "## Scale",
    "## Recovery after a Redis fault",
    "## Peers",
    "## Where tflock falls short",
    "## Analysis",
    "## Skipped and errors",
];

/// Longest the smoke run may take before the test kills it.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn smoke_run_writes_every_section_and_keeps_hand_written_blocks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("docs").join("benchmarks.md");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(
        &out,
        "# old\n<!-- keep:intro -->\nA hand-written intro.\n<!-- /keep:intro -->\nold figures\n\
         <!-- keep:analysis -->\nA hand-written analysis.\n<!-- /keep:analysis -->\n",
    )
    .unwrap();

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tflock-bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(&out)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tflock-bench");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tflock-bench --smoke did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "tflock-bench --smoke failed: {status}\n{stderr}"
    );
    eprintln!("smoke run took {:?}", started.elapsed());

    let report = std::fs::read_to_string(&out).expect("the report");
    for s in SECTIONS {
        assert!(report.contains(s), "the report lacks {s:?}:\n{report}");
    }
    assert!(report.contains("Smoke run"), "a smoke report says so");
    assert!(
        !report.contains("old figures"),
        "generated text is replaced"
    );
    assert!(report.contains("<!-- keep:intro -->\nA hand-written intro.\n<!-- /keep:intro -->"));
    assert!(report.contains("A hand-written analysis."));
    // Every measure produced rows: both backends, both surfaces, the ceiling, rslock.
    for needle in [
        "| tflock embedded · library | 16 |",
        "| tflock redis · HTTP | 256 |",
        "| rslock (default retry) | 16 |",
        "| tflock redis · library |",
        "EVALSHA loop",
        "bytes per held lock",
        "| redis | 1000 |",
        "| embedded | 1000 |",
        "Skipped: Python peers",
    ] {
        assert!(
            report.contains(needle),
            "the report lacks {needle:?}:\n{report}"
        );
    }
    assert!(
        !report.contains("- Error:"),
        "a measure failed in the smoke run:\n{report}"
    );

    let plots = out.parent().unwrap().join("bench");
    for f in ["pairs.svg", "handoff.svg", "fairness.svg", "scale.svg"] {
        let svg = std::fs::read_to_string(plots.join(f)).unwrap_or_default();
        assert!(svg.contains("<svg"), "{f} is not an SVG");
        assert!(
            report.contains(&format!("(bench/{f})")),
            "the report links {f}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plots.join("results.json")).unwrap())
            .expect("results.json parses");
    assert_eq!(json["mode"], "smoke");
    assert!(json["pairs"].as_array().is_some_and(|a| !a.is_empty()));
}
