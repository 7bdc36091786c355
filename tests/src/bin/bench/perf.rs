//! `--perf DIR`: a `perf record -g` during the first repetition of each flat-out packet-rate
//! and new-flows run: of CPU 1 (the box) in P1, of every CPU otherwise.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::plan::{Placement, BOX_CPU};

static DIR: OnceLock<PathBuf> = OnceLock::new();

pub fn set_dir(dir: PathBuf) -> std::io::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let _ = DIR.set(dir);
    Ok(())
}

pub fn start(name: &str, secs: f64, pl: Placement) -> Option<Child> {
    let dir = DIR.get()?;
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-F", "1999", "-g"]);
    if pl == Placement::P1 {
        cmd.args(["-C", &BOX_CPU.to_string()]);
    } else {
        cmd.arg("-a");
    }
    cmd.arg("-o")
        .arg(dir.join(format!("{name}.data")))
        .args(["--", "sleep", &format!("{secs}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().ok()
}

pub fn wait(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.wait();
    }
}
