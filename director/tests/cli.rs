//! The built `director` binary: exit codes and output of `check-config`.

use std::process::{Command, Output};

fn director(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_director"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the director binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[test]
fn check_config_accepts_a_valid_file() {
    let out = director(&["check-config", "../configs/nat.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "../configs/nat.toml: ok (2 services, 5 real servers)\n"
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_config_prints_every_error_and_exits_1() {
    let file = "tests/config_errors/multiple_errors.toml";
    let out = director(&["check-config", file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let expected = std::fs::read_to_string("tests/config_errors/multiple_errors.expected")
        .expect("the golden file");
    assert_eq!(text(&out.stderr), expected);
    assert!(expected.lines().count() > 3);
}

#[test]
fn check_config_json() {
    let out = director(&["--json", "check-config", "../configs/dr.toml"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["ok"], true);
    assert_eq!(v["services"], 2);
    assert_eq!(v["real_servers"], 5);

    let out = director(&[
        "check-config",
        "--json",
        "tests/config_errors/duplicate_vip.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["ok"], false);
    let e = &v["errors"][0];
    assert_eq!(e["file"], "tests/config_errors/duplicate_vip.toml");
    assert!(e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0);
    assert!(e["message"].as_str().unwrap().contains("already used"));
}

#[test]
fn unreadable_file_exits_1() {
    let out = director(&["check-config", "tests/config_errors/no-such-file.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("tests/config_errors/no-such-file.toml: cannot read"));
}

#[test]
fn warnings_do_not_fail_the_check() {
    let dir = std::env::temp_dir().join(format!("director-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("empty-service.toml");
    std::fs::write(
        &file,
        "[node]\nname = \"lb-a\"\n\n[[service]]\nname = \"web\"\nvip = \"198.18.1.100:80\"\nmode = \"nat\"\n",
    )
    .expect("write temp config");
    let out = director(&["check-config", file.to_str().expect("UTF-8 temp path")]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).ends_with(": ok (1 service, 0 real servers)\n"));
    assert!(text(&out.stderr).contains(":5:8: warning: service \"web\" has no real servers"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(director(&["check-config", "a", "b"]).status.code(), Some(2));
    assert_eq!(director(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(director(&[]).status.code(), Some(2));
}
