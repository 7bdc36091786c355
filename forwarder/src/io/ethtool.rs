//! The two ethtool settings the datapath touches: GRO on or off (generic XDP runs after
//! GRO, so the merged frames would not fit an AF_XDP socket's buffers).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x0000_002b;
const ETHTOOL_SGRO: u32 = 0x0000_002c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` for `SIOCETHTOOL`: the interface name and a pointer to the command's
/// own structure (`ethtool_value`, `ethtool_drvinfo`, ...), which starts with its command.
#[repr(C)]
struct Ifreq<T> {
    name: [u8; libc::IFNAMSIZ],
    data: *mut T,
    _pad: [u8; 16],
}

/// One `SIOCETHTOOL` request on interface `name`; `data` is the command's structure, read
/// and written by the kernel.
fn request<T>(name: &str, data: &mut T) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = Ifreq {
        name: [0; libc::IFNAMSIZ],
        data,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: req is a valid ifreq whose data points at a live, writable command structure.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req as *mut Ifreq<T>) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ethtool(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    request(name, &mut value)?;
    Ok(value.data)
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo`: only the command and the driver's name are read.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 160],
}

/// The name of the interface's driver (`ethtool -i NAME`), e.g. "veth".
pub fn driver(name: &str) -> io::Result<String> {
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    request(name, &mut info)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether GRO is on (`ethtool -k NAME | grep generic-receive-offload`).
pub fn gro(name: &str) -> io::Result<bool> {
    ethtool(name, ETHTOOL_GGRO, 0).map(|v| v != 0)
}

/// Turn GRO on or off (`ethtool -K NAME gro on|off`).
pub fn set_gro(name: &str, on: bool) -> io::Result<()> {
    ethtool(name, ETHTOOL_SGRO, u32::from(on)).map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<super::Ifreq<super::EthtoolValue>>(), 40);
        assert_eq!(std::mem::size_of::<super::DrvInfo>(), 196);
    }
}
