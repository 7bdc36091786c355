//! The appliance around the load balancer: the A/B root slots behind `director upgrade`,
//! `director boot-check` and `director slots` (GPT, ext4, systemd-boot entries with boot
//! counting, EFI variables). Nothing here knows the datapath, VRRP or sync; the CLI hands
//! `boot_check` a way to ask the daemon.

pub mod upgrade;
