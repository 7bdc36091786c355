//! Golden tests of the CLI's human renderers: every `cli_golden/VIEW.json` (or
//! `VIEW--VARIANT.json`) is a reply of the daemon to the request named VIEW; rendered by
//! `director::cli::render` it must give exactly `cli_golden/VIEW[--VARIANT].txt`. Run with
//! `BLESS=1` to rewrite the `.txt` files after a deliberate change, then review the diff.

use std::fs;
use std::path::PathBuf;

const DIR: &str = "tests/cli_golden";

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(DIR)
        .expect("tests/cli_golden exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    cases.sort();
    cases
}

fn view_of(case: &std::path::Path) -> String {
    let stem = case
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("UTF-8 file name");
    stem.split("--").next().unwrap_or(stem).to_string()
}

#[test]
fn every_reply_renders_as_its_golden_text() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let data: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&case).expect("read the fixture"))
                .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        // The fixture is an answer the daemon can give: it reads into its view and writes
        // back unchanged (a key the view lacks, or one it needs and does not find, fails).
        match director::api::round_trip(&view_of(&case), &data) {
            Ok(back) if back == data => {}
            Ok(back) => failures.push(format!(
                "{}: keys or values its view does not have:\n--- view\n{back:#}\n--- fixture\n{data:#}",
                case.display()
            )),
            Err(e) => failures.push(format!("{}: {e}", case.display())),
        }
        let mut out = Vec::new();
        if let Err(e) = director::cli::render(&view_of(&case), &data, &mut out) {
            failures.push(format!("{}: {e}", case.display()));
            continue;
        }
        let got = String::from_utf8(out).expect("UTF-8 rendering");
        let expected_path = case.with_extension("txt");
        if bless {
            fs::write(&expected_path, &got).expect("write .txt");
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| format!("<missing {}>\n", expected_path.display()));
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_view_has_a_golden_file_and_every_file_a_view() {
    let cases = cases();
    for view in director::cli::VIEWS {
        assert!(
            cases.iter().any(|c| view_of(c) == *view),
            "no golden reply for the view {view:?} in {DIR}"
        );
    }
    for c in &cases {
        assert!(
            director::cli::VIEWS.contains(&view_of(c).as_str()),
            "{} names no view",
            c.display()
        );
    }
    for entry in fs::read_dir(DIR).expect("tests/cli_golden exists") {
        let path = entry.expect("readable directory entry").path();
        if path.extension().is_some_and(|e| e == "txt") {
            assert!(
                path.with_extension("json").exists(),
                "{} has no .json",
                path.display()
            );
        }
    }
}

#[test]
fn unknown_views_are_refused() {
    let mut out = Vec::new();
    let e = director::cli::render("no-such-view", &serde_json::Value::Null, &mut out)
        .expect_err("no renderer");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(out.is_empty());
}
