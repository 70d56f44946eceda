//! `tflock locks export` / `import`: a lossless, idempotent round trip; tokens never
//! go back; a large import goes through a server in chunks; bad files are named.

use serde_json::{Value, json};

use crate::common::Env;

fn sorted(snapshot: &Value) -> Vec<Value> {
    let mut v = snapshot["resources"].as_array().unwrap().clone();
    v.sort_by_key(|r| r["resource"].to_string());
    v
}

fn populate(env: &Env) {
    for args in [
        vec![
            "--project=myorg/myrepo",
            "--workspace=default",
            "--owner=myorg/myrepo#42",
            "--pull=42",
            "--user=alice",
            "--priority=high",
        ],
        vec![
            "--project=group/sub/repo",
            "--path=infra/net",
            "--workspace=prod",
            "--project-name=net",
            "--owner=group/sub/repo#9",
        ],
    ] {
        let (code, _, err) =
            env.run(&[&["--backend=embedded", "locks", "acquire"], &args[..]].concat());
        assert_eq!(code, 0, "{err}");
    }
    for owner in ["myorg/myrepo#43", "myorg/myrepo#44"] {
        let (code, _, err) = env.run(&[
            "--backend=embedded",
            "locks",
            "acquire",
            "--project=myorg/myrepo",
            "--workspace=default",
            &format!("--owner={owner}"),
            "--reserve",
            "--priority=low",
        ]);
        assert_eq!(code, 3, "{err}");
    }
}

