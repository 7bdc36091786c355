//! AF_PACKET I/O: TPACKET_V3 receive rings (one per worker and interface, joined in a
//! PACKET_FANOUT group so the kernel spreads flows over workers) and a batched transmitter
//! (`sendmmsg`) whose iovecs point straight into the receive ring, so a forwarded frame is
//! rewritten in place and never copied in userspace.
//!
//! Every socket uses `PACKET_VNET_HDR`: the kernel puts a virtio-net header before each
//! received frame and reads one before each sent frame. That carries GSO super-frames
//! (a 64 KiB TCP burst from a local stack or a GRO'd burst from a NIC) and partial
//! checksums (CHECKSUM_PARTIAL on veth) through the datapath intact: the engine adjusts the
//! pseudo-header seed instead of the final checksum, and the egress device segments and
//! checksums as it would have for the original sender.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

const SOL_PACKET: libc::c_int = 263;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V2: libc::c_int = 1;
const PACKET_FANOUT_HASH: u32 = 0;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;

const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
/// The frame was longer than the ring slot and was truncated.
pub const TP_STATUS_COPY: u32 = 1 << 1;
/// The frame carries a VLAN tag that the device stripped into the header.
pub const TP_STATUS_VLAN_VALID: u32 = 1 << 4;

/// `struct virtio_net_hdr` (legacy, 10 bytes, host byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub const LEN: usize = 10;
    /// The L4 checksum is partial: the field holds the pseudo-header sum; the device fills
    /// in the rest from `csum_start`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksum was verified by the device or the kernel.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation (one datagram per segment).
    pub const GSO_UDP_L4: u8 = 5;
    /// `VIRTIO_NET_HDR_GSO_ECN`: a flag on the type (TCP with CWR to keep on the first
    /// segment only).
    pub const GSO_ECN: u8 = 0x80;

    pub fn needs_csum(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM != 0
    }

    pub fn data_valid(&self) -> bool {
        self.flags & Self::F_DATA_VALID != 0
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type != Self::GSO_NONE
    }

    /// The header to send with a frame: DATA_VALID is a receive-side hint only.
    pub fn for_transmit(mut self) -> VnetHdr {
        self.flags &= Self::F_NEEDS_CSUM;
        self
    }

    /// The header for the frame with `len` bytes inserted at offset `at`: offsets at or
    /// after the insert move with it (the checksum start, and the header length of a GSO
    /// frame unless the bytes go at its end, i.e. into the payload).
    pub fn with_insert(mut self, at: usize, len: usize) -> VnetHdr {
        let len = len as u16;
        if self.needs_csum() && at <= usize::from(self.csum_start) {
            self.csum_start += len;
        }
        if self.hdr_len != 0 && at < usize::from(self.hdr_len) {
            self.hdr_len += len;
        }
        self
    }
}

#[repr(C)]
struct TpacketReq {
    tp_block_size: u32,
    tp_block_nr: u32,
    tp_frame_size: u32,
    tp_frame_nr: u32,
}

/// `struct tpacket2_hdr`.
#[repr(C)]
struct Tpacket2Hdr {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_sec: u32,
    tp_nsec: u32,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
    tp_padding: [u8; 4],
}

#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    tp_packets: u32,
    tp_drops: u32,
}

/// Geometry of a receive ring.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Bytes per slot: a slot holds one frame up to about `frame_size - 90` bytes (after
    /// the ring's own header and the virtio-net header). A longer frame (a GSO super-frame)
    /// is marked `TP_STATUS_COPY` in its slot and read whole from the socket instead.
    pub frame_size: u32,
    pub frame_nr: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            frame_size: 2048,
            frame_nr: 4096,
        }
    }
}

/// Frames handed to one `drain_block` call at most (one transmit batch).
pub const RX_BATCH: usize = 256;
/// Frames too long for a slot that one batch can hold (each needs its own buffer until the
/// batch is flushed).
const BIG_FRAMES: usize = 4;
/// A whole GSO super-frame with its virtio-net header.
const BIG_FRAME_LEN: usize = VnetHdr::LEN + 65_536 + 64;
const PACKET_COPY_THRESH: libc::c_int = 7;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the given size for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned fd is owned below.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol.to_be()),
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_ll(ifindex: u32, protocol: u16, dst: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    if let Some(mac) = dst {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&mac);
    }
    sll
}

