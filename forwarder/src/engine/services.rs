//! The services as the engine runs them: [`ServiceTable`] indexes them for the per-packet
//! lookups of classification (VIP:port, VIPs, LIPs, NAT real servers); it is immutable and
//! replaced whole on reload, built from one [`ServiceSpec`] per service.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::fib::FastMap;
use crate::model::{Mode, Protocol, VirtualService};
use crate::sched::{Backend, Scheduler};
use crate::stats::RealSlot;

/// One virtual service as the engine runs it.
pub struct Service {
    /// Stable for the life of the service: connection entries and persistence templates
    /// name their service by it, so a reload that adds or removes other services leaves it.
    pub id: u16,
    pub config: VirtualService,
    pub sched: Scheduler,
    /// Persistence timeout in seconds, 0 = off.
    pub persistence: u32,
    /// NAT real servers no longer scheduled (removed by a reload, a failed health check or
    /// the operator) whose established flows still need their replies translated.
    pub retired: Vec<SocketAddrV4>,
}

/// How to build one service of a [`ServiceTable`].
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub id: u16,
    /// `reals` are the scheduler's backends, with the weights to use now.
    pub config: VirtualService,
    /// Counter slot of each of `config.reals`, in order.
    pub slots: Vec<RealSlot>,
    /// See [`Service::retired`].
    pub retired: Vec<SocketAddrV4>,
}

/// The services, indexed for the per-packet lookups. Immutable; replaced whole on reload.
pub struct ServiceTable {
    services: Vec<Service>,
    /// Service id → index into `services`.
    by_id: Vec<Option<u16>>,
    by_vip: FastMap<u64, u16>,
    vips: FastMap<u32, ()>,
    nat_reals: FastMap<u64, ()>,
    /// FULLNAT local addresses of every service.
    lips: FastMap<u32, ()>,
}

fn l4_key(addr: Ipv4Addr, port: u16, proto: u8) -> u64 {
    (u64::from(u32::from(addr)) << 24) | (u64::from(port) << 8) | u64::from(proto)
}

fn l4_unkey(k: u64) -> (Ipv4Addr, u16, u8) {
    (Ipv4Addr::from((k >> 24) as u32), (k >> 8) as u16, k as u8)
}

/// What the XDP program needs to tell the engine's frames from the kernel's (see
/// `io::xdp::Steering`): the addresses and ports the classification below looks up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteeringTable {
    pub vips: Vec<Ipv4Addr>,
    pub lips: Vec<Ipv4Addr>,
    /// (VIP, port, IP protocol) of every service.
    pub services: Vec<(Ipv4Addr, u16, u8)>,
    /// (real server, port, IP protocol) of every NAT real server, retired ones included.
    pub nat_reals: Vec<(Ipv4Addr, u16, u8)>,
}

impl ServiceTable {
    /// Index `services` with ids by position; real server `j` of service `i` uses counter
    /// slot `slots[i][j]`.
    pub fn new(services: Vec<VirtualService>, slots: &[Vec<RealSlot>]) -> ServiceTable {
        ServiceTable::build(
            services
                .into_iter()
                .enumerate()
                .map(|(i, config)| ServiceSpec {
                    id: u16::try_from(i).expect("at most 65536 services"),
                    config,
                    slots: slots[i].clone(),
                    retired: Vec::new(),
                })
                .collect(),
        )
    }

