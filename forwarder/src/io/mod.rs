//! The datapath's side effects: AF_PACKET rings, netlink, nftables, worker threads.

pub mod afpacket;
pub mod bpf;
pub mod datapath;
pub mod ethtool;
pub mod fastpath;
pub mod netlink;
pub mod nft;
pub mod xdp;
pub mod xsk;
