//! One `directord` per network namespace.
//!
//! Two daemons on one box would fight over everything they own: the `ip director` nftables
//! table, the VIPs on the interfaces, the XDP programs, the VRRP instances. So before a
//! daemon touches any of them it takes an exclusive `flock` on a lock file named after its
//! network namespace (`/run/director/directord-netns-<inode>.lock`); a second daemon started
//! by mistake, with any config, finds the lock held and stops with nothing done. The kernel
//! drops the lock when the holder exits, however it exits, so a crashed daemon never blocks
//! its restart. The file stays behind (removing it would let a third daemon lock a new file
//! while a second still holds the old one); it holds the holder's pid, for the error message.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/director";

/// The held lock: released when dropped (the file is closed).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes this network namespace's lock, or says which daemon holds it.
    pub fn claim() -> Result<InstanceLock> {
        let netns = std::fs::metadata("/proc/self/ns/net")
            .context("cannot identify this network namespace (/proc/self/ns/net)")?
            .ino();
        Self::claim_at(&Path::new(LOCK_DIR).join(format!("directord-netns-{netns}.lock")))
    }

    /// Takes the lock at `path` (created, mode 0600, if missing).
    pub fn claim_at(path: &Path) -> Result<InstanceLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the instance lock {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => String::from("pid unknown"),
                    pid => format!("pid {pid}"),
                };
                bail!(
                    "directord is already running in this network namespace ({holder}, holding \
                     {}); nothing was changed. Stop it first, or change its config with \
                     `director reload`",
                    path.display()
                );
            }
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(InstanceLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("director-lock-{}", std::process::id()));
        let path = dir.join("test.lock");
        let first = InstanceLock::claim_at(&path).expect("first claim");
        let err = InstanceLock::claim_at(&path).expect_err("second claim");
        let msg = format!("{err:#}");
        assert!(msg.contains("already running"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "names the holder: {msg}"
        );
        drop(first);
        let again = InstanceLock::claim_at(&path).expect("claim after release");
        assert_eq!(again.path(), path);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
