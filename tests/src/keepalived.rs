//! keepalived 2.2.x as a lab peer: the reference VRRP implementation that `directord` must
//! interoperate with, and the baseline of the VRRP benchmark.
//!
//! `Keepalived::start(host, spec)` writes `NAME.keepalived.conf` into the lab dir and runs
//! `keepalived -n -l -D -G --vrrp -f CONF -p PID -r VRRPPID -i NAME` inside the host through
//! `Host::spawn`, so the lab's teardown kills it like any other lab process.
//!
//! What keepalived writes outside its config, and why two instances in two namespaces do not
//! collide: the parent and VRRP child pid files (default `/run/keepalived.pid` and
//! `/run/vrrp.pid`, which keepalived also reads to refuse a second start) are given per
//! instance under the lab dir; the consolidated config is a memfd; `-G` keeps it out of
//! syslog, and `-l` sends its log to the console, i.e. the `Proc`'s stdout/stderr files.
//! Only on SIGUSR1/SIGUSR2/SIGJSON does it write `/tmp/keepalived.{data,stats,json}`; the lab
//! never sends those. `-n` keeps the parent in the foreground; it still forks the VRRP child,
//! which stays in the parent's process group, so `Proc::kill` reaches both.
//!
//! Defaults that matter for measurements: `vrrp_garp_master_delay` 5 s and
//! `vrrp_garp_master_repeat` 5 (five gratuitous ARPs on becoming master, five more 5 s later),
//! no real-time scheduling (`vrrp_rt_priority` unset), `vrrp_strict` off, script security off,
//! no checkers. A backup that hears a lower priority advert discards it and preempts only when
//! its Master_Down timer fires.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::lab::{wait_until, Cidr, Host, Lab, Proc, Signal};

/// The VRRP state keepalived logs on a transition (`(NAME) Entering MASTER STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VrrpState {
    Init,
    Backup,
    Master,
    Fault,
}

impl VrrpState {
    fn from_word(w: &str) -> Option<VrrpState> {
        match w {
            "INIT" => Some(VrrpState::Init),
            "BACKUP" => Some(VrrpState::Backup),
            "MASTER" => Some(VrrpState::Master),
            "FAULT" => Some(VrrpState::Fault),
            _ => None,
        }
    }
}

/// One keepalived VRRP instance (one `vrrp_instance` block in its own keepalived process).
#[derive(Clone, Debug)]
pub struct KeepalivedSpec {
    /// Names the files in the lab dir and is keepalived's `router_id` and `-i` config id;
    /// `[A-Za-z0-9_-]`, unique per lab.
    pub name: String,
    /// The `vrrp_instance` name, which keepalived puts in its log lines.
    pub instance: String,
    /// 2 or 3.
    pub version: u8,
    /// Advertisement interval: whole seconds for v2; 10 ms steps from 10 ms to 40.95 s for v3.
    pub interval: Duration,
    pub vrid: u8,
    pub priority: u8,
    pub interface: String,
    /// `ADDR/PREFIX`, inside the lab range.
    pub vips: Vec<String>,
    /// Unicast mode when `unicast_peers` is not empty (`unicast_src_ip` defaults to the
    /// interface's primary address).
    pub unicast_src: Option<Ipv4Addr>,
    pub unicast_peers: Vec<Ipv4Addr>,
    /// `false` writes `nopreempt`.
    pub preempt: bool,
    /// `vrrp_garp_master_delay` in seconds (`None`: keepalived's 5).
    pub garp_master_delay: Option<u32>,
    /// `vrrp_garp_master_repeat` (`None`: keepalived's 5).
    pub garp_master_repeat: Option<u32>,
    /// `vrrp_rt_priority` (`None`: keepalived's default, no real-time scheduling).
    pub rt_priority: Option<u8>,
}

impl KeepalivedSpec {
    /// A v3 multicast instance named `ext` with VRID 51, preempting, keepalived's defaults
    /// for everything else; `vips` empty.
    pub fn new(name: &str, interface: &str, priority: u8, interval: Duration) -> KeepalivedSpec {
        KeepalivedSpec {
            name: name.into(),
            instance: "ext".into(),
            version: 3,
            interval,
            vrid: 51,
            priority,
            interface: interface.into(),
            vips: Vec::new(),
            unicast_src: None,
            unicast_peers: Vec::new(),
            preempt: true,
            garp_master_delay: None,
            garp_master_repeat: None,
            rt_priority: None,
        }
    }

