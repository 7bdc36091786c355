//! A/B root slots: `director upgrade`, `director boot-check` and `director slots`.
//!
//! The disk (GPT) holds an ESP, two root slots `root-a` and `root-b`, and `config`; the
//! running slot is `director.slot=` on the kernel command line. An upgrade writes the other
//! slot, installs that slot's kernel on the ESP and adds a systemd-boot entry with boot
//! counting, `director-<GEN>-<SLOT>+<TRIES>.conf`. systemd-boot boots the highest GEN that is
//! not bad; on that boot `boot-check` must see the daemon and its peer before
//! `boot-complete.target`, or its unit fails and the box reboots, and once the tries are used
//! up the previous entry boots again.
//!
//! The pure parts (GPT and ext4 superblock parsing, entry names, systemd-boot's order, the
//! boot-check verdict) are plain functions with unit tests. The side effects are in
//! [`upgrade`], [`reboot`], [`boot_check`] and [`slots`]; every path they touch comes from
//! [`Paths`], so tests point them at temporary files.

use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// systemd-boot's vendor GUID for its EFI variables (the Boot Loader Interface).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Set by systemd-boot when the booted entry has a boot counter: that entry's path on the
/// ESP, as it was named when it was booted.
pub const BOOT_COUNT_VAR: &str = "LoaderBootCountPath";
/// Set by systemd-boot: the id of the entry it booted.
pub const ENTRY_SELECTED_VAR: &str = "LoaderEntrySelected";

/// The kernel, initramfs, kernel options template and version inside every root slot.
pub const SLOT_KERNEL: &str = "/usr/lib/director/boot/vmlinuz";
pub const SLOT_INITRD: &str = "/usr/lib/director/boot/initrd.img";
pub const SLOT_OPTIONS: &str = "/usr/lib/director/boot/options";
pub const SLOT_VERSION: &str = "/usr/lib/director/image-version";
/// The placeholder in the options template that becomes the slot (`a` or `b`).
pub const SLOT_PLACEHOLDER: &str = "@SLOT@";

/// The appliance's paths, the defaults of [`Paths`].
pub const DEFAULT_CMDLINE: &str = "/proc/cmdline";
pub const DEFAULT_PARTLABEL_DIR: &str = "/dev/disk/by-partlabel";
pub const DEFAULT_ESP: &str = "/efi";
pub const DEFAULT_EFIVARS: &str = "/sys/firmware/efi/efivars";
pub const DEFAULT_IMAGE_VERSION: &str = SLOT_VERSION;
pub const DEFAULT_REBOOT: &str = "systemctl reboot";

/// The GPT partition a build's disk image carries its root filesystem in.
pub const IMAGE_ROOT_PARTITION: &str = "root-a";

const SECTOR: u64 = 512;
const COPY_BLOCK: usize = 1 << 20;

/// A root slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The GPT partition name of the slot: `root-a`, `root-b`.
    pub fn partlabel(self) -> String {
        format!("root-{self}")
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every file and command the slot commands touch; [`Default`] is the appliance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The kernel command line.
    pub cmdline: PathBuf,
    /// Where udev links partitions by GPT name.
    pub by_partlabel: PathBuf,
    /// The mounted ESP.
    pub esp: PathBuf,
    /// efivarfs.
    pub efivars: PathBuf,
    /// The running image's version file.
    pub image_version: PathBuf,
    /// The command that reboots the box, program first.
    pub reboot: Vec<String>,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            cmdline: DEFAULT_CMDLINE.into(),
            by_partlabel: DEFAULT_PARTLABEL_DIR.into(),
            esp: DEFAULT_ESP.into(),
            efivars: DEFAULT_EFIVARS.into(),
            image_version: DEFAULT_IMAGE_VERSION.into(),
            reboot: DEFAULT_REBOOT
                .split_whitespace()
                .map(String::from)
                .collect(),
        }
    }
}

impl Paths {
    /// The block device of a slot, `/dev/disk/by-partlabel/root-b`.
    pub fn slot_device(&self, slot: Slot) -> PathBuf {
        self.by_partlabel.join(slot.partlabel())
    }

    /// The Boot Loader Specification entries on the ESP.
    pub fn entries_dir(&self) -> PathBuf {
        self.esp.join("loader").join("entries")
    }

    /// Where a slot's kernel and initramfs live on the ESP.
    pub fn esp_slot_dir(&self, slot: Slot) -> PathBuf {
        self.esp.join(format!("slot-{slot}"))
    }

    fn efi_var(&self, name: &str) -> PathBuf {
        self.efivars.join(format!("{name}-{LOADER_GUID}"))
    }

    /// An ESP path as systemd-boot writes it (`\loader\entries\x.conf`) under [`Paths::esp`].
    fn esp_file(&self, loader_path: &str) -> PathBuf {
        self.esp
            .join(loader_path.trim_start_matches('\\').replace('\\', "/"))
    }
}

// --- the kernel command line ---

/// The slot named by `director.slot=` on a kernel command line (the last one counts, as
/// for any kernel parameter).
pub fn running_slot(cmdline: &str) -> Result<Slot, String> {
    let value = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("director.slot="))
        .next_back()
        .ok_or("no director.slot= on the kernel command line")?;
    Slot::parse(value).ok_or_else(|| format!("director.slot={value} is neither a nor b"))
}

// --- images: GPT disk or bare ext4 ---

/// What an image file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A whole disk image: "EFI PART" at byte 512.
    GptDisk,
    /// A bare root filesystem: the ext4 magic at byte 1080.
    Ext4,
}

impl ImageKind {
    pub fn describe(self) -> &'static str {
        match self {
            ImageKind::GptDisk => "GPT disk image",
            ImageKind::Ext4 => "ext4 root filesystem",
        }
    }
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// neither a GPT disk image nor an ext4 filesystem
    #[error("neither a GPT disk image (\"EFI PART\" at byte 512) nor an ext4 filesystem (magic 0xEF53 at byte 1080)")]
    Unknown,
    /// the GPT is damaged
    #[error("damaged GPT: {0}")]
    BadGpt(String),
    /// no partition of that name
    #[error("the GPT has no partition named {name:?} (it has: {have})")]
    NoPartition { name: String, have: String },
    /// the partition holds something else
    #[error("partition {0:?} holds no ext4 filesystem")]
    NotExt4(String),
    /// the ext4 superblock is damaged
    #[error("damaged ext4 superblock: {0}")]
    BadExt4(String),
    /// the image ends before what it describes
    #[error("truncated: {what} ends at byte {end}, the image has {len} bytes")]
    Truncated { what: String, end: u64, len: u64 },
    /// reading failed
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// GPT field offsets (UEFI 2.10 §5.3.2 header, §5.3.3 partition entry).
mod gpt_field {
    use std::ops::Range;
    pub const SIGNATURE: Range<usize> = 0..8;
    pub const HEADER_SIZE: Range<usize> = 12..16;
    pub const HEADER_CRC: Range<usize> = 16..20;
    pub const ENTRIES_LBA: Range<usize> = 72..80;
    pub const ENTRY_COUNT: Range<usize> = 80..84;
    pub const ENTRY_SIZE: Range<usize> = 84..88;
    pub const ENTRIES_CRC: Range<usize> = 88..92;
    pub const HEADER_MIN: usize = 92;

