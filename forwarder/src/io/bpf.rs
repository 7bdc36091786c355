//! The few `bpf(2)` map commands the fast path needs on the raw file descriptor of a map
//! aya loaded: element lookup, update and delete from any thread (the kernel serialises
//! them), and the batch lookup that reads a whole per-CPU array in one call.

use std::io;
use std::os::fd::RawFd;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_ANY`: create or update.
pub const BPF_ANY: u64 = 0;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed; every pointer
    // in it points to a live buffer of the size the map's key and value sizes imply (the
    // callers check the lengths).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `value` ← the map's value for `key`; false when there is none.
pub fn lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = ElemAttr {
        map_fd: fd as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Create or replace `key` → `value`.
pub fn update(fd: RawFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut a = ElemAttr {
        map_fd: fd as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: BPF_ANY,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

/// Remove `key`; false when it was not there.
pub fn delete(fd: RawFd, key: &[u8]) -> io::Result<bool> {
    let mut a = ElemAttr {
        map_fd: fd as u32,
        key: key.as_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads up to `count` elements of an array map from index `start` in one call: their
/// keys into `keys` (u32 each) and values into `values` (value size × CPUs for a per-CPU
/// map). Returns how many were read.
pub fn lookup_batch(
    fd: RawFd,
    start: u32,
    count: u32,
    keys: &mut [u8],
    values: &mut [u8],
) -> io::Result<u32> {
    assert!(keys.len() >= count as usize * 4, "keys buffer too small");
    let mut in_batch = start;
    let mut out_batch = 0u32;
    let mut a = BatchAttr {
        in_batch: if start == 0 {
            0
        } else {
            (&mut in_batch as *mut u32) as u64
        },
        out_batch: (&mut out_batch as *mut u32) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: fd as u32,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut a) {
        Ok(_) => Ok(a.count),
        // ENOENT: the last batch, `count` says how many it held.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(a.count),
        Err(e) => Err(e),
    }
}

#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs the XDP program `prog_fd` once on `frame` as received on `ingress_ifindex`, queue
/// 0 (`BPF_PROG_TEST_RUN`): its return value and the frame as it left it.
pub fn xdp_test_run(
    prog_fd: RawFd,
    frame: &[u8],
    ingress_ifindex: u32,
) -> io::Result<(u32, Vec<u8>)> {
    // struct xdp_md: data, data_end (the frame's length), data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let mut md = [0u32; 6];
    md[1] = frame.len() as u32;
    md[3] = ingress_ifindex;
    let mut out = vec![0u8; frame.len() + 256];
    let mut a = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of_val(&md) as u32,
        ctx_in: md.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    out.truncate(a.data_size_out as usize);
    Ok((a.retval, out))
}

/// The CPUs a per-CPU map has a value for (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in s.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>(), b.parse::<usize>()),
            None => (part.parse::<usize>(), part.parse::<usize>()),
        };
        match (lo, hi) {
            (Ok(lo), Ok(hi)) if hi >= lo => n = n.max(hi + 1),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("cannot read the possible CPUs from {s:?}"),
                ))
            }
        }
    }
    Ok(n.max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn attr_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<super::ElemAttr>(), 32);
        assert_eq!(std::mem::size_of::<super::BatchAttr>(), 56);
    }

    #[test]
    fn this_machine_has_possible_cpus() {
        assert!(super::possible_cpus().expect("sysfs") >= 1);
    }
}