    /// The interval as keepalived's `advert_int` (seconds, two decimals for v3).
    fn advert_int(&self) -> Result<String> {
        let ms = self.interval.as_millis();
        match self.version {
            2 => {
                ensure!(
                    ms.is_multiple_of(1000) && (1000..=255_000).contains(&ms),
                    "VRRPv2 needs a whole number of seconds from 1 to 255, not {:?}",
                    self.interval
                );
                Ok(format!("{}", ms / 1000))
            }
            3 => {
                ensure!(
                    self.interval.as_nanos().is_multiple_of(10_000_000)
                        && (10..=40_950).contains(&ms),
                    "VRRPv3 needs 10 ms steps from 10 ms to 40.95 s, not {:?}",
                    self.interval
                );
                Ok(format!("{}.{:02}", ms / 1000, ms % 1000 / 10))
            }
            v => bail!("VRRP version {v} (want 2 or 3)"),
        }
    }

    /// The keepalived.conf text.
    pub fn config(&self) -> Result<String> {
        let check = |what: &str, s: &str| {
            ensure!(
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{what} {s:?} must be [A-Za-z0-9_-]"
            );
            Ok(())
        };
        check("keepalived name", &self.name)?;
        check("instance name", &self.instance)?;
        check("interface", &self.interface)?;
        ensure!(self.vrid >= 1, "VRID 0 is not valid");
        ensure!(self.priority >= 1, "priority 0 is reserved for resigning");
        ensure!(!self.vips.is_empty(), "no VIPs");
        let advert_int = self.advert_int()?;
        let mut c = String::new();
        let w = &mut c;
        writeln!(w, "# written by director_lab::keepalived for {}", self.name)?;
        writeln!(w, "global_defs {{")?;
        writeln!(w, "    router_id {}", self.name)?;
        writeln!(w, "    vrrp_version {}", self.version)?;
        // Off unless asked for: vrrp_strict, script security, checkers (none configured).
        if let Some(d) = self.garp_master_delay {
            writeln!(w, "    vrrp_garp_master_delay {d}")?;
        }
        if let Some(r) = self.garp_master_repeat {
            writeln!(w, "    vrrp_garp_master_repeat {r}")?;
        }
        if let Some(p) = self.rt_priority {
            writeln!(w, "    vrrp_rt_priority {p}")?;
        }
        writeln!(w, "}}")?;
        writeln!(w, "vrrp_instance {} {{", self.instance)?;
        writeln!(w, "    state BACKUP")?;
        writeln!(w, "    interface {}", self.interface)?;
        writeln!(w, "    virtual_router_id {}", self.vrid)?;
        writeln!(w, "    priority {}", self.priority)?;
        writeln!(w, "    advert_int {advert_int}")?;
        if !self.preempt {
            writeln!(w, "    nopreempt")?;
        }
        if !self.unicast_peers.is_empty() {
            if let Some(src) = self.unicast_src {
                ensure!(Cidr::in_lab_range(src), "{src} is outside the lab range");
                writeln!(w, "    unicast_src_ip {src}")?;
            }
            writeln!(w, "    unicast_peer {{")?;
            for p in &self.unicast_peers {
                ensure!(Cidr::in_lab_range(*p), "{p} is outside the lab range");
                writeln!(w, "        {p}")?;
            }
            writeln!(w, "    }}")?;
        }
        writeln!(w, "    virtual_ipaddress {{")?;
        for v in &self.vips {
            let cidr: Cidr = v.parse()?;
            writeln!(w, "        {cidr}")?;
        }
        writeln!(w, "    }}")?;
        writeln!(w, "}}")?;
        Ok(c)
    }
}

/// A running keepalived (parent + VRRP child) in a lab host.
#[derive(Debug)]
pub struct Keepalived {
    spec: KeepalivedSpec,
    proc: Proc,
    conf: PathBuf,
}

