//! Golden tests of config errors: every `config_errors/NAME.toml` must fail to validate with
//! exactly the lines of `config_errors/NAME.expected`.
//!
//! Files are loaded by the relative path `tests/config_errors/NAME.toml` (cargo runs
//! integration tests in the package directory), so the expected lines carry that stable path,
//! exactly as `director check-config` prints them from `director/`. Run with `BLESS=1` to
//! rewrite the `.expected` files after a deliberate message change, then review the diff.

use std::fs;
use std::path::{Path, PathBuf};

const DIR: &str = "tests/config_errors";

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(DIR)
        .expect("tests/config_errors exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_broken_config_fails_with_the_expected_errors() {
    let cases = cases();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let got = match director::config::load(case) {
            Ok(_) => format!("<valid: no errors for {}>\n", case.display()),
            Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect(),
        };
        let expected_path = case.with_extension("expected");
        if bless {
            fs::write(&expected_path, &got).expect("write .expected");
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
fn every_expected_file_has_its_config() {
    for entry in fs::read_dir(DIR).expect("tests/config_errors exists") {
        let path = entry.expect("readable directory entry").path();
        if path.extension().is_some_and(|e| e == "expected") {
            assert!(
                Path::new(&path.with_extension("toml")).exists(),
                "{} has no .toml",
                path.display()
            );
        }
    }
}