#[test]
fn export_then_import_is_lossless_and_idempotent() {
    let a = Env::embedded();
    populate(&a);
    let (code, out, err) = a.run(&["--backend=embedded", "locks", "export", "--format=json"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(a.path("backup.json"), &out).unwrap();
    let backup: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(backup["resources"].as_array().unwrap().len(), 2);

    let b = Env::embedded();
    let file = a.path("backup.json");
    let file = file.to_str().unwrap();
    // Dry run: says what would change, changes nothing.
    let dry = b.json(&[
        "--backend=embedded",
        "locks",
        "import",
        "--format=json",
        file,
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["imported"], 2, "{dry}");
    assert_eq!(
        b.json(&["--backend=embedded", "locks", "list", "--json"])["locks"],
        json!([])
    );

    let first = b.json(&[
        "--backend=embedded",
        "locks",
        "import",
        "--format=json",
        file,
        "--json",
    ]);
    assert_eq!(
        (first["imported"].as_u64(), first["queued"].as_u64()),
        (Some(2), Some(2)),
        "{first}"
    );
    let (code, out, _) = b.run(&["--backend=embedded", "locks", "export"]);
    assert_eq!(code, 0);
    assert_eq!(
        sorted(&serde_json::from_str(&out).unwrap()),
        sorted(&backup)
    );

    // Again: nothing changes.
    let second = b.json(&[
        "--backend=embedded",
        "locks",
        "import",
        "--format=json",
        file,
        "--json",
    ]);
    assert_eq!(
        (
            second["imported"].as_u64(),
            second["unchanged"].as_u64(),
            second["queued"].as_u64()
        ),
        (Some(0), Some(2), Some(0)),
        "{second}"
    );
    let (_, out, _) = b.run(&["--backend=embedded", "locks", "export"]);
    assert_eq!(
        sorted(&serde_json::from_str(&out).unwrap()),
        sorted(&backup)
    );

    // The imported lease still works: the holder can unlock with its own lease id.
    let lease = backup["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"]["repo"] == "myorg/myrepo")
        .unwrap()["lock"]["lease_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out, err) = b.run(&[
        "--backend=embedded",
        "locks",
        "unlock",
        "--project=myorg/myrepo",
        "--workspace=default",
        "--lease-id",
        &lease,
    ]);
    assert_eq!(code, 0, "{err}");
    // The queue came along: the high... first reservation in line gets it.
    assert!(out.contains("handed to myorg/myrepo#43"), "{out}");
}

#[test]
fn importing_into_a_store_with_higher_tokens_keeps_tokens_monotonic() {
    let a = Env::embedded();
    let (code, _, err) = a.run(&[
        "--backend=embedded",
        "locks",
        "acquire",
        "--project=o/r",
        "--owner=old",
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, backup, _) = a.run(&["--backend=embedded", "locks", "export"]);
    std::fs::write(a.path("backup.json"), &backup).unwrap();

    // The target store has already granted tokens 1..=5 for the same resource.
    let b = Env::embedded();
    for _ in 0..5 {
        let (code, out, err) = b.run(&[
            "--backend=embedded",
            "locks",
            "acquire",
            "--project=o/r",
            "--owner=new",
        ]);
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = b.run(&[
            "--backend=embedded",
            "locks",
            "unlock",
            "--project=o/r",
            "--lease-id",
            out.trim(),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let report = b.json(&[
        "--backend=embedded",
        "locks",
        "import",
        a.path("backup.json").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        (report["imported"].as_u64(), report["retokened"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let got = b.json(&[
        "--backend=embedded",
        "locks",
        "get",
        "--project=o/r",
        "--json",
    ]);
    assert_eq!(got["lock"]["owner"], "old");
    assert!(got["lock"]["fencing_token"].as_u64().unwrap() > 5, "{got}");
    // And the next grant is higher still.
    let (code, _, _) = b.run(&[
        "--backend=embedded",
        "locks",
        "unlock",
        "--project=o/r",
        "--force",
    ]);
    assert_eq!(code, 0);
    let next = b.json(&[
        "--backend=embedded",
        "locks",
        "acquire",
        "--project=o/r",
        "--json",
    ]);
    assert!(
        next["lock"]["fencing_token"].as_u64().unwrap()
            > got["lock"]["fencing_token"].as_u64().unwrap()
    );
}

#[test]
fn a_large_import_goes_through_the_server_in_chunks() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let (code, _, err) = crate::common::output(env.client().args([
        "locks",
        "acquire",
        "--project=seed/repo",
        "--owner=seed",
    ]));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = crate::common::output(env.client().args(["locks", "export"]));
    let mut snapshot: Value = serde_json::from_str(&out).unwrap();
    let template = snapshot["resources"][0].clone();
    let n = 600;
    let resources: Vec<Value> = (0..n)
        .map(|i| {
            let mut r = template.clone();
            let ws = format!("ws{i:04}");
            r["resource"]["workspace"] = json!(ws);
            r["lock"]["resource"]["workspace"] = json!(ws);
            r["lock"]["key"] = json!(format!("seed/repo/./{ws}/"));
            r["lock"]["lease_id"] = json!(format!("{i:032x}"));
            r["lock"]["owner"] = json!(format!("seed/repo#{i}"));
            r
        })
        .collect();
    snapshot["resources"] = json!(resources);
    std::fs::write(env.path("big.json"), snapshot.to_string()).unwrap();
    assert!(
        snapshot.to_string().len() > 200 * 1024,
        "the file must need several requests"
    );

    let (code, out, err) =
        crate::common::output(
            env.client()
                .args(["locks", "import", "--format=json", "big.json"]),
        );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("imported {n} lock(s)")), "{out}");
    let (_, out, _) =
        crate::common::output(
            env.client()
                .args(["locks", "list", "--repo=seed/repo", "--json"]),
        );
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["locks"].as_array().unwrap().len(), n + 1);
}

#[test]
fn a_file_that_is_not_an_export_is_named_with_its_line() {
    let env = Env::embedded();
    std::fs::write(
        env.path("bad.json"),
        "{\n  \"version\": 1,\n  \"resources\": 3\n}\n",
    )
    .unwrap();
    let (code, _, err) = env.run(&["--backend=embedded", "locks", "import", "bad.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.json:3:") && err.contains("not a tflock export"),
        "{err}"
    );
    std::fs::write(
        env.path("v9.json"),
        r#"{"version":9,"exported_at":"2026-01-01T00:00:00Z","backend":"x","resources":[]}"#,
    )
    .unwrap();
    let (code, _, err) = env.run(&["--backend=embedded", "locks", "import", "v9.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("version 9"), "{err}");
    let (code, _, err) = env.run(&["--backend=embedded", "locks", "import", "missing.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.json"), "{err}");
}
