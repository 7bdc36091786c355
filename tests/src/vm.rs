//! Appliance VMs in the lab: the image `appliance-image/build` makes, booted under QEMU with its
//! NICs as tap devices on the lab's bridges, given its identity through fw_cfg, and managed over
//! SSH from a lab host.
//!
//! QEMU runs in the lab's switch namespace (where the bridges are), daemonized with a pidfile;
//! [`Vm::kill`] is `kill -9` of that pid (pulling the power cord). Each VM boots from its own
//! qcow2 overlay over the image (absolute backing path) and its own copy of the UEFI variable
//! store, so a reboot keeps its disk — config partition, boot entries, second slot — as a real
//! box would. The lab's teardown kills whatever still runs in its namespaces, QEMU included.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::lab::{wait_until, Bridge, Host, Lab, Mac};
use crate::topo::workspace_bin;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A built appliance image.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    /// The disk image for QEMU.
    pub fn qcow2(&self) -> PathBuf {
        self.dir.join("director.qcow2")
    }

    /// The whole raw disk (what an operator writes onto a box, and an upgrade source).
    pub fn raw(&self) -> PathBuf {
        self.dir.join("director.raw")
    }

    pub fn version(&self) -> String {
        fs::read_to_string(self.dir.join("image-version"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// Builds the image from the binaries next to this test (the workspace's fresh build) with
/// `appliance-image/build`, once per process. `DIRECTOR_IMAGE_DIR` names an already built
/// image instead (for iterating on a test).
pub fn image() -> Result<Image> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_image() -> Result<Image> {
    if let Some(dir) = std::env::var_os("DIRECTOR_IMAGE_DIR") {
        let image = Image { dir: dir.into() };
        ensure!(
            image.qcow2().is_file(),
            "DIRECTOR_IMAGE_DIR has no director.qcow2"
        );
        return Ok(image);
    }
    let directord = workspace_bin("directord")?;
    let bin_dir = directord.parent().context("bin dir")?.to_path_buf();
    let target = bin_dir.parent().context("target dir")?.to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let out = target.join("appliance");
    let started = Instant::now();
    let status = Command::new(root.join("appliance-image/build"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(target.join("appliance-cache"))
        .status()
        .context("running appliance-image/build")?;
    ensure!(status.success(), "appliance-image/build failed ({status})");
    eprintln!(
        "vm: image built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Image { dir: out })
}

/// KVM when it boots the image's kernel, else TCG. `/dev/kvm` on some hosts only runs special
/// guest kernels and a stock kernel hangs there, so the probe boots the real image for up to
/// 20 s and looks for the kernel's banner on the serial console. `DIRECTOR_VM_ACCEL=kvm|tcg`
/// skips the probe.
pub fn accel(lab: &Lab, image: &Image) -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        match std::env::var("DIRECTOR_VM_ACCEL").as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        if fs::metadata("/dev/kvm").is_err() {
            return "tcg";
        }
        let dir = lab.dir().join("kvm-probe");
        let probe = || -> Result<bool> {
            fs::create_dir_all(&dir)?;
            let overlay = overlay(image, &dir.join("disk.qcow2"))?;
            let vars = dir.join("vars.fd");
            fs::copy(OVMF_VARS, &vars)?;
            let serial = dir.join("serial.log");
            let pidfile = dir.join("qemu.pid");
            let mut argv = base_argv("kvm", &overlay, &vars, &serial, &pidfile);
            argv.push("-nic".into());
            argv.push("none".into());
            let out = lab.switch_host().output(&argv, Duration::from_secs(20))?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let seen = wait_until(Duration::from_secs(20), || {
                fs::read_to_string(&serial).is_ok_and(|s| s.contains("Linux version"))
            })
            .is_ok();
            kill_pidfile(&pidfile);
            Ok(seen)
        };
        let verdict = match probe() {
            Ok(true) => "kvm",
            Ok(false) => {
                eprintln!("vm: KVM did not boot the image's kernel in 20 s: using TCG");
                "tcg"
            }
            Err(e) => {
                eprintln!("vm: KVM probe failed ({e:#}): using TCG");
                "tcg"
            }
        };
        let _ = fs::remove_dir_all(&dir);
        verdict
    })
}

fn overlay(image: &Image, path: &Path) -> Result<PathBuf> {
    let backing = fs::canonicalize(image.qcow2())?;
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&backing)
        .arg(path)
        .output()
        .context("qemu-img create")?;
    ensure!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(path.to_path_buf())
}

fn base_argv(
    accel: &str,
    disk: &Path,
    vars: &Path,
    serial: &Path,
    pidfile: &Path,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: String| a.push(s.into());
    push("qemu-system-x86_64".into());
    for s in [
        "-machine", "q35", "-accel", accel, "-m", "1024", "-smp", "1",
    ] {
        push(s.into());
    }
    push("-display".into());
    push("none".into());
    push("-serial".into());
    push(format!("file:{}", serial.display()));
    push("-drive".into());
    push(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
    push("-drive".into());
    push(format!("if=pflash,format=raw,file={}", vars.display()));
    push("-drive".into());
    push(format!("file={},if=virtio,format=qcow2", disk.display()));
    // The hardware watchdog systemd pets; a hung guest is reset.
    push("-device".into());
    push("i6300esb".into());
    push("-daemonize".into());
    push("-pidfile".into());
    push(pidfile.display().to_string());
    a
}

fn read_pid(pidfile: &Path) -> Option<i32> {
    fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn kill_pidfile(pidfile: &Path) {
    if let Some(pid) = read_pid(pidfile) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_until(Duration::from_secs(10), || !alive(pid));
        let _ = fs::remove_file(pidfile);
    }
}

/// One NIC of a VM: its name inside the guest (pinned by MAC), the bridge it is plugged into.
#[derive(Debug, Clone)]
pub struct Nic {
    pub name: String,
    pub bridge: Bridge,
    pub mac: Mac,
    pub tap: String,
}

/// An appliance VM.
pub struct Vm {
    pub name: String,
    switch: Host,
    accel: &'static str,
    dir: PathBuf,
    disk: PathBuf,
    vars: PathBuf,
    pidfile: PathBuf,
    seed: PathBuf,
    pub nics: Vec<Nic>,
    /// Extra drives (read-only), each `(serial, path)`: the guest sees
    /// /dev/disk/by-id/virtio-SERIAL.
    pub drives: Vec<(String, PathBuf)>,
    /// The address SSH goes to.
    pub mgmt: std::net::Ipv4Addr,
    key: PathBuf,
    boots: u32,
}

/// What a VM's config partition is seeded with (fw_cfg `opt/director/seed`, a tar).
pub struct Seed {
    /// `node.conf` lines after the hostname and link lines (addresses, routes).
    pub node_conf: String,
    /// Files under /config: (relative path, content).
    pub files: Vec<(String, String)>,
}

impl Vm {
    /// Prepares VM `name` (overlay disk, UEFI vars, seed) without booting it. `nics`: (name in
    /// the guest, bridge); MACs are derived from `index`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lab: &Lab,
        image: &Image,
        name: &str,
        index: u8,
        nics: &[(&str, &Bridge)],
        mgmt: std::net::Ipv4Addr,
        ssh_pubkey: &str,
        ssh_key: &Path,
        seed: Seed,
    ) -> Result<Vm> {
        let accel = accel(lab, image);
        let dir = lab.dir().join(format!("vm-{name}"));
        fs::create_dir_all(&dir)?;
        let disk = overlay(image, &dir.join("disk.qcow2"))?;
        let vars = dir.join("vars.fd");
        fs::copy(OVMF_VARS, &vars).context("copying the OVMF variable store")?;
        let nics: Vec<Nic> = nics
            .iter()
            .enumerate()
            .map(|(i, (n, b))| Nic {
                name: n.to_string(),
                bridge: (*b).clone(),
                mac: Mac([0x52, 0x54, 0x00, 0xd1, index, i as u8 + 1]),
                tap: lab.new_ifname(),
            })
            .collect();
        // The seed: node.conf, authorized_keys and whatever files the test adds.
        let tree = dir.join("seed");
        fs::create_dir_all(tree.join("ssh"))?;
        let mut node = format!("# {name}: seeded from fw_cfg by the lab\nhostname {name}\n");
        for n in &nics {
            let _ = writeln!(node, "link {} {}", n.name, n.mac);
        }
        node.push_str(&seed.node_conf);
        fs::write(tree.join("node.conf"), node)?;
        fs::write(tree.join("ssh/authorized_keys"), ssh_pubkey)?;
        for (rel, content) in &seed.files {
            let p = tree.join(rel);
            fs::create_dir_all(p.parent().context("seed path")?)?;
            fs::write(&p, content)?;
        }
        let tar = dir.join("seed.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg(".")
            .output()?;
        ensure!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Vm {
            name: name.into(),
            switch: lab.switch_host(),
            accel,
            pidfile: dir.join("qemu.pid"),
            dir,
            disk,
            vars,
            seed: tar,
            nics,
            drives: Vec::new(),
            mgmt,
            key: ssh_key.to_path_buf(),
            boots: 0,
        })
    }

    /// The serial console log of boot `n` (1-based).
    pub fn serial_log(&self, n: u32) -> PathBuf {
        self.dir.join(format!("serial.{n}.log"))
    }

    /// The serial console of every boot so far, in order (a reboot inside the guest stays in
    /// the same boot's log: it is the same QEMU process).
    pub fn serial(&self) -> String {
        (1..=self.boots)
            .map(|b| fs::read_to_string(self.serial_log(b)).unwrap_or_default())
            .collect()
    }

    /// The last `lines` lines of [`Vm::serial`].
    pub fn serial_tail(&self, lines: usize) -> String {
        let all = self.serial();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Powers the VM on (QEMU daemonized in the switch namespace) and plugs its taps into
    /// their bridges.
    pub fn boot(&mut self) -> Result<()> {
        ensure!(!self.running(), "{} is already running", self.name);
        self.boots += 1;
        let serial = self.serial_log(self.boots);
        let mut argv = base_argv(self.accel, &self.disk, &self.vars, &serial, &self.pidfile);
        for (i, n) in self.nics.iter().enumerate() {
            argv.push("-netdev".into());
            argv.push(format!("tap,id=n{i},ifname={},script=no,downscript=no", n.tap).into());
            argv.push("-device".into());
            argv.push(format!("virtio-net-pci,netdev=n{i},mac={}", n.mac).into());
        }
        for (i, (serial, path)) in self.drives.iter().enumerate() {
            argv.push("-drive".into());
            argv.push(
                format!(
                    "file={},if=none,id=x{i},format=raw,readonly=on",
                    path.display()
                )
                .into(),
            );
            argv.push("-device".into());
            argv.push(format!("virtio-blk-pci,drive=x{i},serial={serial}").into());
        }
        argv.push("-fw_cfg".into());
        argv.push(format!("name=opt/director/seed,file={}", self.seed.display()).into());
        let out = self.switch.output(&argv, Duration::from_secs(30))?;
        ensure!(
            out.status.success(),
            "qemu for {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        for n in &self.nics {
            self.switch
                .ip(["link", "set", &n.tap, "master", &n.bridge.ifname, "up"])?;
        }
        Ok(())
    }

    /// Whether its QEMU process runs.
    pub fn running(&self) -> bool {
        read_pid(&self.pidfile).is_some_and(alive)
    }

    /// The QEMU process, for `kill -9`.
    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.pidfile)
    }

    /// Pulls the power cord: SIGKILL to QEMU.
    pub fn kill(&mut self) {
        kill_pidfile(&self.pidfile);
    }

    fn ssh_argv(&self, remote: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["ssh".into(), "-i".into(), self.key.clone().into()];
        for o in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "ConnectTimeout=5",
            "LogLevel=ERROR",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
        ] {
            a.push("-o".into());
            a.push(o.into());
        }
        a.push(format!("root@{}", self.mgmt).into());
        a.push(remote.into());
        a
    }

    /// Runs `remote` (a shell command line) on the VM over SSH from `from`; its output whatever
    /// its exit status.
    pub fn ssh_output(&self, from: &Host, remote: &str, timeout: Duration) -> Result<Output> {
        from.output(&self.ssh_argv(remote), timeout)
    }

    /// Runs `remote` over SSH and returns its stdout; an error (with stderr) if it fails.
    pub fn ssh(&self, from: &Host, remote: &str) -> Result<String> {
        let out = self.ssh_output(from, remote, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!(
                "ssh {} {remote:?}: {} — {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `director --json ARGS` on the VM, parsed.
    pub fn director_json(&self, from: &Host, args: &str) -> Result<serde_json::Value> {
        let out = self.ssh(from, &format!("director --json {args}"))?;
        serde_json::from_str(out.trim()).with_context(|| format!("director {args}: {out:?}"))
    }

    /// Waits until SSH answers; returns how long that took.
    pub fn wait_ssh(&self, from: &Host, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let ok = wait_until(timeout, || {
            self.ssh_output(from, "true", Duration::from_secs(15))
                .is_ok_and(|o| o.status.success())
        });
        if ok.is_err() {
            bail!(
                "{}: no SSH after {timeout:?} (qemu running: {}); serial console:\n{}",
                self.name,
                self.running(),
                self.serial_tail(40)
            );
        }
        Ok(start.elapsed())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