    pub const TYPE_GUID: Range<usize> = 0..16;
    pub const FIRST_LBA: Range<usize> = 32..40;
    pub const LAST_LBA: Range<usize> = 40..48;
    pub const NAME: Range<usize> = 56..128;
    pub const ENTRY_MIN: usize = 128;
}

/// ext4 superblock field offsets, from the start of the superblock (byte 1024).
mod ext4_field {
    use std::ops::Range;
    pub const BLOCKS_LO: Range<usize> = 0x04..0x08;
    pub const LOG_BLOCK_SIZE: Range<usize> = 0x18..0x1C;
    pub const MAGIC: Range<usize> = 0x38..0x3A;
    pub const INCOMPAT: Range<usize> = 0x60..0x64;
    pub const BLOCKS_HI: Range<usize> = 0x150..0x154;
    pub const LEN: usize = 1024;
    pub const INCOMPAT_64BIT: u32 = 0x80;
}

pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
pub const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_SUPERBLOCK: u64 = 1024;

fn le16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_le_bytes(b[r].try_into().expect("a 2-byte field"))
}

fn le32(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_le_bytes(b[r].try_into().expect("a 4-byte field"))
}

fn le64(b: &[u8], r: Range<usize>) -> u64 {
    u64::from_le_bytes(b[r].try_into().expect("an 8-byte field"))
}

/// CRC-32 (IEEE 802.3, reflected), the checksum of the GPT header and entry array.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The checked GPT header (LBA 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptHeader {
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl GptHeader {
    /// Parses the header sector and checks its signature, size and CRC.
    pub fn parse(sector: &[u8]) -> Result<GptHeader, ImageError> {
        use gpt_field::*;
        if sector.len() < HEADER_MIN || sector[SIGNATURE] != GPT_SIGNATURE[..] {
            return Err(ImageError::Unknown);
        }
        let size = le32(sector, HEADER_SIZE) as usize;
        if !(HEADER_MIN..=sector.len()).contains(&size) {
            return Err(ImageError::BadGpt(format!("header size {size}")));
        }
        let mut header = sector[..size].to_vec();
        header[HEADER_CRC].fill(0);
        if crc32(&header) != le32(sector, HEADER_CRC) {
            return Err(ImageError::BadGpt("header checksum mismatch".into()));
        }
        let h = GptHeader {
            entries_lba: le64(sector, ENTRIES_LBA),
            entry_count: le32(sector, ENTRY_COUNT),
            entry_size: le32(sector, ENTRY_SIZE),
            entries_crc: le32(sector, ENTRIES_CRC),
        };
        if (h.entry_size as usize) < ENTRY_MIN || h.entry_size & 7 != 0 {
            return Err(ImageError::BadGpt(format!("entry size {}", h.entry_size)));
        }
        if h.entries_len() > 1 << 20 {
            return Err(ImageError::BadGpt(format!(
                "{} entries of {} bytes",
                h.entry_count, h.entry_size
            )));
        }
        Ok(h)
    }

    /// The size of the partition entry array.
    pub fn entries_len(&self) -> usize {
        self.entry_count as usize * self.entry_size as usize
    }
}

/// A used GPT partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptPartition {
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl GptPartition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// The used entries of a partition entry array, checked against the header's CRC.
pub fn gpt_partitions(h: &GptHeader, entries: &[u8]) -> Result<Vec<GptPartition>, ImageError> {
    use gpt_field::*;
    let entries = entries
        .get(..h.entries_len())
        .ok_or_else(|| ImageError::BadGpt("short partition entry array".into()))?;
    if crc32(entries) != h.entries_crc {
        return Err(ImageError::BadGpt(
            "partition entry checksum mismatch".into(),
        ));
    }
    let mut parts = Vec::new();
    for e in entries.chunks_exact(h.entry_size as usize) {
        if e[TYPE_GUID].iter().all(|&b| b == 0) {
            continue;
        }
        let units: Vec<u16> = e[NAME]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let p = GptPartition {
            name: String::from_utf16_lossy(&units),
            first_lba: le64(e, FIRST_LBA),
            last_lba: le64(e, LAST_LBA),
        };
        if p.last_lba < p.first_lba || p.last_lba.checked_mul(SECTOR).is_none() {
            return Err(ImageError::BadGpt(format!(
                "partition {:?} spans LBA {}..={}",
                p.name, p.first_lba, p.last_lba
            )));
        }
        parts.push(p);
    }
    Ok(parts)
}

/// What the first 2048 bytes of an image say it is.
pub fn detect(head: &[u8]) -> Option<ImageKind> {
    if head.get(512..520) == Some(&GPT_SIGNATURE[..]) {
        Some(ImageKind::GptDisk)
    } else if head.len() >= 2048 && is_ext4(&head[1024..2048]) {
        Some(ImageKind::Ext4)
    } else {
        None
    }
}

/// Whether a superblock carries the ext4 magic.
pub fn is_ext4(superblock: &[u8]) -> bool {
    superblock.len() >= ext4_field::LEN && le16(superblock, ext4_field::MAGIC) == EXT4_MAGIC
}

/// The size in bytes of the ext4 filesystem whose superblock this is.
pub fn ext4_size(superblock: &[u8]) -> Result<u64, ImageError> {
    use ext4_field::*;
    if !is_ext4(superblock) {
        return Err(ImageError::BadExt4("no ext4 magic".into()));
    }
    let log = le32(superblock, LOG_BLOCK_SIZE);
    if log > 6 {
        return Err(ImageError::BadExt4(format!("block size 1024 << {log}")));
    }
    let mut blocks = u64::from(le32(superblock, BLOCKS_LO));
    if le32(superblock, INCOMPAT) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(superblock, BLOCKS_HI)) << 32;
    }
    blocks
        .checked_mul(1024 << log)
        .filter(|&n| n > 0)
        .ok_or_else(|| ImageError::BadExt4(format!("{blocks} blocks")))
}