impl Keepalived {
    /// Writes the config and starts keepalived in `host`. Returns once the process runs; use
    /// `wait_state` to wait for a VRRP state. A previous instance of the same name (stopped
    /// or killed) may be started again: its stale pid files are removed first.
    pub fn start(lab: &Lab, host: &Host, spec: KeepalivedSpec) -> Result<Keepalived> {
        let text = spec.config()?;
        let dir = lab.dir();
        let conf = dir.join(format!("{}.keepalived.conf", spec.name));
        let pid = dir.join(format!("{}.keepalived.pid", spec.name));
        let vrrp_pid = dir.join(format!("{}.keepalived-vrrp.pid", spec.name));
        fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
        for p in [&pid, &vrrp_pid] {
            let _ = fs::remove_file(p);
        }
        let mut argv: Vec<std::ffi::OsString> = ["keepalived", "-n", "-l", "-D", "-G", "--vrrp"]
            .iter()
            .map(Into::into)
            .collect();
        argv.extend(["-f".into(), conf.clone().into_os_string()]);
        argv.extend(["-p".into(), pid.into_os_string()]);
        argv.extend(["-r".into(), vrrp_pid.into_os_string()]);
        argv.extend(["-i".into(), spec.name.clone().into()]);
        let mut proc = host
            .spawn(&argv)
            .with_context(|| format!("cannot start keepalived {}", spec.name))?;
        // A config keepalived rejects makes it exit at once; catch that here, not as a
        // timeout in the caller.
        let _ = wait_until(Duration::from_millis(300), || {
            !proc.is_running() || Self::log_of(&proc).contains("Startup complete")
        });
        if !proc.is_running() {
            bail!(
                "keepalived {} exited at start:\n{}",
                spec.name,
                Self::log_of(&proc)
            );
        }
        Ok(Keepalived { spec, proc, conf })
    }

    fn log_of(proc: &Proc) -> String {
        let mut s = proc.stdout().unwrap_or_default();
        s.push_str(&proc.stderr().unwrap_or_default());
        s
    }

    pub fn spec(&self) -> &KeepalivedSpec {
        &self.spec
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.conf
    }

    /// The parent's pid (the VRRP child is in its process group).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Everything keepalived has logged so far (`-l` writes it to the console).
    pub fn log(&self) -> String {
        Self::log_of(&self.proc)
    }

    /// Every state the instance entered, in order, from the log.
    pub fn transitions(&self) -> Vec<VrrpState> {
        parse_transitions(&self.log(), &self.spec.instance)
    }

    /// The instance's current state as last logged (`None` before the first transition).
    pub fn state(&self) -> Option<VrrpState> {
        self.transitions().last().copied()
    }

    /// Waits until the log says the instance is in `state`; fails early if keepalived exits.
    pub fn wait_state(&mut self, state: VrrpState, timeout: Duration) -> Result<()> {
        let mut exited = false;
        let res = wait_until(timeout, || {
            exited = !self.proc.is_running();
            exited || self.state() == Some(state)
        });
        if self.state() == Some(state) {
            return Ok(());
        }
        let tail: Vec<String> = self
            .log()
            .lines()
            .rev()
            .take(10)
            .map(String::from)
            .collect();
        let tail: Vec<String> = tail.into_iter().rev().collect();
        match (exited, res) {
            (true, _) => bail!(
                "keepalived {} exited before entering {state:?}:\n{}",
                self.spec.name,
                tail.join("\n")
            ),
            _ => bail!(
                "keepalived {} not {state:?} within {timeout:?} (now {:?}):\n{}",
                self.spec.name,
                self.state(),
                tail.join("\n")
            ),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// A clean stop: SIGTERM, on which keepalived sends a priority-0 advert (so the backup
    /// takes over after Skew_Time) and removes its VIPs; SIGKILL if it has not exited after
    /// `grace` (it usually needs about a second).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.proc.stop(grace)
    }

    /// A crash: SIGKILL to parent and VRRP child at once (no goodbye advert, VIPs left on the
    /// interface); waits until both are gone.
    pub fn kill(&mut self) -> Result<()> {
        if self.proc.is_running() {
            self.proc.kill(Signal::Kill)?;
        }
        ensure!(
            self.proc.wait_timeout(Duration::from_secs(5))?.is_some(),
            "keepalived {} did not die on SIGKILL",
            self.spec.name
        );
        Ok(())
    }
}

/// `… (ext) Entering MASTER STATE` lines of `instance`, in order.
pub fn parse_transitions(log: &str, instance: &str) -> Vec<VrrpState> {
    let tag = format!("({instance}) Entering ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&tag)? + tag.len()..];
            VrrpState::from_word(rest.split_whitespace().next()?)
        })
        .collect()
}