/// One received frame: in its ring slot, or (a frame too long for a slot) in one of the
/// ring's own buffers. Valid until the batch it came in is released.
pub struct RxFrame {
    data: NonNull<u8>,
    len: usize,
    vnet: VnetHdr,
    status: u32,
    truncated: bool,
}

impl RxFrame {
    pub fn status(&self) -> u32 {
        self.status
    }

    /// True when only part of the frame could be read.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The virtio-net header the kernel wrote before the frame.
    pub fn vnet(&self) -> VnetHdr {
        self.vnet
    }

    /// The frame from its Ethernet header, as many bytes as were captured.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: data..data+len lies inside an owned ring slot or buffer; the returned slice
        // borrows `self`, and no other reference to these bytes exists while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }
}

/// A TPACKET_V2 receive ring on one interface: one slot per frame, each handed to
/// userspace as soon as the kernel has written it (no block to fill or retire, so no
/// latency floor at low rates).
pub struct RxRing {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    cfg: RingConfig,
    /// The next slot to look at.
    next: usize,
    ifindex: u32,
    /// Buffers for frames longer than a slot, read with recvmsg; allocated once.
    big: Vec<Vec<u8>>,
}

// SAFETY: the mapping is owned by this ring alone; moving it to another thread is fine.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Open a ring on `ifindex`. With `fanout = Some(group)`, joins that PACKET_FANOUT_HASH
    /// group so that the rings of several workers share the interface's flows.
    pub fn open(ifindex: u32, cfg: RingConfig, fanout: Option<u16>) -> io::Result<RxRing> {
        let fd = packet_socket(ETH_P_ALL)?;
        let raw = fd.as_raw_fd();
        setsockopt(raw, SOL_PACKET, PACKET_VERSION, &TPACKET_V2)?;
        setsockopt(raw, SOL_PACKET, PACKET_VNET_HDR, &1 as &libc::c_int)?;
        setsockopt(raw, SOL_PACKET, PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)?;
        // A frame longer than a slot is queued whole on the socket (TP_STATUS_COPY in its
        // slot) as long as the receive buffer has room: room for a burst of them.
        setsockopt(raw, SOL_PACKET, PACKET_COPY_THRESH, &1 as &libc::c_int)?;
        let rcvbuf: libc::c_int = 16 << 20;
        if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf)?;
        }
        let block_size = cfg.frame_size * 64;
        let req = TpacketReq {
            tp_block_size: block_size,
            tp_block_nr: cfg.frame_nr.div_ceil(64),
            tp_frame_size: cfg.frame_size,
            tp_frame_nr: cfg.frame_nr.div_ceil(64) * 64,
        };
        let cfg = RingConfig {
            frame_nr: req.tp_frame_nr,
            ..cfg
        };
        setsockopt(raw, SOL_PACKET, PACKET_RX_RING, &req)?;
        let map_len = cfg.frame_size as usize * cfg.frame_nr as usize;
        // SAFETY: mapping the ring the kernel just allocated for this socket.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                raw,
                0,
            )
        };
        let map = if map == libc::MAP_FAILED {
            // MAP_LOCKED fails without CAP_IPC_LOCK or over RLIMIT_MEMLOCK; retry unlocked.
            // SAFETY: as above.
            let m = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    raw,
                    0,
                )
            };
            if m == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            m
        } else {
            map
        };
        let map = NonNull::new(map.cast::<u8>()).expect("mmap never returns null on success");
        let ring = RxRing {
            fd,
            map,
            map_len,
            cfg,
            next: 0,
            ifindex,
            big: (0..BIG_FRAMES).map(|_| vec![0; BIG_FRAME_LEN]).collect(),
        };
        let sll = sockaddr_ll(ifindex, ETH_P_ALL, None);
        // SAFETY: sll is a valid sockaddr_ll for the duration of the call.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        if let Some(group) = fanout {
            let arg: u32 = u32::from(group) | (PACKET_FANOUT_HASH << 16);
            setsockopt(raw, SOL_PACKET, PACKET_FANOUT, &arg)?;
        }
        Ok(ring)
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn slot(&self, i: usize) -> NonNull<Tpacket2Hdr> {
        // SAFETY: i < frame_nr, so the offset stays inside the mapping.
        unsafe { self.map.add(i * self.cfg.frame_size as usize).cast() }
    }

    fn slot_status(&self, i: usize) -> u32 {
        let h = self.slot(i).as_ptr();
        // SAFETY: reading a u32 the kernel writes; volatile because the kernel changes it.
        unsafe { std::ptr::addr_of!((*h).tp_status).read_volatile() }
    }

    /// True when the next slot holds a frame for userspace.
    pub fn ready(&self) -> bool {
        self.slot_status(self.next) & TP_STATUS_USER != 0
    }

    /// Process the frames waiting in the ring, at most [`RX_BATCH`]: `each` is called for
    /// every frame, then `done` (which must finish every use of the frames, e.g. flush a
    /// transmit batch that points into them), then their slots go back to the kernel.
    /// Returns the number of frames, or `None` when none was ready.
    pub fn drain_block<S>(
        &mut self,
        state: &mut S,
        mut each: impl FnMut(&mut S, &mut RxFrame),
        done: impl FnOnce(&mut S),
    ) -> Option<usize> {
        if !self.ready() {
            return None;
        }
        fence(Ordering::Acquire);
        let first = self.next;
        let mut n = 0;
        let mut big_used = 0;
        let frames = self.cfg.frame_nr as usize;
        while n < RX_BATCH.min(frames) {
            let i = (first + n) % frames;
            if self.slot_status(i) & TP_STATUS_USER == 0 {
                break;
            }
            fence(Ordering::Acquire);
            let hdr = self.slot(i);
            // SAFETY: userspace owns this slot until its status is set back to KERNEL.
            let (status, len, snaplen, mac) = unsafe {
                let h = hdr.as_ref();
                (h.tp_status, h.tp_len, h.tp_snaplen, h.tp_mac)
            };
            let mut frame = if status & TP_STATUS_COPY != 0 {
                if big_used == BIG_FRAMES {
                    break; // the rest waits for the next batch
                }
                let buf = &mut self.big[big_used];
                big_used += 1;
                // SAFETY: recv into an owned buffer of its length.
                let got = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    )
                };
                let got = usize::try_from(got).unwrap_or(0);
                if got >= VnetHdr::LEN {
                    // SAFETY: the kernel wrote at least the 10-byte header.
                    let vnet = unsafe { buf.as_ptr().cast::<VnetHdr>().read_unaligned() };
                    let have = got.min(buf.len()) - VnetHdr::LEN;
                    RxFrame {
                        // SAFETY: LEN < buf.len().
                        data: unsafe { NonNull::new_unchecked(buf.as_mut_ptr().add(VnetHdr::LEN)) },
                        len: have,
                        vnet,
                        status,
                        truncated: got > buf.len(),
                    }
                } else {
                    // The whole frame was not queued after all: what the slot has.
                    self.slot_frame(hdr, mac, snaplen, len, status)
                }
            } else {
                self.slot_frame(hdr, mac, snaplen, len, status)
            };
            each(state, &mut frame);
            n += 1;
        }
        done(state);
        fence(Ordering::Release);
        for k in 0..n {
            let h = self.slot((first + k) % frames).as_ptr();
            // SAFETY: handing the slot back; nothing references its frame any more.
            unsafe { std::ptr::addr_of_mut!((*h).tp_status).write_volatile(TP_STATUS_KERNEL) };
        }
        self.next = (first + n) % frames;
        Some(n)
    }

    fn slot_frame(
        &self,
        hdr: NonNull<Tpacket2Hdr>,
        mac: u16,
        snaplen: u32,
        len: u32,
        status: u32,
    ) -> RxFrame {
        let mac = usize::from(mac);
        // SAFETY: with PACKET_VNET_HDR the kernel reserves and fills 10 bytes right before
        // the MAC header (tp_mac is always at least the header + 16 bytes in), and the frame
        // lies inside the slot.
        unsafe {
            let base = hdr.as_ptr().cast::<u8>();
            RxFrame {
                data: NonNull::new_unchecked(base.add(mac)),
                len: snaplen as usize,
                vnet: base
                    .add(mac - VnetHdr::LEN)
                    .cast::<VnetHdr>()
                    .read_unaligned(),
                status,
                truncated: snaplen < len,
            }
        }
    }

    /// (frames received, frames dropped because the ring was full) since the last call.
    pub fn take_stats(&self) -> io::Result<(u32, u32)> {
        let mut st = TpacketStats::default();
        let mut len = size_of::<TpacketStats>() as libc::socklen_t;
        // SAFETY: st is a valid out-buffer of `len` bytes.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_STATISTICS,
                (&mut st as *mut TpacketStats).cast(),
                &mut len,
            )
        })?;
        Ok((st.tp_packets, st.tp_drops))
    }
}

