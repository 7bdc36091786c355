//! All the instances of one box, with sync groups.
//!
//! A sync group's instances move together, as keepalived's `vrrp_sync_group`: when one
//! member becomes master on its own account (its timer ran out, it preempted, it was
//! promoted), every backup member follows; when one master member yields to a higher-priority
//! peer or is demoted, every master member follows; when one member faults, every member
//! faults, and they recover together when no member has a fault of its own. A member whose
//! master goes silent while another member still hears a live one stays BACKUP (counted as
//! `group_held`, reported once): the group has a master, so it must not become one, or
//! the member hearing that master would be pulled up only to yield on its next advert, and
//! the group would flap for as long as the other master speaks on one link only.
//!
//! Sans-I/O like [`Instance`]: actions come out tagged with the instance index.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::instance::{Action, Cause, Instance, InstanceConfig, PeerClaim, State, Time};
use crate::wire::Advert;

/// `[[vrrp.group]]`: instance names that move together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Router {
    instances: Vec<Instance>,
    groups: Vec<(GroupConfig, Vec<usize>)>,
    group_of: Vec<Option<usize>>,
    actions: VecDeque<(usize, Action)>,
}

impl Router {
    /// Group members that name no instance are ignored (the config validation refuses them).
    pub fn new(instances: Vec<InstanceConfig>, groups: Vec<GroupConfig>) -> Router {
        let instances: Vec<Instance> = instances.into_iter().map(Instance::new).collect();
        let mut group_of = vec![None; instances.len()];
        let groups = groups
            .into_iter()
            .enumerate()
            .map(|(g, cfg)| {
                let members: Vec<usize> = cfg
                    .members
                    .iter()
                    .filter_map(|m| instances.iter().position(|i| i.name() == m))
                    .collect();
                for &m in &members {
                    group_of[m] = Some(g);
                }
                (cfg, members)
            })
            .collect();
        Router {
            instances,
            groups,
            group_of,
            actions: VecDeque::new(),
        }
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    pub fn instance(&self, index: usize) -> &Instance {
        &self.instances[index]
    }

    /// The sync group of an instance, if any.
    pub fn group_of(&self, index: usize) -> Option<&GroupConfig> {
        self.group_of[index].map(|g| &self.groups[g].0)
    }

    pub fn startup(&mut self, now: Time) {
        for i in 0..self.instances.len() {
            self.instances[i].startup(now);
            self.settle(now);
        }
    }

    pub fn shutdown(&mut self, now: Time) {
        for i in 0..self.instances.len() {
            self.instances[i].shutdown(now);
        }
        self.settle(now);
    }

    pub fn handle_advert(&mut self, now: Time, index: usize, src: IpAddr, advert: &Advert) {
        self.instances[index].handle_advert(now, src, advert);
        self.settle(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        for i in 0..self.instances.len() {
            if self.instances[i].poll_timeout().is_some_and(|t| now >= t) {
                let hold = self.group_hold(i, now);
                self.instances[i].set_group_hold(hold.as_deref());
                self.instances[i].handle_timeout(now);
                self.settle(now);
            }
        }
    }

    /// Feeds a tracked object's state to every instance that tracks it.
    pub fn set_track(&mut self, now: Time, name: &str, up: bool) {
        for i in 0..self.instances.len() {
            self.instances[i].set_track(now, name, up);
        }
        self.settle(now);
    }

    /// See [`crate::instance::Instance::hold_preempt`].
    /// What the pair's peer says of each VRID over the sync link (`None`: no word now); an
    /// instance whose VRID it does not name gets `None`.
    pub fn set_pair_peer(&mut self, claims: Option<&[(u8, PeerClaim)]>) {
        for i in &mut self.instances {
            let vrid = i.config().vrid;
            let claim = claims.and_then(|c| c.iter().find(|(v, _)| *v == vrid).map(|(_, c)| *c));
            i.set_pair_peer(claim);
        }
    }

    pub fn hold_preempt(&mut self, held: bool) {
        for i in &mut self.instances {
            i.hold_preempt(held);
        }
    }

    pub fn demote(&mut self, now: Time) {
        for i in 0..self.instances.len() {
            self.instances[i].demote(now);
        }
        self.settle(now);
    }

    pub fn promote(&mut self, now: Time) {
        for i in 0..self.instances.len() {
            self.instances[i].promote(now);
        }
        self.settle(now);
    }

    pub fn poll_action(&mut self) -> Option<(usize, Action)> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        self.instances
            .iter()
            .filter_map(Instance::poll_timeout)
            .min()
    }

    /// Collects the instances' actions and applies the sync-group rules until nothing moves.
    fn settle(&mut self, now: Time) {
        loop {
            let mut moved = Vec::new();
            for (i, inst) in self.instances.iter_mut().enumerate() {
                while let Some(action) = inst.poll_action() {
                    if let Action::Transition { from, to, cause } = &action {
                        if !matches!(cause, Cause::Group { .. }) {
                            moved.push((i, *from, *to));
                        }
                    }
                    self.actions.push_back((i, action));
                }
            }
            let faults_changed = self.apply_group_faults(now);
            if moved.is_empty() && !faults_changed {
                return;
            }
            for (i, from, to) in moved {
                let Some(g) = self.group_of[i] else { continue };
                let leader = self.instances[i].name().to_owned();
                for &j in self.groups[g].1.iter().filter(|&&j| j != i) {
                    match (from, to) {
                        (_, State::Master) => self.instances[j].follow_master(now, &leader),
                        (State::Master, State::Backup) => {
                            self.instances[j].follow_backup(now, &leader)
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// The other member of `i`'s sync group that hears a live master, if any: the group is
    /// not masterless then, whatever `i` hears (one link's silence with a master on
    /// another is a forged or one-sided advert, or a partition of one link).
    fn group_hold(&self, i: usize, now: Time) -> Option<String> {
        let g = self.group_of[i]?;
        self.groups[g]
            .1
            .iter()
            .filter(|&&j| j != i)
            .find(|&&j| self.instances[j].hears_live_master(now).is_some())
            .map(|&j| self.instances[j].name().to_owned())
    }

    /// A member with a fault of its own faults the whole group. Returns whether any member's
    /// group fault changed (its actions are then collected by the next round).
    fn apply_group_faults(&mut self, now: Time) -> bool {
        let mut changed = false;
        for (_, members) in &self.groups {
            let leader = members
                .iter()
                .find(|&&m| self.instances[m].own_fault())
                .map(|&m| self.instances[m].name().to_owned());
            for &m in members {
                let inst = &mut self.instances[m];
                let want = if inst.own_fault() {
                    None
                } else {
                    leader.as_deref()
                };
                changed |= inst.set_group_fault(now, want);
            }
        }
        changed
    }
}