    /// Index services with the ids, slots and retired reals given. Ids must be unique.
    pub fn build(specs: Vec<ServiceSpec>) -> ServiceTable {
        let mut table = ServiceTable {
            services: Vec::with_capacity(specs.len()),
            by_id: Vec::new(),
            by_vip: FastMap::default(),
            vips: FastMap::default(),
            nat_reals: FastMap::default(),
            lips: FastMap::default(),
        };
        for (i, spec) in specs.into_iter().enumerate() {
            let ServiceSpec {
                id,
                config: svc,
                slots,
                retired,
            } = spec;
            let index = u16::try_from(i).expect("at most 65536 services");
            let backends = svc
                .reals
                .iter()
                .zip(&slots)
                .map(|(r, &slot)| Backend {
                    addr: r.addr,
                    weight: r.weight,
                    slot,
                })
                .collect();
            let proto = svc.protocol as u8;
            table
                .by_vip
                .insert(l4_key(*svc.vip.ip(), svc.vip.port(), proto), index);
            table.vips.insert(u32::from(*svc.vip.ip()), ());
            if svc.mode == Mode::FullNat {
                for lip in &svc.local_addresses {
                    table.lips.insert(u32::from(*lip), ());
                }
            }
            if svc.mode == Mode::Nat {
                for a in svc
                    .reals
                    .iter()
                    .map(|r| r.addr)
                    .chain(retired.iter().copied())
                {
                    table.nat_reals.insert(l4_key(*a.ip(), a.port(), proto), ());
                }
            }
            let at = usize::from(id);
            if table.by_id.len() <= at {
                table.by_id.resize(at + 1, None);
            }
            assert!(table.by_id[at].is_none(), "service id {id} used twice");
            table.by_id[at] = Some(index);
            table.services.push(Service {
                id,
                sched: Scheduler::new(svc.scheduler, backends),
                persistence: u32::try_from(svc.persistence.as_secs()).unwrap_or(u32::MAX),
                config: svc,
                retired,
            });
        }
        table
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The addresses and ports that make a frame the engine's (the lookups of
    /// classification), for the XDP program's maps.
    pub fn steering(&self) -> SteeringTable {
        let mut t = SteeringTable {
            vips: self.vips.keys().map(|&a| Ipv4Addr::from(a)).collect(),
            lips: self.lips.keys().map(|&a| Ipv4Addr::from(a)).collect(),
            services: self.by_vip.keys().map(|&k| l4_unkey(k)).collect(),
            nat_reals: self.nat_reals.keys().map(|&k| l4_unkey(k)).collect(),
        };
        t.vips.sort();
        t.lips.sort();
        t.services.sort();
        t.nat_reals.sort();
        t
    }

    /// The spec each service was built from, with the weights it runs now.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.services
            .iter()
            .map(|s| {
                let mut config = s.config.clone();
                config.reals = s
                    .sched
                    .backends()
                    .iter()
                    .map(|b| crate::model::RealServer {
                        addr: b.addr,
                        weight: b.weight,
                    })
                    .collect();
                ServiceSpec {
                    id: s.id,
                    config,
                    slots: s.sched.backends().iter().map(|b| b.slot).collect(),
                    retired: s.retired.clone(),
                }
            })
            .collect()
    }

    /// A new table with the weight of one real server changed (0 = quiesce: no new flows,
    /// existing ones finish). Ids, counter slots and everything else stay as they are.
    pub fn with_weight(
        &self,
        service: &str,
        real: SocketAddrV4,
        weight: u32,
    ) -> Result<ServiceTable, String> {
        let mut specs = self.specs();
        let spec = specs
            .iter_mut()
            .find(|s| s.config.name == service)
            .ok_or_else(|| format!("no service named {service:?}"))?;
        let r = spec
            .config
            .reals
            .iter_mut()
            .find(|r| r.addr == real)
            .ok_or_else(|| format!("service {service:?} has no real server {real}"))?;
        r.weight = weight;
        Ok(ServiceTable::build(specs))
    }

    /// The service with id `id`.
    pub fn get(&self, id: u16) -> Option<&Service> {
        let index = (*self.by_id.get(usize::from(id))?)?;
        self.services.get(usize::from(index))
    }

    /// The service of `vip` for `proto`.
    pub fn find(&self, proto: Protocol, vip: SocketAddrV4) -> Option<&Service> {
        self.lookup(*vip.ip(), vip.port(), proto as u8)
    }

    #[inline]
    pub(super) fn lookup(&self, vip: Ipv4Addr, port: u16, proto: u8) -> Option<&Service> {
        let id = *self.by_vip.get(&l4_key(vip, port, proto))?;
        self.services.get(usize::from(id))
    }

    #[inline]
    pub(super) fn is_vip(&self, addr: Ipv4Addr) -> bool {
        self.vips.contains_key(&u32::from(addr))
    }

    /// A FULLNAT local address (LIP) of some service.
    #[inline]
    pub fn is_lip(&self, addr: Ipv4Addr) -> bool {
        self.lips.contains_key(&u32::from(addr))
    }

    #[inline]
    pub(super) fn is_nat_real(&self, addr: Ipv4Addr, port: u16, proto: u8) -> bool {
        self.nat_reals.contains_key(&l4_key(addr, port, proto))
    }
}
