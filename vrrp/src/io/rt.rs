//! Real-time scheduling and locked memory, so that adverts leave on time on a loaded box
//! (a late advert makes the backup take over). The daemon treats failure as a warning:
//! VRRP still works, with more jitter.

use std::io;

use super::cvt;

/// Puts the calling thread (only it, not the process) in `SCHED_FIFO` at `priority`
/// (1..=99; `chrt -f -p PRIORITY TID`). Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO`
/// allowance, and real-time runtime in the thread's cgroup.
pub fn set_realtime(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pthread_self() is the calling thread; `param` is live for the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        // pthread functions return the error number instead of setting errno.
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Locks the process's pages in memory once touched, now and in the future
/// (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`), so the driver never waits on a page
/// to come back from swap. `MCL_ONFAULT` (Linux 4.4) keeps untouched memory — thread stacks,
/// the connection table's unused capacity — from being faulted in just to be locked. Needs
/// `CAP_IPC_LOCK` or a large enough `RLIMIT_MEMLOCK`.
pub fn lock_memory() -> io::Result<()> {
    // SAFETY: mlockall(2) has no memory-safety preconditions.
    cvt(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) })
        .map(drop)
}