/// Where an image's root filesystem lies: the byte range that goes into a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootImage {
    pub kind: ImageKind,
    pub offset: u64,
    pub len: u64,
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Finds the root filesystem in an image: partition `root-a` of a GPT disk image, or the
/// whole of a bare ext4 image (as long as its superblock says).
pub fn locate_root<R: Read + Seek>(r: &mut R) -> Result<RootImage, ImageError> {
    let total = r.seek(SeekFrom::End(0))?;
    if total < 2048 {
        return Err(ImageError::Unknown);
    }
    let head = read_at(r, 0, 2048)?;
    let within = |what: &str, end: u64| {
        if end <= total {
            Ok(())
        } else {
            Err(ImageError::Truncated {
                what: what.to_string(),
                end,
                len: total,
            })
        }
    };
    match detect(&head).ok_or(ImageError::Unknown)? {
        ImageKind::GptDisk => {
            let h = GptHeader::parse(&head[512..1024])?;
            let start = h
                .entries_lba
                .checked_mul(SECTOR)
                .ok_or_else(|| ImageError::BadGpt(format!("entries at LBA {}", h.entries_lba)))?;
            within("the GPT partition entries", start + h.entries_len() as u64)?;
            let entries = read_at(r, start, h.entries_len())?;
            let parts = gpt_partitions(&h, &entries)?;
            let p = parts
                .iter()
                .find(|p| p.name == IMAGE_ROOT_PARTITION)
                .ok_or_else(|| ImageError::NoPartition {
                    name: IMAGE_ROOT_PARTITION.into(),
                    have: parts
                        .iter()
                        .map(|p| format!("{:?}", p.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            within(
                &format!("partition {IMAGE_ROOT_PARTITION}"),
                p.offset() + p.bytes(),
            )?;
            if p.bytes() < 2048
                || !is_ext4(&read_at(r, p.offset() + EXT4_SUPERBLOCK, ext4_field::LEN)?)
            {
                return Err(ImageError::NotExt4(IMAGE_ROOT_PARTITION.into()));
            }
            Ok(RootImage {
                kind: ImageKind::GptDisk,
                offset: p.offset(),
                len: p.bytes(),
            })
        }
        ImageKind::Ext4 => {
            let len = ext4_size(&head[1024..2048])?;
            within("the ext4 filesystem", len)?;
            Ok(RootImage {
                kind: ImageKind::Ext4,
                offset: 0,
                len,
            })
        }
    }
}

// --- boot entries ---

/// A boot counter: tries left, tries done (`+LEFT-DONE` in the file name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tries {
    pub left: u32,
    pub done: u32,
}

/// The name of one of our boot entries: `director-<GEN>-<SLOT>[+<LEFT>[-<DONE>]].conf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryName {
    pub gen: u64,
    pub slot: Slot,
    /// `None`: no counter, the entry is good.
    pub tries: Option<Tries>,
}

fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl EntryName {
    /// Parses a file name of `loader/entries`; `None` for anything that is not ours.
    pub fn parse(file: &str) -> Option<EntryName> {
        let stem = file.strip_prefix("director-")?.strip_suffix(".conf")?;
        let (id, counter) = match stem.split_once('+') {
            Some((id, counter)) => (id, Some(counter)),
            None => (stem, None),
        };
        let (gen, slot) = id.split_once('-')?;
        let tries = match counter {
            None => None,
            Some(c) => {
                let (left, done) = c.split_once('-').unwrap_or((c, "0"));
                Some(Tries {
                    left: digits(left)?,
                    done: digits(done)?,
                })
            }
        };
        Some(EntryName {
            gen: digits(gen)?,
            slot: Slot::parse(slot)?,
            tries,
        })
    }

    /// The entry's id in systemd-boot: the name without the counter.
    pub fn id(&self) -> String {
        format!("director-{}-{}", self.gen, self.slot)
    }

    pub fn file_name(&self) -> String {
        match self.tries {
            None => format!("{}.conf", self.id()),
            Some(Tries { left, done: 0 }) => format!("{}+{left}.conf", self.id()),
            Some(Tries { left, done }) => format!("{}+{left}-{done}.conf", self.id()),
        }
    }

    /// No tries left: systemd-boot puts it last.
    pub fn is_bad(&self) -> bool {
        self.tries.is_some_and(|t| t.left == 0)
    }
}

/// systemd-boot 252's order (`boot_entry_compare`, entries without `sort-key`): entries with
/// no tries left last; then by id in descending version order, which for
/// `director-<GEN>-<SLOT>` is GEN, then slot, descending; between counted entries with the
/// same id, more tries left first, then fewer tries done. The first one boots.
pub fn boot_order(a: &EntryName, b: &EntryName) -> Ordering {
    a.is_bad()
        .cmp(&b.is_bad())
        .then(b.gen.cmp(&a.gen))
        .then(b.slot.cmp(&a.slot))
        .then_with(|| match (a.tries, b.tries) {
            (Some(x), Some(y)) => y.left.cmp(&x.left).then(x.done.cmp(&y.done)),
            _ => Ordering::Equal,
        })
}

/// The GEN of a new entry: one above every existing one, so it boots first.
pub fn next_gen<'a>(entries: impl IntoIterator<Item = &'a EntryName>) -> u64 {
    entries.into_iter().map(|e| e.gen).max().unwrap_or(0) + 1
}

/// A boot entry's text (Boot Loader Specification type 1).
pub fn entry_body(gen: u64, slot: Slot, image_version: &str, options_template: &str) -> String {
    format!(
        "title Director {image_version} (slot {slot})\n\
         version {gen}\n\
         linux /slot-{slot}/vmlinuz\n\
         initrd /slot-{slot}/initrd.img\n\
         options {}\n",
        options_template.replace(SLOT_PLACEHOLDER, slot.as_str())
    )
}

/// Our entries in `loader/entries`, in boot order, with their file names.
pub fn read_entries(dir: &Path) -> io::Result<Vec<(String, EntryName)>> {
    let mut entries = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(name) = e.file_name().to_str() {
            if let Some(parsed) = EntryName::parse(name) {
                entries.push((name.to_string(), parsed));
            }
        }
    }
    entries.sort_by(|a, b| boot_order(&a.1, &b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(entries)
}

// --- EFI variables ---

/// The string in an efivarfs file: 4 bytes of attributes, then UTF-16LE up to a NUL.
pub fn decode_efi_string(raw: &[u8]) -> Option<String> {
    let data = raw.get(4..)?;
    if data.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// A string variable of systemd-boot; `None` if it is not set.
pub fn read_loader_var(paths: &Paths, name: &str) -> io::Result<Option<String>> {
    let path = paths.efi_var(name);
    match fs::read(&path) {
        Ok(raw) => decode_efi_string(&raw).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a UTF-16 string variable", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

// --- upgrade ---

/// An upgrade step failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {}: {cause}", path.display())]
pub struct StepError {
    pub step: &'static str,
    pub path: PathBuf,
    pub cause: String,
}

fn at<E: fmt::Display>(step: &'static str, path: &Path) -> impl FnOnce(E) -> StepError {
    let path = path.to_path_buf();
    move |e| StepError {
        step,
        path,
        cause: e.to_string(),
    }
}

/// What an upgrade did.
#[derive(Clone, Debug)]
pub struct Upgraded {
    pub running: Slot,
    pub target: Slot,
    pub image: PathBuf,
    pub root: RootImage,
    pub device: PathBuf,
    pub sha256: String,
    pub version: String,
    pub removed: Vec<String>,
    pub entry: PathBuf,
    pub gen: u64,
    pub tries: u32,
}

impl Upgraded {
    pub fn to_json(&self) -> Value {
        json!({
            "running": self.running.as_str(),
            "target": self.target.as_str(),
            "image": self.image,
            "image_kind": match self.root.kind { ImageKind::GptDisk => "gpt", ImageKind::Ext4 => "ext4" },
            "offset": self.root.offset,
            "bytes": self.root.len,
            "device": self.device,
            "sha256": self.sha256,
            "version": self.version,
            "removed_entries": self.removed,
            "entry": self.entry,
            "gen": self.gen,
            "tries": self.tries,
        })
    }
}

/// A size for people: bytes below 1 MiB, MiB above.
fn size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else {
        mib(bytes)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `path` whole or not at all: a temporary name that no boot loader reads, fsync,
/// rename, fsync of the directory. Written by hand, not `fs::copy`, which sets permission
/// bits and so fails on a FAT ESP mounted with a umask.
fn replace_file(path: &Path, from: &mut dyn Read) -> io::Result<u64> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.new"));
    let mut f = File::create(&tmp)?;
    let n = io::copy(from, &mut f)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    Ok(n)
}

/// A private directory under the temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("director-{tag}-{}-{nanos}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `debugfs -R "dump -p FILE OUT" DEVICE`: a file out of an ext4 filesystem without
/// mounting it. debugfs exits 0 even when it fails, so the output file is the proof.
pub fn debugfs_dump(device: &Path, file: &str, out: &Path) -> Result<(), String> {
    let request = format!("dump -p \"{file}\" \"{}\"", out.display());
    let run = Command::new("debugfs")
        .arg("-R")
        .arg(&request)
        .arg(device)
        .output()
        .map_err(|e| format!("cannot run debugfs (e2fsprogs): {e}"))?;
    if run.status.success() && out.is_file() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&run.stderr);
    let why: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    Err(format!(
        "debugfs cannot dump {file}: {}",
        if why.is_empty() {
            "no output".to_string()
        } else {
            why.join("; ")
        }
    ))
}

/// The first line of a small text file, trimmed; an error if there is none.
fn first_line(path: &Path) -> Result<String, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        Err("empty".into())
    } else {
        Ok(line.to_string())
    }
}

/// Whether two open files are the same file or device.
fn same_file(a: &File, b: &File) -> io::Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()) || (a.rdev() != 0 && a.rdev() == b.rdev()))
}

