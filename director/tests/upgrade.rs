//! `director upgrade`, `slots` and `boot-check` on a fake appliance made of temporary files:
//! slot images built by `mkfs.ext4 -d`, a GPT disk image laid out by `sfdisk`, a
//! by-partlabel directory of regular files, an ESP directory and an efivars directory. The
//! real binary runs with its hidden path flags, so nothing of this machine is touched.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const OPTIONS: &str =
    "root=PARTLABEL=root-@SLOT@ rw director.slot=@SLOT@ console=tty0 console=ttyS0,115200 panic=10";
const GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The disk image's layout in 512-byte sectors: root-a starts at sector 6144.
const SFDISK_SCRIPT: &str = "\
label: gpt
unit: sectors
first-lba: 2048
start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"
start=6144, size=32768, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root-a\"
start=38912, size=32768, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root-b\"
start=71680, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"config\"
";
const ROOT_A_SECTOR: u64 = 6144;

fn run(program: &str, args: &[&str], stdin: Option<&str>) {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (e2fsprogs, fdisk): {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("director-upgrade-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The contents of a slot image.
struct SlotFiles {
    version: &'static str,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
}

impl SlotFiles {
    fn new(version: &'static str, seed: u8) -> SlotFiles {
        SlotFiles {
            version,
            kernel: format!("fake kernel {version}\n").into_bytes(),
            // Big enough to take more than one filesystem block.
            initrd: (0..300_000u32).map(|i| (i % 251) as u8 ^ seed).collect(),
        }
    }
}

/// `mkfs.ext4 -q -d DIR img 16M` with the four files of a slot.
fn slot_image(s: &Scratch, name: &str, files: &SlotFiles) -> PathBuf {
    let root = s.path(&format!("{name}.d"));
    let boot = root.join("usr/lib/director/boot");
    fs::create_dir_all(&boot).expect("mkdir");
    fs::write(boot.join("vmlinuz"), &files.kernel).expect("write");
    fs::write(boot.join("initrd.img"), &files.initrd).expect("write");
    fs::write(boot.join("options"), format!("{OPTIONS}\n")).expect("write");
    fs::write(
        root.join("usr/lib/director/image-version"),
        format!("{}\n", files.version),
    )
    .expect("write");
    let img = s.path(name);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-d",
            root.to_str().expect("UTF-8"),
            img.to_str().expect("UTF-8"),
            "16M",
        ],
        None,
    );
    img
}

/// A 40 MiB GPT disk image (esp, root-a, root-b, config) with `slot` in root-a.
fn disk_image(s: &Scratch, slot: &Path) -> PathBuf {
    let disk = s.path("disk.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(40 << 20))
        .expect("create the disk");
    run(
        "sfdisk",
        &[
            "-q",
            "--no-reread",
            "--no-tell-kernel",
            disk.to_str().expect("UTF-8"),
        ],
        Some(SFDISK_SCRIPT),
    );
    run(
        "dd",
        &[
            &format!("if={}", slot.display()),
            &format!("of={}", disk.display()),
            "bs=512",
            &format!("seek={ROOT_A_SECTOR}"),
            "conv=notrunc",
            "status=none",
        ],
        None,
    );
    disk
}

/// A fake appliance running `slot`, its other slot a regular file of `target_mib` MiB
/// filled with 0xAA, and `entries` on its ESP.
struct Appliance {
    s: Scratch,
}

impl Appliance {
    fn new(tag: &str, running: &str, target_mib: u64, entries: &[(&str, &str)]) -> Appliance {
        let s = Scratch::new(tag);
        for dir in ["by-partlabel", "esp/loader/entries", "efivars"] {
            fs::create_dir_all(s.path(dir)).expect("mkdir");
        }
        fs::write(s.path("image-version"), "0.5.0+gfeedbee 2026-10-01\n").expect("write");
        let a = Appliance { s };
        a.boot(running);
        let other = if running == "a" { "b" } else { "a" };
        a.set_slot(other, target_mib);
        for (name, body) in entries {
            fs::write(a.entries().join(name), body).expect("write an entry");
        }
        a
    }

    /// "Reboot" into `slot`.
    fn boot(&self, slot: &str) {
        fs::write(
            self.s.path("cmdline"),
            format!("BOOT_IMAGE=/x quiet director.slot={slot} panic=10\n"),
        )
        .expect("write cmdline");
    }

    fn set_slot(&self, slot: &str, mib: u64) {
        fs::write(self.device(slot), vec![0xAA; (mib << 20) as usize]).expect("write a slot");
    }

    fn device(&self, slot: &str) -> PathBuf {
        self.s.path(&format!("by-partlabel/root-{slot}"))
    }

    fn entries(&self) -> PathBuf {
        self.s.path("esp/loader/entries")
    }

    fn entry_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.entries())
            .expect("entries dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
            .collect();
        names.sort();
        names
    }

    fn set_efi_var(&self, name: &str, value: &str) {
        let mut raw = vec![0x06, 0, 0, 0];
        for u in value.encode_utf16().chain([0]) {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        fs::write(self.s.path(&format!("efivars/{name}-{GUID}")), raw).expect("write a var");
    }

    /// `director ARGS` with the appliance's paths.
    fn director(&self, args: &[&str]) -> Output {
        let p = |rel: &str| self.s.path(rel).display().to_string();
        Command::new(env!("CARGO_BIN_EXE_director"))
            .args(args)
            .args(["--cmdline-file", &p("cmdline")])
            .args(["--partlabel-dir", &p("by-partlabel")])
            .args(["--esp", &p("esp")])
            .args(["--efivars", &p("efivars")])
            .args(["--image-version-file", &p("image-version")])
            .args(["--reboot-command", &format!("touch {}", p("rebooted"))])
            .output()
            .expect("run the director binary")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("UTF-8")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn entry_text(version: &str, gen: u64, slot: &str) -> String {
    format!(
        "title Director {version} (slot {slot})\n\
         version {gen}\n\
         linux /slot-{slot}/vmlinuz\n\
         initrd /slot-{slot}/initrd.img\n\
         options root=PARTLABEL=root-{slot} rw director.slot={slot} console=tty0 console=ttyS0,115200 panic=10\n"
    )
}

const ENTRY_1_A: &str = "title Director 0.5.0 (slot a)\nversion 1\nlinux /slot-a/vmlinuz\n";

/// From a disk image into slot b, "reboot", then from a bare ext4 image into slot a.
#[test]
fn upgrade_writes_the_other_slot_then_back() {
    let build = Scratch::new("build");
    let v1 = SlotFiles::new("0.6.0+g1a2b3c4 2026-11-21", 0);
    let slot1 = slot_image(&build, "slot1.img", &v1);
    let disk = disk_image(&build, &slot1);
    let box1 = Appliance::new("twice", "a", 20, &[("director-1-a.conf", ENTRY_1_A)]);

    let out = box1.director(&["upgrade", disk.to_str().expect("UTF-8"), "--no-reboot"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("running slot a; writing slot b"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GPT disk image, 16.0 MiB at byte 3145728"),
        "{stdout}"
    );
    assert!(stdout.contains("not rebooting (--no-reboot)"), "{stdout}");
    assert!(text(&out.stderr).contains("copying: 100% (16.0 MiB of 16.0 MiB)"));
    assert!(!box1.s.path("rebooted").exists());

    let slot1_bytes = fs::read(&slot1).expect("read slot1");
    let b = fs::read(box1.device("b")).expect("read root-b");
    assert_eq!(b.len(), 20 << 20, "the slot keeps its size");
    assert!(
        b[..slot1_bytes.len()] == slot1_bytes[..],
        "root-b holds the slot image"
    );
    assert!(b[slot1_bytes.len()..].iter().all(|&x| x == 0xAA));
    assert_eq!(
        fs::read(box1.s.path("esp/slot-b/vmlinuz")).expect("kernel"),
        v1.kernel
    );
    assert_eq!(
        fs::read(box1.s.path("esp/slot-b/initrd.img")).expect("initrd"),
        v1.initrd
    );
    assert_eq!(
        box1.entry_names(),
        ["director-1-a.conf", "director-2-b+3.conf"]
    );
    assert_eq!(
        fs::read_to_string(box1.entries().join("director-2-b+3.conf")).expect("entry"),
        entry_text(v1.version, 2, "b")
    );
    assert_eq!(
        fs::read_to_string(box1.entries().join("director-1-a.conf")).expect("entry"),
        ENTRY_1_A
    );

    // systemd-boot took the entry (one try used), and the box runs slot b.
    fs::rename(
        box1.entries().join("director-2-b+3.conf"),
        box1.entries().join("director-2-b+2-1.conf"),
    )
    .expect("count a try");
    box1.boot("b");
    box1.set_slot("a", 20);
    box1.set_efi_var(
        "LoaderBootCountPath",
        "\\loader\\entries\\director-2-b+2-1.conf",
    );

    let out = box1.director(&["--json", "slots"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["running"], "b");
    assert_eq!(v["next"], "director-2-b+2-1.conf");
    assert_eq!(v["counted_boot"]["confirmed"], false);
    assert_eq!(
        v["slots"][1]["version"], "0.5.0+gfeedbee 2026-10-01",
        "the running one's file"
    );

    // A bare ext4 image into slot a: the old a entry goes, GEN 3 comes.
    let v2 = SlotFiles::new("0.7.0+g5e6f7a8 2026-12-01", 0x5A);
    let slot2 = slot_image(&build, "slot2.ext4", &v2);
    let out = box1.director(&["upgrade", slot2.to_str().expect("UTF-8"), "--tries", "5"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ext4 root filesystem, 16.0 MiB at byte 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("removed boot entry director-1-a.conf"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: this boot (\\loader\\entries\\director-2-b+2-1.conf) is not confirmed good yet"),
        "{stdout}"
    );
    assert!(stdout.contains("rebooting into slot a"), "{stdout}");
    assert!(box1.s.path("rebooted").exists(), "the reboot command ran");
    let slot2_bytes = fs::read(&slot2).expect("read slot2");
    let a = fs::read(box1.device("a")).expect("read root-a");
    assert!(
        a[..slot2_bytes.len()] == slot2_bytes[..],
        "root-a holds the new image"
    );
    assert_eq!(
        fs::read(box1.s.path("esp/slot-a/vmlinuz")).expect("kernel"),
        v2.kernel
    );
    assert_eq!(
        fs::read(box1.s.path("esp/slot-a/initrd.img")).expect("initrd"),
        v2.initrd
    );
    assert_eq!(
        fs::read(box1.s.path("esp/slot-b/vmlinuz")).expect("kernel"),
        v1.kernel
    );
    assert_eq!(
        box1.entry_names(),
        ["director-2-b+2-1.conf", "director-3-a+5.conf"]
    );
    assert_eq!(
        fs::read_to_string(box1.entries().join("director-3-a+5.conf")).expect("entry"),
        entry_text(v2.version, 3, "a")
    );

    // slots: boot order, counters, versions read out of the other slot with debugfs.
    let out = box1.director(&["--json", "slots"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["next"], "director-3-a+5.conf");
    let order: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["file"].as_str().expect("file"))
        .collect();
    assert_eq!(order, ["director-3-a+5.conf", "director-2-b+2-1.conf"]);
    assert_eq!(
        v["entries"][0],
        json!({"file": "director-3-a+5.conf", "id": "director-3-a", "gen": 3, "slot": "a",
               "title": format!("Director {} (slot a)", v2.version),
               "tries_left": 5, "tries_done": 0, "good": false, "bad": false, "boots_next": true})
    );
    assert_eq!(v["slots"][0]["version"], v2.version);
    assert_eq!(v["slots"][0]["running"], false);

    // A bad entry sinks below the good one.
    fs::rename(
        box1.entries().join("director-3-a+5.conf"),
        box1.entries().join("director-3-a+0-5.conf"),
    )
    .expect("use up the tries");
    fs::rename(
        box1.entries().join("director-2-b+2-1.conf"),
        box1.entries().join("director-2-b.conf"),
    )
    .expect("bless");
    let out = box1.director(&["slots"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let human = text(&out.stdout).replace(&box1.s.0.display().to_string(), "<tmp>");
    assert_eq!(
        human,
        format!(
            "\
running    slot b
slot a     <tmp>/by-partlabel/root-a  Director {v2}
slot b     <tmp>/by-partlabel/root-b  Director 0.5.0+gfeedbee 2026-10-01  (running)
this boot  counted: \\loader\\entries\\director-2-b+2-1.conf, confirmed good
  Entry                   Gen  Slot  Tries                 Title
* director-2-b.conf         2  b     good                  Director {v1} (slot b)
  director-3-a+0-5.conf     3  a     BAD (0 left, 5 done)  Director {v2} (slot a)
(* boots next)
",
            v1 = v1.version,
            v2 = v2.version
        )
    );
}

/// The size is checked before anything changes: no entry removed, the slot untouched.
#[test]
fn a_too_small_slot_is_refused_before_anything_changes() {
    let build = Scratch::new("small-build");
    let slot = slot_image(&build, "slot.img", &SlotFiles::new("0.6.0", 1));
    let box1 = Appliance::new(
        "small",
        "a",
        8,
        &[
            ("director-1-a.conf", ENTRY_1_A),
            ("director-0-b+1-2.conf", "title old b\n"),
        ],
    );
    let out = box1.director(&["upgrade", slot.to_str().expect("UTF-8"), "--no-reboot"]);
    assert_eq!(code(&out), 1);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "director: upgrade failed: check the target slot's size: {}: the slot has 8388608 bytes (8.0 MiB), the image's root filesystem needs 16777216 (16.0 MiB)",
            box1.device("b").display()
        )),
        "{err}"
    );
    assert_eq!(
        box1.entry_names(),
        ["director-0-b+1-2.conf", "director-1-a.conf"]
    );
    assert!(fs::read(box1.device("b"))
        .expect("root-b")
        .iter()
        .all(|&x| x == 0xAA));
    assert!(!box1.s.path("esp/slot-b").exists());
}

#[test]
fn garbage_and_missing_slots_are_refused() {
    let box1 = Appliance::new("garbage", "b", 20, &[("director-1-a.conf", ENTRY_1_A)]);
    let junk = box1.s.path("junk.img");
    fs::write(
        &junk,
        (0..4u32 << 20)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<u8>>(),
    )
    .expect("write junk");
    let out = box1.director(&["upgrade", junk.to_str().expect("UTF-8"), "--no-reboot"]);
    assert_eq!(code(&out), 1);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "read the image: {}: neither a GPT disk image",
            junk.display()
        )),
        "{err}"
    );
    assert_eq!(box1.entry_names(), ["director-1-a.conf"]);

    // No director.slot= on the command line.
    fs::write(box1.s.path("cmdline"), "root=/dev/vda2 quiet\n").expect("write");
    let out = box1.director(&["upgrade", junk.to_str().expect("UTF-8"), "--no-reboot"]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("find the running slot")
            && text(&out.stderr).contains("no director.slot="),
        "{}",
        text(&out.stderr)
    );

    // A missing image names its path.
    box1.boot("b");
    let out = box1.director(&["upgrade", "/nonexistent/x.img", "--no-reboot"]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("open the image: /nonexistent/x.img: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn boot_check_outside_a_counted_boot_passes() {
    let box1 = Appliance::new("bc-none", "a", 1, &[]);
    let out = box1.director(&[
        "--socket",
        "/nonexistent.sock",
        "boot-check",
        "--timeout",
        "1",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("not a counted boot"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn boot_check_without_a_daemon_fails_after_the_timeout() {
    let box1 = Appliance::new("bc-nodaemon", "b", 1, &[]);
    box1.set_efi_var(
        "LoaderBootCountPath",
        "\\loader\\entries\\director-2-b+2-1.conf",
    );
    let sock = box1.s.path("no-daemon.sock");
    let out = box1.director(&[
        "--socket",
        sock.to_str().expect("UTF-8"),
        "boot-check",
        "--timeout",
        "1",
    ]);
    assert_eq!(code(&out), 1);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "counted boot: LoaderBootCountPath = \\loader\\entries\\director-2-b+2-1.conf"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "boot is NOT good after 1s: no daemon answers on {}",
            sock.display()
        )),
        "{stdout}"
    );
}

/// A stand-in daemon answers `status` and `vrrp` as control.rs does, with one advert heard.
#[test]
fn boot_check_passes_when_the_daemon_hears_its_peer() {
    let box1 = Appliance::new("bc-good", "b", 1, &[]);
    box1.set_efi_var(
        "LoaderBootCountPath",
        "\\loader\\entries\\director-2-b+2-1.conf",
    );
    let sock = box1.s.path("control.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let server = std::thread::spawn(move || {
        let mut asked = Vec::new();
        for stream in listener.incoming().take(2) {
            let stream = stream.expect("accept");
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).expect("read");
            let req: Value = serde_json::from_str(&line).expect("a JSON request");
            // Answers the daemon gives (the CLI's golden fixtures, held to the API's views):
            // the sync peer down, one instance BACKUP that has heard 3 adverts.
            let fixture = |name: &str| -> Value {
                let path = format!("tests/cli_golden/{name}.json");
                serde_json::from_str(&std::fs::read_to_string(&path).expect("a fixture"))
                    .expect("a JSON fixture")
            };
            let data = match req["command"].as_str() {
                Some("status") => fixture("status--mixed"),
                Some("vrrp") => {
                    let mut v = fixture("vrrp");
                    let ext = &mut v["instances"][0];
                    ext["state"] = json!("BACKUP");
                    ext["counters"]["adverts_rx"] = json!(3);
                    v["instances"][1]["counters"]["adverts_rx"] = json!(0);
                    v
                }
                other => panic!("unexpected request {other:?}"),
            };
            writeln!(&stream, "{}", json!({"ok": true, "data": data})).expect("reply");
            asked.push(req["command"].as_str().unwrap_or("?").to_string());
        }
        asked
    });
    let out = box1.director(&[
        "--socket",
        sock.to_str().expect("UTF-8"),
        "boot-check",
        "--timeout",
        "30",
    ]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        text(&out.stdout).contains("boot is good: VRRP instance ext heard 3 adverts from the peer (state BACKUP, master 198.18.1.2)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(server.join().expect("server thread"), ["status", "vrrp"]);
}
