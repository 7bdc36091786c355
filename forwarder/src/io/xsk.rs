//! AF_XDP sockets: the receive side of the datapath when the XDP program is attached.
//!
//! The XDP program (`bpf/director.bpf.c`) hands the frames the engine owns — service
//! traffic to a VIP, NAT replies, traffic to a FULLNAT local address, ICMP errors about
//! them — to an AF_XDP socket of the worker that owns the receive queue, before the
//! kernel builds its own copy of the frame (so the stack never sees, and never has to drop,
//! what the datapath forwards); everything else goes on to the kernel unchanged.
//!
//! Each worker has one UMEM (a locked area of fixed-size chunks) shared by all its sockets
//! (`XDP_SHARED_UMEM`): one socket per (interface, receive queue) it owns, each with its own
//! fill and completion rings. Frames are received into chunks the worker put on a fill
//! ring, processed in place by the engine, sent by the worker's AF_PACKET transmit batch
//! (iovecs pointing into the chunk; the kernel copies them into its skb), and put back on a
//! fill ring once the batch is flushed. Nothing is allocated per frame.
//!
//! The rings are single-producer single-consumer arrays shared with the kernel: the
//! producer writes descriptors, then publishes its index with release ordering; the
//! consumer reads the index with acquire ordering, then the descriptors.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_PGOFF_RX_RING: i64 = 0;
const XDP_UMEM_PGOFF_FILL_RING: i64 = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: i64 = 0x1_8000_0000;
const XDP_SHARED_UMEM: u16 = 1 << 0;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;

/// Bytes per UMEM chunk. A frame must fit in a chunk after the kernel's reserved headroom
/// (`XDP_PACKET_HEADROOM`, 256 bytes), so 4096 takes any frame up to 3840 bytes.
pub const CHUNK_SIZE: u32 = 4096;
/// The kernel's headroom before a received frame in its chunk.
pub const XDP_PACKET_HEADROOM: u32 = 256;
/// The largest frame a chunk holds.
pub const MAX_FRAME: u32 = CHUNK_SIZE - XDP_PACKET_HEADROOM;