/// The RFC 5798 §6.1 Master_Down_Interval a backup of `priority` waits after the last advert
/// it heard: `3 × interval + (256 − priority) × interval / 256`.
pub fn master_down_interval(interval: Duration, priority: u8) -> Duration {
    interval * 3 + interval * (256 - u32::from(priority)) / 256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_v3_multicast() {
        let mut s = KeepalivedSpec::new("a", "eth0", 200, Duration::from_millis(30));
        s.vips.push("198.18.1.100/24".into());
        let c = s.config().unwrap();
        assert!(c.contains("vrrp_version 3"), "{c}");
        assert!(c.contains("advert_int 0.03"), "{c}");
        assert!(c.contains("virtual_router_id 51"), "{c}");
        assert!(c.contains("priority 200"), "{c}");
        assert!(c.contains("        198.18.1.100/24\n"), "{c}");
        assert!(!c.contains("nopreempt") && !c.contains("unicast"), "{c}");
        assert!(
            !c.contains("vrrp_strict") && !c.contains("script_security"),
            "{c}"
        );
    }

    #[test]
    fn config_v2_unicast_nopreempt() {
        let mut s = KeepalivedSpec::new("b", "eth0", 100, Duration::from_secs(1));
        s.version = 2;
        s.preempt = false;
        s.vips.push("198.18.1.100/24".into());
        s.unicast_src = Some(Ipv4Addr::new(198, 18, 1, 3));
        s.unicast_peers.push(Ipv4Addr::new(198, 18, 1, 2));
        s.garp_master_delay = Some(1);
        let c = s.config().unwrap();
        assert!(c.contains("advert_int 1\n"), "{c}");
        assert!(c.contains("nopreempt"), "{c}");
        assert!(c.contains("unicast_src_ip 198.18.1.3"), "{c}");
        assert!(c.contains("unicast_peer {\n        198.18.1.2\n"), "{c}");
        assert!(c.contains("vrrp_garp_master_delay 1"), "{c}");
    }

    #[test]
    fn config_refuses_bad_specs() {
        let mut s = KeepalivedSpec::new("a", "eth0", 200, Duration::from_millis(30));
        assert!(s.config().is_err(), "no VIPs");
        s.vips.push("10.0.0.1/24".into());
        assert!(s.config().is_err(), "VIP outside the lab range");
        s.vips = vec!["198.18.1.100/24".into()];
        s.version = 2;
        assert!(s.config().is_err(), "30 ms with v2");
        s.version = 3;
        s.interval = Duration::from_millis(15);
        assert!(s.config().is_err(), "not a centisecond step");
        s.interval = Duration::from_millis(1230);
        assert!(s.config().unwrap().contains("advert_int 1.23\n"));
    }

    #[test]
    fn transitions_from_log() {
        let log = "\
Sat Nov 21 19:44:22 2026: (ext) Entering BACKUP STATE (init)
Sat Nov 21 19:44:22 2026: (other) Entering MASTER STATE
Sat Nov 21 19:44:22 2026: (ext) Receive advertisement timeout
Sat Nov 21 19:44:22 2026: (ext) Entering MASTER STATE
Sat Nov 21 19:44:23 2026: (ext) Entering BACKUP STATE
";
        assert_eq!(
            parse_transitions(log, "ext"),
            vec![VrrpState::Backup, VrrpState::Master, VrrpState::Backup]
        );
    }

    #[test]
    fn rfc_master_down_interval() {
        assert_eq!(
            master_down_interval(Duration::from_secs(1), 100),
            Duration::from_micros(3_609_375)
        );
        assert_eq!(
            master_down_interval(Duration::from_millis(10), 255),
            Duration::from_nanos(30_039_062)
        );
    }
}