impl AsRawFd for RxRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped; no frame outlives the ring.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// Frames queued for one `sendmmsg`. Holds raw pointers into receive-ring blocks: the
/// caller flushes before it releases the block (see [`RxRing::drain_block`]).
///
/// Three kinds of message: a received frame as it is (`push`: vnet header + frame), a
/// received frame with bytes spliced in (`push_insert`: vnet header + frame[..at] + the
/// bytes, kept in the slot + frame[at..]), and a frame the engine built (`push_copy`, also
/// the [`FrameOut`](crate::engine::FrameOut) of a worker: copied into the slot's own
/// buffer, which is allocated on first use and reused, so the steady state allocates
/// nothing).
pub struct TxBatch {
    fd: OwnedFd,
    vnet: Vec<VnetHdr>,
    addrs: Vec<libc::sockaddr_ll>,
    iovs: Vec<[libc::iovec; 4]>,
    inserts: Vec<[u8; INSERT_MAX]>,
    owned: Vec<Vec<u8>>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
    /// Frames the kernel refused (device down, too big) or that still could not be sent
    /// after [`TX_WAIT_LIMIT`] of waiting; counted, never retried further.
    pub errors: u64,
    pub sent: u64,
    /// Times a full socket buffer or device queue made the batch wait and retry.
    pub waits: u64,
}

