//! A simulated LAN for the VRRP state machine: nodes, each with a `Router`, exchange adverts
//! in virtual time through a segment with a delay, seeded loss and jitter, and partitions.
//! Everything a node does is recorded so tests can check it against the RFC.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use vrrp::instance::{Action, Cause, GarpPolicy, InstanceConfig, State, Time, Track};
use vrrp::router::{GroupConfig, Router};
use vrrp::wire::{Advert, Version};

pub const MS: Duration = Duration::from_millis(1);

pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, last))
}

/// An instance config for node address `.last`, with VIP 198.18.1.100.
pub fn config(name: &str, vrid: u8, last: u8, priority: u8, interval: Duration) -> InstanceConfig {
    InstanceConfig {
        name: name.to_owned(),
        version: Version::V3,
        vrid,
        priority,
        advert_interval: interval,
        vips: vec![ip(100 + vrid - 51)],
        primary: ip(last),
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept: true,
        garp: GarpPolicy::default(),
        tracks: vec![Track {
            name: "datapath".into(),
            weight: 0,
        }],
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Transition {
        instance: String,
        from: State,
        to: State,
        cause: Cause,
    },
    Advert {
        instance: String,
        priority: u8,
    },
    Garp {
        instance: String,
    },
    DualMaster {
        instance: String,
    },
    Uncorroborated {
        instance: String,
        from: IpAddr,
    },
    GroupHeld {
        instance: String,
        by: String,
    },
    Received {
        instance: String,
        from: IpAddr,
    },
}

pub struct Node {
    pub name: String,
    pub addr: IpAddr,
    pub router: Router,
    pub alive: bool,
    /// Per instance: whether the VIPs are on the interface.
    pub holds: Vec<bool>,
    pub log: Vec<(Time, Event)>,
    /// Partition side; nodes only hear nodes on the same side.
    pub side: u8,
}

impl Node {
    pub fn state(&self, instance: usize) -> State {
        self.router.instance(instance).state()
    }

    pub fn transitions(&self) -> Vec<(Time, String, State, State, Cause)> {
        self.log
            .iter()
            .filter_map(|(t, e)| match e {
                Event::Transition {
                    instance,
                    from,
                    to,
                    cause,
                } => Some((*t, instance.clone(), *from, *to, cause.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn first_garp_after(&self, after: Time) -> Option<Time> {
        self.log
            .iter()
            .find(|(t, e)| *t >= after && matches!(e, Event::Garp { .. }))
            .map(|(t, _)| *t)
    }

    pub fn last_advert_sent(&self) -> Option<Time> {
        self.log
            .iter()
            .rev()
            .find(|(_, e)| matches!(e, Event::Advert { .. }))
            .map(|(t, _)| *t)
    }
}

struct Delivery {
    to: usize,
    from: usize,
    advert: Advert,
}

/// xorshift64*: deterministic, seeded.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Lan {
    pub now: Time,
    pub nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    pending: Vec<Option<Delivery>>,
    seq: u64,
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
    rng: Rng,
}

impl Lan {
    pub fn new(seed: u64) -> Lan {
        Lan {
            now: Duration::ZERO,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            pending: Vec::new(),
            seq: 0,
            delay: Duration::from_micros(50),
            jitter: Duration::ZERO,
            loss: 0.0,
            rng: Rng::new(seed),
        }
    }

    /// Adds a node (not started).
    pub fn add(
        &mut self,
        name: &str,
        last: u8,
        instances: Vec<InstanceConfig>,
        groups: Vec<GroupConfig>,
    ) -> usize {
        let n = instances.len();
        self.nodes.push(Node {
            name: name.to_owned(),
            addr: ip(last),
            router: Router::new(instances, groups),
            alive: false,
            holds: vec![false; n],
            log: Vec::new(),
            side: 0,
        });
        self.nodes.len() - 1
    }

    pub fn start(&mut self, node: usize) {
        self.nodes[node].alive = true;
        let now = self.now;
        self.nodes[node].router.startup(now);
        self.flush(node);
    }

    /// Kills a node with no goodbye (SIGKILL, power loss).
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].alive = false;
        // A replacement process starts from scratch.
        let cfgs: Vec<InstanceConfig> = self.nodes[node]
            .router
            .instances()
            .iter()
            .map(|i| i.config().clone())
            .collect();
        let groups: Vec<GroupConfig> = (0..cfgs.len())
            .filter_map(|i| self.nodes[node].router.group_of(i).cloned())
            .fold(Vec::new(), |mut v, g| {
                if !v.contains(&g) {
                    v.push(g);
                }
                v
            });
        self.nodes[node].router = Router::new(cfgs, groups);
        self.nodes[node].holds.iter_mut().for_each(|h| *h = false);
    }

    /// A clean stop: the daemon shuts its instances down (a master resigns).
    pub fn stop(&mut self, node: usize) {
        let now = self.now;
        self.nodes[node].router.shutdown(now);
        self.flush(node);
        self.nodes[node].alive = false;
    }

    pub fn with<F: FnOnce(&mut Router, Time)>(&mut self, node: usize, f: F) {
        let now = self.now;
        f(&mut self.nodes[node].router, now);
        self.flush(node);
    }

    /// Runs the segment until `until`.
    pub fn run_until(&mut self, until: Time) {
        loop {
            let next_delivery = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.alive)
                .filter_map(|n| n.router.poll_timeout())
                .min();
            let next = match (next_delivery, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.now = next.max(self.now);
            if next_delivery == Some(next) {
                let Reverse((_, _, slot)) = self.queue.pop().expect("peeked");
                let d = self.pending[slot].take().expect("delivery");
                self.deliver(d);
            } else {
                for n in 0..self.nodes.len() {
                    if self.nodes[n].alive
                        && self.nodes[n]
                            .router
                            .poll_timeout()
                            .is_some_and(|t| t <= self.now)
                    {
                        let now = self.now;
                        self.nodes[n].router.handle_timeout(now);
                        self.flush(n);
                    }
                }
            }
        }
        self.now = until;
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn deliver(&mut self, d: Delivery) {
        if !self.nodes[d.to].alive || self.nodes[d.to].side != self.nodes[d.from].side {
            return;
        }
        let src = self.nodes[d.from].addr;
        let node = &mut self.nodes[d.to];
        let Some(index) = node
            .router
            .instances()
            .iter()
            .position(|i| i.config().vrid == d.advert.vrid)
        else {
            return;
        };
        let name = node.router.instance(index).name().to_owned();
        node.log.push((
            self.now,
            Event::Received {
                instance: name,
                from: src,
            },
        ));
        let now = self.now;
        node.router.handle_advert(now, index, src, &d.advert);
        self.flush(d.to);
    }

    /// Carries out a node's actions: adverts onto the segment, VIPs, gratuitous ARPs.
    fn flush(&mut self, n: usize) {
        while let Some((i, action)) = self.nodes[n].router.poll_action() {
            let name = self.nodes[n].router.instance(i).name().to_owned();
            let now = self.now;
            match action {
                Action::Transition { from, to, cause } => self.nodes[n].log.push((
                    now,
                    Event::Transition {
                        instance: name,
                        from,
                        to,
                        cause,
                    },
                )),
                Action::AddVips => self.nodes[n].holds[i] = true,
                Action::RemoveVips => self.nodes[n].holds[i] = false,
                Action::Garp => self.nodes[n]
                    .log
                    .push((now, Event::Garp { instance: name })),
                Action::DualMaster { .. } => self.nodes[n]
                    .log
                    .push((now, Event::DualMaster { instance: name })),
                Action::Uncorroborated { from, .. } => self.nodes[n].log.push((
                    now,
                    Event::Uncorroborated {
                        instance: name,
                        from,
                    },
                )),
                Action::GroupHeld { by } => self.nodes[n]
                    .log
                    .push((now, Event::GroupHeld { instance: name, by })),
                Action::SendAdvert { priority } => {
                    self.nodes[n].log.push((
                        now,
                        Event::Advert {
                            instance: name,
                            priority,
                        },
                    ));
                    let advert = self.nodes[n].router.instance(i).advert(priority);
                    for to in 0..self.nodes.len() {
                        if to == n {
                            continue;
                        }
                        if self.loss > 0.0 && self.rng.unit() < self.loss {
                            continue;
                        }
                        let jitter = self.jitter.mul_f64(self.rng.unit());
                        let at = now + self.delay + jitter;
                        self.seq += 1;
                        self.pending.push(Some(Delivery {
                            to,
                            from: n,
                            advert: advert.clone(),
                        }));
                        self.queue
                            .push(Reverse((at, self.seq, self.pending.len() - 1)));
                    }
                }
            }
        }
    }

    /// Nodes holding instance `i`'s VIPs now.
    pub fn holders(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].alive && self.nodes[n].holds[i])
            .collect()
    }
}