#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// `struct xdp_desc`: one received frame.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// `struct xdp_statistics`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames dropped for other reasons than a full ring.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because the receive ring was full (the worker fell behind).
    pub rx_ring_full: u64,
    /// Frames dropped because the fill ring had no free chunk.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl XskStats {
    /// Frames the kernel could not hand to the worker.
    pub fn drops(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full + self.rx_fill_ring_empty_descs
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the given size for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A mapped ring of `T` shared with the kernel.
struct Ring<T> {
    map: NonNull<u8>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    desc: NonNull<T>,
    mask: u32,
    size: u32,
    /// Our copy of the index we own (producer of a producer ring, consumer of a consumer
    /// ring) and the last seen value of the other one.
    local: u32,
    cached: u32,
}

impl<T> Ring<T> {
    fn map(fd: RawFd, off: &RingOffset, size: u32, pgoff: i64) -> io::Result<Ring<T>> {
        let map_len = off.desc as usize + size as usize * size_of::<T>();
        // SAFETY: mapping the ring the kernel allocated for this socket at `pgoff`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p.cast::<u8>()).expect("mmap never returns null on success");
        // SAFETY: the kernel's offsets lie inside the mapping (it sized it from them).
        let (producer, consumer, desc) = unsafe {
            (
                map.add(off.producer as usize).cast::<AtomicU32>(),
                map.add(off.consumer as usize).cast::<AtomicU32>(),
                map.add(off.desc as usize).cast::<T>(),
            )
        };
        Ok(Ring {
            map,
            map_len,
            producer,
            consumer,
            desc,
            mask: size - 1,
            size,
            local: 0,
            cached: 0,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the index lives in the mapping for as long as the ring.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { self.consumer.as_ref() }
    }

    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: idx & mask < size, inside the descriptor array.
        unsafe { self.desc.as_ptr().add((idx & self.mask) as usize) }
    }

    /// Producer side: free slots.
    fn free(&mut self) -> u32 {
        self.cached = self.consumer().load(Ordering::Acquire);
        self.size - self.local.wrapping_sub(self.cached)
    }

    /// Producer side: write `v` into the next slot (the caller checked `free`).
    fn put(&mut self, v: T) {
        // SAFETY: the slot is ours until the producer index is published.
        unsafe { self.slot(self.local).write(v) };
        self.local = self.local.wrapping_add(1);
    }

    fn publish(&self) {
        self.producer().store(self.local, Ordering::Release);
    }

    /// Consumer side: entries ready to read.
    fn ready(&mut self) -> u32 {
        self.cached = self.producer().load(Ordering::Acquire);
        self.cached.wrapping_sub(self.local)
    }

    /// Consumer side: take the next entry (the caller checked `ready`).
    fn take(&mut self) -> T
    where
        T: Copy,
    {
        // SAFETY: the kernel published this slot before the producer index we read.
        let v = unsafe { self.slot(self.local).read() };
        self.local = self.local.wrapping_add(1);
        v
    }

    fn release(&self) {
        self.consumer().store(self.local, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// A worker's packet buffer area: `chunks` chunks of [`CHUNK_SIZE`] bytes.
pub struct Umem {
    area: NonNull<u8>,
    len: usize,
    /// Chunks not on any fill ring and not holding a frame being processed.
    free: Vec<u64>,
}

// SAFETY: the area is owned by this worker alone; moving it to another thread is fine.
unsafe impl Send for Umem {}

impl Umem {
    pub fn new(chunks: u32) -> io::Result<Umem> {
        let len = chunks as usize * CHUNK_SIZE as usize;
        // SAFETY: anonymous private mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let area = NonNull::new(p.cast::<u8>()).expect("mmap never returns null on success");
        let free = (0..u64::from(chunks))
            .rev()
            .map(|i| i * u64::from(CHUNK_SIZE))
            .collect();
        Ok(Umem { area, len, free })
    }

    /// The frame at `addr` (as the kernel gave it in a receive descriptor), `len` bytes.
    ///
    /// # Safety
    /// `addr..addr + len` must be a frame the kernel handed over and that has not been put
    /// back on a fill ring; the returned slice must not outlive that.
    pub unsafe fn frame<'a>(&self, addr: u64, len: u32) -> &'a mut [u8] {
        debug_assert!(addr as usize + len as usize <= self.len);
        // SAFETY: per the caller's promise the bytes are ours and inside the area.
        unsafe {
            std::slice::from_raw_parts_mut(self.area.as_ptr().add(addr as usize), len as usize)
        }
    }

    /// Give a chunk back (any address inside it).
    pub fn recycle(&mut self, addr: u64) {
        self.free.push(addr & !u64::from(CHUNK_SIZE - 1));
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped; the sockets using it are gone first
        // (Xsk holds no pointer into it, and the kernel keeps its own page references).
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}

/// How a socket was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskMode {
    ZeroCopy,
    Copy,
}

/// One AF_XDP socket on (interface, queue), receive only.
pub struct Xsk {
    fd: OwnedFd,
    rx: Ring<XdpDesc>,
    fill: Ring<u64>,
    /// Needed by the kernel even though nothing is sent on this socket.
    _comp: Ring<u64>,
    pub ifindex: u32,
    pub queue: u32,
    pub mode: XskMode,
}

// SAFETY: the rings are owned by this socket alone; moving it to another thread is fine.
unsafe impl Send for Xsk {}

/// Ring sizes: the receive ring holds a burst; the fill ring as many chunks.
pub const RX_RING: u32 = 2048;
pub const FILL_RING: u32 = 2048;
const COMP_RING: u32 = 64;

impl Xsk {
    /// Open a socket on (`ifindex`, `queue`). The first socket of a UMEM registers it;
    /// the others (`shared = Some(first)`) share it.
    pub fn open(umem: &Umem, ifindex: u32, queue: u32, shared: Option<&Xsk>) -> io::Result<Xsk> {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = cvt(unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        if shared.is_none() {
            let reg = UmemReg {
                addr: umem.area.as_ptr() as u64,
                len: umem.len as u64,
                chunk_size: CHUNK_SIZE,
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(raw, XDP_UMEM_REG, &reg)?;
        }
        setsockopt(raw, XDP_UMEM_FILL_RING, &FILL_RING)?;
        setsockopt(raw, XDP_UMEM_COMPLETION_RING, &COMP_RING)?;
        setsockopt(raw, XDP_RX_RING, &RX_RING)?;
        let mut off = MmapOffsets::default();
        let mut optlen = size_of::<MmapOffsets>() as libc::socklen_t;
        // SAFETY: off is a valid out-buffer of optlen bytes.
        cvt(unsafe {
            libc::getsockopt(
                raw,
                SOL_XDP,
                XDP_MMAP_OFFSETS,
                (&mut off as *mut MmapOffsets).cast(),
                &mut optlen,
            )
        })?;
        let rx = Ring::map(raw, &off.rx, RX_RING, XDP_PGOFF_RX_RING)?;
        let fill = Ring::map(raw, &off.fr, FILL_RING, XDP_UMEM_PGOFF_FILL_RING)?;
        let comp = Ring::map(raw, &off.cr, COMP_RING, XDP_UMEM_PGOFF_COMPLETION_RING)?;
        let bind = |flags: u16| {
            let sxdp = SockaddrXdp {
                family: AF_XDP as u16,
                flags: flags | shared.map_or(0, |_| XDP_SHARED_UMEM),
                ifindex,
                queue_id: queue,
                shared_umem_fd: shared.map_or(0, |s| s.fd.as_raw_fd() as u32),
            };
            // SAFETY: sxdp is a valid sockaddr_xdp for the duration of the call.
            cvt(unsafe {
                libc::bind(
                    raw,
                    (&sxdp as *const SockaddrXdp).cast(),
                    size_of::<SockaddrXdp>() as libc::socklen_t,
                )
            })
        };
        // Zero-copy where the driver can; copy mode (veth, most virtual devices) otherwise.
        // A socket sharing a UMEM takes no mode flags: the kernel binds it in the mode the
        // UMEM's first socket got, where the device allows.
        let mode = if let Some(first) = shared {
            bind(0)?;
            first.mode
        } else {
            match bind(XDP_ZEROCOPY) {
                Ok(_) => XskMode::ZeroCopy,
                Err(_) => {
                    bind(XDP_COPY)?;
                    XskMode::Copy
                }
            }
        };
        Ok(Xsk {
            fd,
            rx,
            fill,
            _comp: comp,
            ifindex,
            queue,
            mode,
        })
    }

    /// Put free chunks on the fill ring, as many as fit (at most `max`).
    pub fn refill(&mut self, umem: &mut Umem, max: u32) {
        let n = self.fill.free().min(max).min(umem.free.len() as u32);
        for _ in 0..n {
            let addr = umem.free.pop().expect("counted above");
            self.fill.put(addr);
        }
        if n > 0 {
            self.fill.publish();
        }
    }

    /// Frames waiting in the receive ring (at most `max`), taken off the ring into `out`.
    /// The caller owns their chunks until it recycles them.
    pub fn receive(&mut self, out: &mut Vec<XdpDesc>, max: u32) -> usize {
        let n = self.rx.ready().min(max);
        for _ in 0..n {
            out.push(self.rx.take());
        }
        if n > 0 {
            self.rx.release();
        }
        n as usize
    }

    pub fn stats(&self) -> io::Result<XskStats> {
        // SAFETY: plain old data; zero is valid.
        let mut st: XskStats = unsafe { zeroed() };
        let mut len = size_of::<XskStats>() as libc::socklen_t;
        // SAFETY: st is a valid out-buffer of `len` bytes.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_XDP,
                XDP_STATISTICS,
                (&mut st as *mut XskStats).cast(),
                &mut len,
            )
        })?;
        Ok(st)
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_layouts() {
        assert_eq!(size_of::<UmemReg>(), 32);
        assert_eq!(size_of::<MmapOffsets>(), 128);
        assert_eq!(size_of::<SockaddrXdp>(), 16);
        assert_eq!(size_of::<XdpDesc>(), 16);
        assert_eq!(size_of::<XskStats>(), 48);
    }

    #[test]
    fn chunks_are_recycled_by_base() {
        let mut u = Umem::new(4).expect("anonymous mapping");
        assert_eq!(u.free.len(), 4);
        let a = u.free.pop().expect("four chunks");
        assert_eq!(a, 0);
        u.recycle(a + 256 + 60);
        assert_eq!(u.free.last(), Some(&0));
    }
}