/// How long a flush waits, in all, for a full socket buffer or device queue to drain
/// before it gives a frame up (and counts it in `errors`).
pub const TX_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_millis(50);
/// The transmit socket's buffer: room for a ring's worth of GSO super-frames in flight.
const TX_SNDBUF: libc::c_int = 32 << 20;

// SAFETY: the raw pointers are only dereferenced by the kernel during flush(), on the thread
// that owns the batch.
unsafe impl Send for TxBatch {}

impl TxBatch {
    pub fn new(capacity: usize) -> io::Result<TxBatch> {
        // Protocol 0: this socket only sends; it receives nothing.
        let fd = packet_socket(0)?;
        setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_VNET_HDR,
            &1 as &libc::c_int,
        )?;
        setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_QDISC_BYPASS,
            &1 as &libc::c_int,
        )?;
        // A GSO super-frame is 64 KiB of buffer: the default (about 200 KiB) holds three,
        // and a full buffer is EAGAIN.
        if setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &TX_SNDBUF,
        )
        .is_err()
        {
            setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &TX_SNDBUF,
            )?;
        }
        Ok(TxBatch::with_fd(fd, capacity))
    }

    fn with_fd(fd: OwnedFd, capacity: usize) -> TxBatch {
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        TxBatch {
            fd,
            vnet: vec![VnetHdr::default(); capacity],
            addrs: vec![sockaddr_ll(0, ETH_P_IP, None); capacity],
            iovs: vec![[empty_iov; 4]; capacity],
            inserts: vec![[0; INSERT_MAX]; capacity],
            owned: vec![Vec::new(); capacity],
            // SAFETY: mmsghdr is plain old data; zero is a valid (empty) value.
            msgs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            len: 0,
            errors: 0,
            sent: 0,
            waits: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next free slot, flushing first when the batch is full.
    fn slot(&mut self) -> usize {
        if self.len == self.msgs.len() {
            self.flush();
        }
        self.len
    }

    /// Completes slot `i` (its first `iovlen` iovecs filled) for `ifindex`.
    fn commit(&mut self, i: usize, ifindex: u32, iovlen: usize) {
        self.addrs[i].sll_ifindex = ifindex as i32;
        self.iovs[i][0] = libc::iovec {
            iov_base: (&mut self.vnet[i] as *mut VnetHdr).cast(),
            iov_len: VnetHdr::LEN,
        };
        let m = &mut self.msgs[i].msg_hdr;
        m.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_ll).cast();
        m.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        m.msg_iov = self.iovs[i].as_mut_ptr();
        m.msg_iovlen = iovlen;
        self.len += 1;
    }

    /// Queue `frame` for `ifindex`. Flushes first when the batch is full.
    pub fn push(&mut self, frame: &mut [u8], vnet: VnetHdr, ifindex: u32) {
        let i = self.slot();
        self.vnet[i] = vnet.for_transmit();
        self.iovs[i][1] = iovec(frame);
        self.commit(i, ifindex, 2);
    }

    /// Queue `frame` for `ifindex` with `bytes` (at most 32) inserted before offset `at`,
    /// without copying the frame. The vnet header's offsets move with the insert
    /// ([`VnetHdr::with_insert`]).
    pub fn push_insert(
        &mut self,
        frame: &mut [u8],
        vnet: VnetHdr,
        ifindex: u32,
        at: usize,
        bytes: &[u8],
    ) {
        let at = at.min(frame.len());
        let n = bytes.len().min(INSERT_MAX);
        let i = self.slot();
        self.vnet[i] = vnet.for_transmit().with_insert(at, n);
        self.inserts[i][..n].copy_from_slice(&bytes[..n]);
        let (head, tail) = frame.split_at_mut(at);
        self.iovs[i][1] = iovec(head);
        self.iovs[i][2] = iovec(&mut self.inserts[i][..n]);
        self.iovs[i][3] = iovec(tail);
        self.commit(i, ifindex, 4);
    }

    /// Queue a copy of `frame` for `ifindex`, with a plain vnet header: the frame is
    /// complete (checksums filled in, no segmentation wanted).
    pub fn push_copy(&mut self, frame: &[u8], ifindex: u32) {
        let i = self.slot();
        self.vnet[i] = VnetHdr::default();
        let buf = &mut self.owned[i];
        buf.clear();
        buf.extend_from_slice(frame);
        self.iovs[i][1] = iovec(&mut self.owned[i][..]);
        self.commit(i, ifindex, 2);
    }

    /// Send everything queued. A full socket buffer (`EAGAIN`) or device queue
    /// (`ENOBUFS`) makes the batch wait and retry, counted in `waits`, for at most
    /// [`TX_WAIT_LIMIT`] in all; a frame the kernel rejects otherwise is counted in `errors`
    /// and skipped. Nothing is dropped without a count.
    pub fn flush(&mut self) {
        let mut start = 0;
        let mut waited: Option<std::time::Instant> = None;
        while start < self.len {
            // SAFETY: msgs[start..len] point at live headers, addresses and frames (the
            // caller keeps the ring blocks owned until this returns).
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    self.msgs.as_mut_ptr().add(start),
                    (self.len - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                self.sent += n as u64;
                start += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    let since = *waited.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() < TX_WAIT_LIMIT {
                        self.waits += 1;
                        self.wait_writable(err.raw_os_error() == Some(libc::EAGAIN));
                        continue;
                    }
                }
                _ => {}
            }
            // The first frame failed for good: count it and go on with the rest.
            self.errors += 1;
            start += 1;
        }
        self.len = 0;
    }

    /// Wait for room: `POLLOUT` when the socket buffer was full; a device queue that was
    /// full gives no readiness to wait for, so yield the CPU to whoever drains it.
    fn wait_writable(&self, socket_full: bool) {
        if socket_full {
            let _ = nix::poll::poll(
                &mut [nix::poll::PollFd::new(
                    self.fd.as_fd(),
                    nix::poll::PollFlags::POLLOUT,
                )],
                1u8,
            );
        } else {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
}

impl crate::engine::FrameOut for TxBatch {
    fn emit(&mut self, ifindex: u32, frame: &[u8]) {
        self.push_copy(frame, ifindex);
    }
}

/// The most bytes [`TxBatch::push_insert`] splices in.
const INSERT_MAX: usize = crate::engine::Insert::MAX;

fn iovec(b: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    }
}