/// Copies the root filesystem into the slot, fsyncs, drops the slot's cached pages and reads
/// it back: the SHA-256 of what was read from the image must equal that of the slot.
fn copy_verified(
    src: &mut File,
    image: &Path,
    root: &RootImage,
    dst: &mut File,
    device: &Path,
    progress: &mut dyn Write,
) -> Result<String, StepError> {
    let mut buf = vec![0u8; COPY_BLOCK];
    let mut written = Sha256::new();
    src.seek(SeekFrom::Start(root.offset))
        .map_err(at("copy: read the image", image))?;
    dst.seek(SeekFrom::Start(0))
        .map_err(at("copy: write the slot", device))?;
    let (mut done, mut reported) = (0u64, 0u64);
    while done < root.len {
        let n = (root.len - done).min(COPY_BLOCK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(at("copy: read the image", image))?;
        written.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(at("copy: write the slot", device))?;
        done += n as u64;
        let tenths = done * 10 / root.len;
        if tenths > reported {
            reported = tenths;
            // Progress is a courtesy: a closed stderr must not stop a half-written slot.
            let _ = writeln!(
                progress,
                "copying: {:>3}% ({} of {})",
                tenths * 10,
                mib(done),
                mib(root.len)
            );
        }
    }
    dst.sync_all().map_err(at("copy: fsync the slot", device))?;
    // SAFETY: the descriptor is open for the whole call; the advice only drops clean cached
    // pages so that the read back below comes from the device.
    unsafe {
        libc::posix_fadvise(
            dst.as_raw_fd(),
            0,
            root.len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
    let mut read_back = Sha256::new();
    dst.seek(SeekFrom::Start(0))
        .map_err(at("verify: read the slot back", device))?;
    let mut left = root.len;
    while left > 0 {
        let n = left.min(COPY_BLOCK as u64) as usize;
        dst.read_exact(&mut buf[..n])
            .map_err(at("verify: read the slot back", device))?;
        read_back.update(&buf[..n]);
        left -= n as u64;
    }
    let (written, read_back) = (hex(&written.finalize()), hex(&read_back.finalize()));
    if written != read_back {
        return Err(at("verify", device)(format!(
            "the slot reads back as sha256 {read_back}, the image was {written}"
        )));
    }
    Ok(written)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `image` into the slot that is not running and makes it the next boot with
/// `tries` boot attempts. Steps, each named in its error:
///
/// 1. the running slot from the kernel command line; the target is the other one;
/// 2. the image: partition `root-a` of a GPT disk image, or a bare ext4 filesystem;
/// 3. the target slot's device, at least as large as the image's root filesystem;
/// 4. every boot entry of the target slot removed (a half-written slot must never boot);
/// 5. the copy, fsync, and a read back compared by SHA-256;
/// 6. kernel, initramfs, options and version taken out of the new slot with debugfs;
/// 7. kernel and initramfs installed on the ESP under `slot-<t>/`;
/// 8. the entry `director-<GEN>-<t>+<tries>.conf`, GEN above every existing entry.
///
/// `log` gets one line per step; `progress` the copy's progress. Rebooting is [`reboot`].
pub fn upgrade(
    paths: &Paths,
    image: &Path,
    tries: u32,
    log: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<Upgraded, StepError> {
    // Output is a courtesy: once slots are being changed, a closed stdout must not stop
    // the upgrade halfway.
    macro_rules! say {
        ($($arg:tt)*) => { let _ = writeln!(log, $($arg)*); };
    }

    let cmdline = fs::read_to_string(&paths.cmdline)
        .map_err(at("read the kernel command line", &paths.cmdline))?;
    let running = running_slot(&cmdline).map_err(at("find the running slot", &paths.cmdline))?;
    let target = running.other();

    let entries_dir = paths.entries_dir();
    let entries = read_entries(&entries_dir).map_err(at("read the boot entries", &entries_dir))?;

    let mut src = File::open(image).map_err(at("open the image", image))?;
    let root = locate_root(&mut src).map_err(at("read the image", image))?;

    let device = paths.slot_device(target);
    let mut dst = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device)
        .map_err(at("open the target slot", &device))?;
    if same_file(&src, &dst).map_err(at("open the target slot", &device))? {
        return Err(at("open the target slot", &device)(format!(
            "it is the image {} itself",
            image.display()
        )));
    }
    let capacity = dst
        .seek(SeekFrom::End(0))
        .map_err(at("check the target slot's size", &device))?;
    if capacity < root.len {
        return Err(at("check the target slot's size", &device)(format!(
            "the slot has {capacity} bytes ({}), the image's root filesystem needs {} ({})",
            mib(capacity),
            root.len,
            mib(root.len)
        )));
    }
    say!(
        "running slot {running}; writing slot {target} ({}) from {} ({}, {} at byte {})",
        device.display(),
        image.display(),
        root.kind.describe(),
        mib(root.len),
        root.offset
    );
    if let Ok(Some(counted)) = read_loader_var(paths, BOOT_COUNT_VAR) {
        if paths.esp_file(&counted).exists() {
            say!("warning: this boot ({counted}) is not confirmed good yet; slot {target} was its fallback");
        }
    }

    let gen = next_gen(entries.iter().map(|(_, e)| e));
    let mut removed = Vec::new();
    for (file, e) in &entries {
        if e.slot == target {
            let path = entries_dir.join(file);
            fs::remove_file(&path).map_err(at("remove the target slot's boot entries", &path))?;
            say!("removed boot entry {file}");
            removed.push(file.clone());
        }
    }
    sync_dir(&entries_dir).map_err(at("remove the target slot's boot entries", &entries_dir))?;

    let sha256 = copy_verified(&mut src, image, &root, &mut dst, &device, progress)?;
    drop(dst);
    say!(
        "wrote {} bytes to {}, read back: sha256 {sha256}",
        root.len,
        device.display()
    );

    let tmp =
        TempDir::new("upgrade").map_err(at("extract from the new slot", &std::env::temp_dir()))?;
    let [kernel, initrd, options, version] = [SLOT_KERNEL, SLOT_INITRD, SLOT_OPTIONS, SLOT_VERSION]
        .map(|inner| (inner, tmp.0.join(inner.rsplit('/').next().unwrap_or(inner))));
    for (inner, out) in [&kernel, &initrd, &options, &version] {
        debugfs_dump(&device, inner, out).map_err(at("extract from the new slot", &device))?;
    }
    let version = first_line(&version.1)
        .map_err(|e| at("read the new slot's version", &device)(format!("{SLOT_VERSION}: {e}")))?;
    let template = first_line(&options.1).map_err(|e| {
        at("read the new slot's kernel options", &device)(format!("{SLOT_OPTIONS}: {e}"))
    })?;
    if !template.contains(SLOT_PLACEHOLDER) {
        return Err(at("read the new slot's kernel options", &device)(format!(
            "{SLOT_OPTIONS} has no {SLOT_PLACEHOLDER} placeholder: {template:?}"
        )));
    }
    say!("new slot {target}: Director {version}");

    let slot_dir = paths.esp_slot_dir(target);
    fs::create_dir_all(&slot_dir).map_err(at("install the kernel", &slot_dir))?;
    sync_dir(&paths.esp).map_err(at("install the kernel", &paths.esp))?;
    for (from, name) in [(&kernel.1, "vmlinuz"), (&initrd.1, "initrd.img")] {
        let to = slot_dir.join(name);
        let n = File::open(from)
            .and_then(|mut f| replace_file(&to, &mut f))
            .map_err(at("install the kernel", &to))?;
        say!("installed {} ({})", to.display(), size(n));
    }

    let name = EntryName {
        gen,
        slot: target,
        tries: Some(Tries {
            left: tries,
            done: 0,
        }),
    };
    let entry = entries_dir.join(name.file_name());
    let body = entry_body(gen, target, &version, &template);
    replace_file(&entry, &mut body.as_bytes()).map_err(at("write the boot entry", &entry))?;
    say!(
        "boot entry {}: boots next, {tries} tries before falling back",
        entry.display()
    );

    Ok(Upgraded {
        running,
        target,
        image: image.to_path_buf(),
        root,
        device,
        sha256,
        version,
        removed,
        entry,
        gen,
        tries,
    })
}

/// Runs the reboot command.
pub fn reboot(paths: &Paths) -> Result<(), StepError> {
    let shown = PathBuf::from(paths.reboot.join(" "));
    let (program, args) = paths
        .reboot
        .split_first()
        .ok_or_else(|| at("reboot", &shown)("no reboot command"))?;
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(at("reboot", &shown))?;
    if status.success() {
        Ok(())
    } else {
        Err(at("reboot", &shown)(status))
    }
}

// --- boot-check ---

/// What the daemon's answers say about the peer, as `boot_check` needs it (the CLI reads it
/// from the control API's `status` and `vrrp` views).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSigns {
    /// No VRRP configured.
    pub standalone: bool,
    /// Each VRRP instance: name, state, the master it knows of, adverts received.
    pub instances: Vec<InstanceSigns>,
    /// The sync peer's state (`up`, `down`, `unknown`); `None` without sync.
    pub sync_peer: Option<String>,
}

/// One VRRP instance in [`PeerSigns`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceSigns {
    pub name: String,
    pub state: String,
    pub master: Option<String>,
    pub adverts_rx: u64,
}

/// Whether the daemon's answers show the peer: `Ok(what was seen)` or `Err(what is missing)`.
/// A VRRP instance that has received adverts, or the sync peer up, is the peer; a node with
/// neither VRRP nor sync configured has no peer to wait for.
pub fn peer_evidence(signs: &PeerSigns) -> Result<String, String> {
    if let Some(i) = signs.instances.iter().find(|i| i.adverts_rx > 0) {
        return Ok(format!(
            "VRRP instance {} heard {} adverts from the peer (state {}, master {})",
            i.name,
            i.adverts_rx,
            i.state,
            i.master.as_deref().unwrap_or("-")
        ));
    }
    if signs.sync_peer.as_deref() == Some("up") {
        return Ok("the sync peer is up".into());
    }
    if signs.standalone && signs.sync_peer.is_none() {
        return Ok(
            "the daemon answers; no VRRP and no sync configured, no peer to wait for".into(),
        );
    }
    let vrrp_part = if signs.standalone {
        "no VRRP configured"
    } else {
        "no VRRP advert heard from the peer"
    };
    let sync_part = match &signs.sync_peer {
        Some(peer) => format!("sync peer {peer}"),
        None => "no sync configured".to_string(),
    };
    Err(format!(
        "the daemon answers, but {vrrp_part} and {sync_part}"
    ))
}

/// The outcome of [`boot_check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootCheck {
    /// No boot counter on this boot: nothing to confirm.
    NotCounted,
    /// The daemon runs and sees its peer.
    Good(String),
    /// Timed out; the last reason.
    Failed(String),
}

/// On a counted boot, waits up to `timeout` for the daemon to answer and to see its peer,
/// asking once a second through `ask` (a control command's name → its answer, or why there is
/// none); `out` gets the EFI variable and each new reason.
pub fn boot_check(
    paths: &Paths,
    ask: &mut dyn FnMut() -> Result<PeerSigns, String>,
    timeout: Duration,
    out: &mut dyn Write,
) -> io::Result<BootCheck> {
    let Some(counted) = read_loader_var(paths, BOOT_COUNT_VAR)? else {
        writeln!(
            out,
            "not a counted boot (no {BOOT_COUNT_VAR} EFI variable): nothing to confirm"
        )?;
        return Ok(BootCheck::NotCounted);
    };
    writeln!(out, "counted boot: {BOOT_COUNT_VAR} = {counted}")?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let verdict = ask().and_then(|signs| peer_evidence(&signs));
        match verdict {
            Ok(seen) => {
                writeln!(out, "boot is good: {seen}")?;
                return Ok(BootCheck::Good(seen));
            }
            Err(reason) => {
                if reason != last {
                    writeln!(out, "waiting: {reason}")?;
                    last = reason;
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            writeln!(out, "boot is NOT good after {}s: {last}", timeout.as_secs())?;
            return Ok(BootCheck::Failed(last));
        }
        std::thread::sleep((deadline - now).min(Duration::from_secs(1)));
    }
}

// --- slots ---

fn entry_title(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("title "))
        .map(|t| t.trim().to_string())
}

/// The image version inside a slot's device, read with debugfs.
fn slot_version(device: &Path) -> Result<String, String> {
    if !device.exists() {
        return Err("no such device".into());
    }
    let tmp = TempDir::new("slots").map_err(|e| e.to_string())?;
    let out = tmp.0.join("image-version");
    debugfs_dump(device, SLOT_VERSION, &out)?;
    first_line(&out)
}

/// `director slots`: the running slot, both slots' versions, this boot's counter and every
/// boot entry in the order systemd-boot tries them.
pub fn slots(paths: &Paths) -> Result<Value, StepError> {
    let cmdline = fs::read_to_string(&paths.cmdline)
        .map_err(at("read the kernel command line", &paths.cmdline))?;
    let running = running_slot(&cmdline).ok();
    let entries_dir = paths.entries_dir();
    let entries = read_entries(&entries_dir).map_err(at("read the boot entries", &entries_dir))?;
    let counted = read_loader_var(paths, BOOT_COUNT_VAR)
        .map_err(at("read the EFI variables", &paths.efivars))?;
    let selected = read_loader_var(paths, ENTRY_SELECTED_VAR)
        .map_err(at("read the EFI variables", &paths.efivars))?;

    let slot_list: Vec<Value> = [Slot::A, Slot::B]
        .into_iter()
        .map(|s| {
            let device = paths.slot_device(s);
            let version = if Some(s) == running {
                first_line(&paths.image_version)
                    .map_err(|e| format!("{}: {e}", paths.image_version.display()))
            } else {
                slot_version(&device)
            };
            json!({
                "slot": s.as_str(),
                "device": device,
                "running": Some(s) == running,
                "version": version.as_ref().ok(),
                "error": version.as_ref().err(),
            })
        })
        .collect();
    let entry_list: Vec<Value> = entries
        .iter()
        .enumerate()
        .map(|(n, (file, e))| {
            json!({
                "file": file,
                "id": e.id(),
                "gen": e.gen,
                "slot": e.slot.as_str(),
                "title": entry_title(&entries_dir.join(file)),
                "tries_left": e.tries.map(|t| t.left),
                "tries_done": e.tries.map(|t| t.done),
                "good": e.tries.is_none(),
                "bad": e.is_bad(),
                "boots_next": n == 0,
            })
        })
        .collect();
    Ok(json!({
        "running": running.map(Slot::as_str),
        "slots": slot_list,
        "counted_boot": counted.as_ref().map(|p| json!({
            "path": p,
            "confirmed": !paths.esp_file(p).exists(),
        })),
        "booted_entry": selected,
        "next": entries.first().map(|(f, _)| f),
        "entries": entry_list,
    }))
}

/// The human table of [`slots`].
pub fn render_slots(v: &Value, out: &mut dyn Write) -> io::Result<()> {
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    writeln!(
        out,
        "running    slot {}",
        v["running"]
            .as_str()
            .unwrap_or("unknown (no director.slot= on the kernel command line)")
    )?;
    for slot in v["slots"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "slot {}     {}  {}{}",
            s(&slot["slot"]),
            s(&slot["device"]),
            slot["version"].as_str().map_or_else(
                || format!("? ({})", s(&slot["error"])),
                |v| format!("Director {v}")
            ),
            if slot["running"] == true {
                "  (running)"
            } else {
                ""
            }
        )?;
    }
    match v["counted_boot"].as_object() {
        None => writeln!(out, "this boot  not counted (no {BOOT_COUNT_VAR})")?,
        Some(c) => writeln!(
            out,
            "this boot  counted: {}, {}",
            c["path"].as_str().unwrap_or("?"),
            if c["confirmed"] == true {
                "confirmed good"
            } else {
                "NOT confirmed good yet"
            }
        )?,
    }
    if let Some(b) = v["booted_entry"].as_str() {
        writeln!(out, "booted     {b}")?;
    }
    let entries: Vec<&Value> = v["entries"].as_array().into_iter().flatten().collect();
    if entries.is_empty() {
        return writeln!(out, "no director-*.conf boot entries on the ESP");
    }
    let width = entries
        .iter()
        .map(|e| s(&e["file"]).len())
        .max()
        .unwrap_or(0)
        .max(5);
    writeln!(
        out,
        "  {:<width$}  {:>4}  {:<4}  {:<20}  Title",
        "Entry", "Gen", "Slot", "Tries"
    )?;
    for e in entries {
        let tries = match (e["tries_left"].as_u64(), e["tries_done"].as_u64()) {
            (Some(0), Some(d)) => format!("BAD (0 left, {d} done)"),
            (Some(l), Some(d)) => format!("{l} left, {d} done"),
            _ => "good".to_string(),
        };
        writeln!(
            out,
            "{} {:<width$}  {:>4}  {:<4}  {:<20}  {}",
            if e["boots_next"] == true { "*" } else { " " },
            s(&e["file"]),
            e["gen"].as_u64().unwrap_or(0),
            s(&e["slot"]),
            tries,
            s(&e["title"])
        )?;
    }
    writeln!(out, "(* boots next)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn running_slot_from_the_command_line() {
        let line = "BOOT_IMAGE=/x root=PARTLABEL=root-b rw director.slot=b console=ttyS0\n";
        assert_eq!(running_slot(line), Ok(Slot::B));
        assert_eq!(running_slot("director.slot=b director.slot=a"), Ok(Slot::A));
        assert!(running_slot("root=/dev/vda2 quiet").is_err());
        assert!(running_slot("director.slot=c")
            .unwrap_err()
            .contains("neither a nor b"));
        assert!(running_slot("xdirector.slot=a").is_err());
    }

    /// A GPT disk of `sectors` sectors with the partitions `(name, first, last)`, as sfdisk
    /// would write it (header at LBA 1, 128 entries of 128 bytes from LBA 2).
    fn gpt_disk(sectors: u64, parts: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut disk = vec![0u8; (sectors * SECTOR) as usize];
        let mut entries = vec![0u8; 128 * 128];
        for (n, (name, first, last)) in parts.iter().enumerate() {
            let e = &mut entries[n * 128..(n + 1) * 128];
            e[0..16].copy_from_slice(&[0x0F; 16]);
            e[16..32].copy_from_slice(&[n as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (i, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        let h = &mut disk[512..1024];
        h[0..8].copy_from_slice(GPT_SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk[1024..1024 + entries.len()].copy_from_slice(&entries);
        disk
    }

    /// An ext4 superblock (in a 2048-byte head) for `blocks` blocks of 1024 << log bytes.
    fn ext4_head(blocks: u32, log: u32) -> Vec<u8> {
        let mut head = vec![0u8; 2048];
        let sb = &mut head[1024..];
        sb[0x04..0x08].copy_from_slice(&blocks.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&log.to_le_bytes());
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        head
    }

    #[test]
    fn gpt_root_a_is_located_by_name() {
        let mut disk = gpt_disk(
            200,
            &[("esp", 34, 49), ("root-a", 50, 99), ("root-b", 100, 149)],
        );
        // root-a must hold an ext4 filesystem.
        let sb = ext4_head(25, 0);
        disk[50 * 512..50 * 512 + 2048].copy_from_slice(&sb);
        let root = locate_root(&mut Cursor::new(disk)).expect("a valid disk");
        assert_eq!(
            root,
            RootImage {
                kind: ImageKind::GptDisk,
                offset: 50 * 512,
                len: 50 * 512
            }
        );
    }

    #[test]
    fn gpt_partitions_lists_used_entries() {
        let disk = gpt_disk(100, &[("esp", 34, 49), ("root-a", 50, 99)]);
        let h = GptHeader::parse(&disk[512..1024]).expect("valid header");
        assert_eq!(h.entries_lba, 2);
        let parts = gpt_partitions(&h, &disk[1024..1024 + h.entries_len()]).expect("entries");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].name, "root-a");
        assert_eq!((parts[1].offset(), parts[1].bytes()), (50 * 512, 50 * 512));
    }

    #[test]
    fn gpt_damage_and_absence_are_refused() {
        let good = gpt_disk(200, &[("esp", 34, 49), ("root-b", 100, 149)]);
        let err = locate_root(&mut Cursor::new(good.clone())).unwrap_err();
        assert!(
            matches!(&err, ImageError::NoPartition { have, .. } if have == "\"esp\", \"root-b\"")
        );

        let mut bad_header = good.clone();
        bad_header[512 + 40] ^= 1;
        assert!(matches!(
            locate_root(&mut Cursor::new(bad_header)),
            Err(ImageError::BadGpt(m)) if m.contains("header checksum")
        ));

        let mut bad_entries = good.clone();
        bad_entries[1024 + 60] ^= 1;
        assert!(matches!(
            locate_root(&mut Cursor::new(bad_entries)),
            Err(ImageError::BadGpt(m)) if m.contains("entry checksum")
        ));

        // root-a present but not ext4.
        let no_fs = gpt_disk(200, &[("root-a", 50, 99)]);
        assert!(matches!(
            locate_root(&mut Cursor::new(no_fs)),
            Err(ImageError::NotExt4(_))
        ));

        // root-a past the end of the image.
        let mut short = gpt_disk(200, &[("root-a", 50, 399)]);
        short[50 * 512..50 * 512 + 2048].copy_from_slice(&ext4_head(175, 0));
        assert!(matches!(
            locate_root(&mut Cursor::new(short)),
            Err(ImageError::Truncated { end, len, .. }) if end == 400 * 512 && len == 200 * 512
        ));
    }

    #[test]
    fn bare_ext4_is_its_superblock_size() {
        let mut img = ext4_head(4, 2); // 4 blocks of 4 KiB
        img.resize(16384 + 100, 0);
        assert_eq!(
            locate_root(&mut Cursor::new(img)).expect("ext4"),
            RootImage {
                kind: ImageKind::Ext4,
                offset: 0,
                len: 16384
            }
        );
        let short = {
            let mut i = ext4_head(4, 2);
            i.resize(8192, 0);
            i
        };
        assert!(matches!(
            locate_root(&mut Cursor::new(short)),
            Err(ImageError::Truncated { .. })
        ));
        // 64-bit block counts.
        let mut sb = ext4_head(0, 2)[1024..].to_vec();
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext4_size(&sb).expect("valid"), (1u64 << 32) * 4096);
    }

    #[test]
    fn garbage_is_neither() {
        assert!(matches!(
            locate_root(&mut Cursor::new(vec![0x5A; 1 << 16])),
            Err(ImageError::Unknown)
        ));
        assert!(matches!(
            locate_root(&mut Cursor::new(vec![0; 100])),
            Err(ImageError::Unknown)
        ));
        assert_eq!(detect(&[0; 2048]), None);
    }

    #[test]
    fn entry_names_round_trip() {
        for (file, gen, slot, tries) in [
            ("director-1-a.conf", 1, Slot::A, None),
            ("director-2-b+3.conf", 2, Slot::B, Some((3, 0))),
            ("director-12-a+1-2.conf", 12, Slot::A, Some((1, 2))),
            ("director-7-b+0-3.conf", 7, Slot::B, Some((0, 3))),
        ] {
            let e = EntryName::parse(file).unwrap_or_else(|| panic!("{file}"));
            assert_eq!((e.gen, e.slot), (gen, slot), "{file}");
            assert_eq!(e.tries.map(|t| (t.left, t.done)), tries, "{file}");
            assert_eq!(e.file_name(), file);
        }
        assert_eq!(
            EntryName::parse("director-2-b+3-0.conf")
                .expect("valid")
                .file_name(),
            "director-2-b+3.conf"
        );
        for not_ours in [
            "director-1-c.conf",
            "director-x-a.conf",
            "director-1-a",
            "director--a.conf",
            "director-1-a+.conf",
            "director-1-a+3-.conf",
            "director-1-a+-1.conf",
            "debian-6.1.conf",
            "director-1-a.conf.new",
            ".director-1-a.conf.new",
        ] {
            assert_eq!(EntryName::parse(not_ours), None, "{not_ours}");
        }
    }

    fn order(files: &[&str]) -> Vec<String> {
        let mut e: Vec<EntryName> = files
            .iter()
            .map(|f| EntryName::parse(f).expect("valid"))
            .collect();
        e.sort_by(boot_order);
        e.iter().map(EntryName::file_name).collect()
    }

    #[test]
    fn systemd_boot_order() {
        // Highest GEN first, numerically (10 above 9).
        assert_eq!(
            order(&["director-9-a.conf", "director-10-b+3.conf"]),
            ["director-10-b+3.conf", "director-9-a.conf"]
        );
        // A bad entry (0 tries left) goes last, whatever its GEN.
        assert_eq!(
            order(&["director-3-b+0-3.conf", "director-2-a.conf"]),
            ["director-2-a.conf", "director-3-b+0-3.conf"]
        );
        // Counting down: still first while tries are left.
        assert_eq!(
            order(&["director-2-a.conf", "director-3-b+1-2.conf"]),
            ["director-3-b+1-2.conf", "director-2-a.conf"]
        );
        // Same id: more tries left first, then fewer done.
        assert_eq!(
            order(&["director-4-a+1-2.conf", "director-4-a+2-1.conf"]),
            ["director-4-a+2-1.conf", "director-4-a+1-2.conf"]
        );
        assert_eq!(
            order(&["director-4-a+2-3.conf", "director-4-a+2-1.conf"]),
            ["director-4-a+2-1.conf", "director-4-a+2-3.conf"]
        );
        // Same GEN (never written, but ordered as the ids are): b above a.
        assert_eq!(
            order(&["director-4-a.conf", "director-4-b.conf"]),
            ["director-4-b.conf", "director-4-a.conf"]
        );
    }

    #[test]
    fn next_gen_is_above_all() {
        assert_eq!(next_gen([]), 1);
        let e = [
            EntryName::parse("director-1-a.conf").expect("valid"),
            EntryName::parse("director-5-b+0-3.conf").expect("valid"),
        ];
        assert_eq!(next_gen(&e), 6);
    }

    #[test]
    fn entry_body_fills_the_slot() {
        assert_eq!(
            entry_body(
                4,
                Slot::B,
                "0.6.0+g1a2b3c4 2026-11-21",
                "root=PARTLABEL=root-@SLOT@ rw director.slot=@SLOT@ panic=10"
            ),
            "title Director 0.6.0+g1a2b3c4 2026-11-21 (slot b)\n\
             version 4\n\
             linux /slot-b/vmlinuz\n\
             initrd /slot-b/initrd.img\n\
             options root=PARTLABEL=root-b rw director.slot=b panic=10\n"
        );
    }

    #[test]
    fn efi_string_variables() {
        let mut raw = vec![0x06, 0, 0, 0];
        for u in "\\loader\\entries\\director-2-b+2-1.conf".encode_utf16() {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        raw.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode_efi_string(&raw).as_deref(),
            Some("\\loader\\entries\\director-2-b+2-1.conf")
        );
        assert_eq!(decode_efi_string(&[6, 0, 0]), None);
        assert_eq!(decode_efi_string(&[6, 0, 0, 0, 0x41]), None);
        assert_eq!(decode_efi_string(&[6, 0, 0, 0]).as_deref(), Some(""));
        let paths = Paths {
            esp: "/efi".into(),
            ..Paths::default()
        };
        assert_eq!(
            paths.esp_file("\\loader\\entries\\director-2-b+2-1.conf"),
            Path::new("/efi/loader/entries/director-2-b+2-1.conf")
        );
    }

    #[test]
    fn boot_check_verdicts() {
        let signs = |peer: Option<&str>, rx: u64| PeerSigns {
            standalone: false,
            instances: vec![
                InstanceSigns {
                    name: "ext".into(),
                    state: "BACKUP".into(),
                    master: Some("198.18.1.2".into()),
                    adverts_rx: 0,
                },
                InstanceSigns {
                    name: "int".into(),
                    state: "BACKUP".into(),
                    master: Some("198.18.2.2".into()),
                    adverts_rx: rx,
                },
            ],
            sync_peer: peer.map(String::from),
        };
        let seen = peer_evidence(&signs(Some("down"), 5)).expect("adverts heard");
        assert!(seen.contains("int heard 5 adverts"), "{seen}");
        let seen = peer_evidence(&signs(Some("up"), 0)).expect("sync peer up");
        assert!(seen.contains("sync peer is up"), "{seen}");
        let why = peer_evidence(&signs(Some("unknown"), 0)).unwrap_err();
        assert_eq!(
            why,
            "the daemon answers, but no VRRP advert heard from the peer and sync peer unknown"
        );
        let standalone = |peer: Option<&str>| PeerSigns {
            standalone: true,
            instances: Vec::new(),
            sync_peer: peer.map(String::from),
        };
        assert!(peer_evidence(&standalone(None))
            .expect("nothing to wait for")
            .contains("no peer to wait for"));
        assert_eq!(
            peer_evidence(&standalone(Some("down"))).unwrap_err(),
            "the daemon answers, but no VRRP configured and sync peer down"
        );
    }
}