/// Wait until one of `fds` is readable or `timeout_ms` passes.
pub fn wait_readable(
    fds: &[RawFd],
    pollfds: &mut Vec<libc::pollfd>,
    timeout_ms: i32,
) -> io::Result<()> {
    pollfds.clear();
    pollfds.extend(fds.iter().map(|&fd| libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLERR,
        revents: 0,
    }));
    // SAFETY: pollfds is a valid array of pollfd of the given length.
    let r = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_layouts() {
        assert_eq!(size_of::<VnetHdr>(), VnetHdr::LEN);
        assert_eq!(size_of::<TpacketReq>(), 16);
        assert_eq!(size_of::<Tpacket2Hdr>(), 32);
        assert_eq!(std::mem::offset_of!(Tpacket2Hdr, tp_mac), 12);
        assert_eq!(std::mem::offset_of!(Tpacket2Hdr, tp_vlan_tci), 24);
    }

    #[test]
    fn transmit_header_drops_receive_hints() {
        let h = VnetHdr {
            flags: VnetHdr::F_DATA_VALID | VnetHdr::F_NEEDS_CSUM,
            ..Default::default()
        };
        assert_eq!(h.for_transmit().flags, VnetHdr::F_NEEDS_CSUM);
    }

    #[test]
    fn insert_moves_the_offsets_behind_it() {
        // A partial TCP checksum of a GSO frame: Ethernet 14 + IPv4 20 + TCP 32.
        let h = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: 1,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        // An outer IPv4 header after the Ethernet header: everything moves.
        let outer = h.with_insert(14, 20);
        assert_eq!((outer.csum_start, outer.hdr_len), (54, 86));
        assert_eq!((outer.csum_offset, outer.gso_size), (16, 1448));
        // A PROXY header at the start of the payload: payload, not header.
        let proxy = h.with_insert(66, 28);
        assert_eq!((proxy.csum_start, proxy.hdr_len), (34, 66));
        // Without a partial checksum csum_start means nothing and stays.
        let plain = VnetHdr::default().with_insert(14, 20);
        assert_eq!(plain, VnetHdr::default());
    }

    #[test]
    fn slots_reuse_their_buffers() {
        // The slots are filled without a socket; nothing is flushed.
        let null = std::fs::File::open("/dev/null").expect("/dev/null exists");
        let mut tx = TxBatch::with_fd(null.into(), 2);
        tx.push_copy(&[1; 100], 0);
        let before = tx.owned[0].as_ptr();
        tx.len = 0; // as after a flush
        tx.push_copy(&[2; 60], 0);
        assert_eq!(tx.owned[0].as_ptr(), before);
        assert_eq!(tx.iovs[0][1].iov_len, 60);
        let mut frame = [7u8; 54];
        tx.push_insert(&mut frame, VnetHdr::default(), 0, 14, &[9; 20]);
        let lens: Vec<usize> = tx.iovs[1].iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, [VnetHdr::LEN, 14, 20, 40]);
        assert_eq!(tx.msgs[1].msg_hdr.msg_iovlen, 4);
        tx.len = 0;
    }
}
