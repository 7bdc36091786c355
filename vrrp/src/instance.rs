//! One VRRP virtual router, as the state machine of RFC 9568 §6 (RFC 5798 §6, RFC 3768 §6).
//!
//! Sans-I/O: the driver feeds inputs with the time they happened ([`Instance::startup`],
//! [`Instance::handle_advert`], [`Instance::set_track`], ...), calls
//! [`Instance::handle_timeout`] when [`Instance::poll_timeout`] says so, and carries out the
//! [`Action`]s from [`Instance::poll_action`]. The instance never reads a clock or touches a
//! socket, so the simulation tests drive it in virtual time.
//!
//! Beyond the RFC, as keepalived operators expect:
//! - a FAULT state: a tracked object with weight 0 is down (the interface, the datapath, a
//!   service without quorum). A master that faults resigns with a priority-0 advertisement so
//!   the peer takes over after Skew_Time instead of Master_Down_Interval;
//! - tracking weights that move the effective priority (clamped to 1..=254);
//! - `preempt_delay`: lower-priority masters are tolerated for that long after start-up or
//!   after first being seen;
//! - gratuitous ARP on takeover as a burst (`repeat`, spaced by `interval`), a second burst
//!   after `delay`, an optional periodic refresh, and a fresh burst when a dual master (a
//!   lower-priority master on the segment) is detected;
//! - operator demote (resign now, stop preempting) and promote (take over now, advertise 254).

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::wire::{Advert, Version};

/// Time since an arbitrary epoch chosen by the driver (a monotonic clock, or virtual time).
pub type Time = Duration;

/// The priority a non-owner advertises while promoted by the operator.
pub const PROMOTED_PRIORITY: u8 = 254;
/// The priority of the address owner.
pub const OWNER_PRIORITY: u8 = 255;

/// Gratuitous ARP policy on becoming master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarpPolicy {
    /// Gratuitous ARPs per VIP in each burst (at least 1).
    pub repeat: u32,
    /// Spacing within a burst.
    pub interval: Duration,
    /// A second burst this long after becoming master; zero = none.
    pub delay: Duration,
    /// While master, a burst every `refresh`; zero = never.
    pub refresh: Duration,
}

impl Default for GarpPolicy {
    /// keepalived's defaults: 5 at once, a second burst after 5 s, no refresh.
    fn default() -> GarpPolicy {
        GarpPolicy {
            repeat: 5,
            interval: Duration::ZERO,
            delay: Duration::from_secs(5),
            refresh: Duration::ZERO,
        }
    }
}

/// A tracked object: while it is down, `weight` is added to the priority; weight 0 means
/// the instance goes to FAULT instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// `if:eth1`, `datapath`, `service:web` — any name the driver uses consistently.
    pub name: String,
    pub weight: i32,
}

/// What an instance is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub name: String,
    pub version: Version,
    pub vrid: u8,
    /// 1..=255; 255 = the address owner.
    pub priority: u8,
    /// v3: 10 ms .. 40.95 s in whole centiseconds; v2: whole seconds.
    pub advert_interval: Duration,
    /// The virtual addresses, as advertised.
    pub vips: Vec<IpAddr>,
    /// This box's own address on the interface: the advert source and the tie-breaker.
    pub primary: IpAddr,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// Accept_Mode: whether a non-owner master accepts packets addressed to the VIPs.
    pub accept: bool,
    pub garp: GarpPolicy,
    pub tracks: Vec<Track>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// A tracked object with weight 0 is down: no adverts, no VIPs, no takeover.
    Fault,
}

impl State {
    /// As the sync link's heartbeats carry it (`syncd::wire::Claim::state`).
    pub fn as_u8(self) -> u8 {
        match self {
            State::Initialize => 0,
            State::Backup => 1,
            State::Master => 2,
            State::Fault => 3,
        }
    }

    pub fn from_u8(v: u8) -> Option<State> {
        Some(match v {
            0 => State::Initialize,
            1 => State::Backup,
            2 => State::Master,
            3 => State::Fault,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened; shown by `director vrrp` and `director events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Initialize → Backup at start-up.
    Startup,
    /// Initialize → Master: priority 255.
    Owner,
    /// Master_Down_Timer expired: no advert from a master of higher or equal priority.
    MasterDown,
    /// The master resigned (priority 0) and Skew_Time passed.
    MasterResigned { from: IpAddr },
    /// Preempt: the master has a lower priority (or equal priority and a lower address).
    Preempt { from: IpAddr, priority: u8 },
    /// An advert from a higher-priority (or equal priority, higher address) master.
    HigherPriority { from: IpAddr, priority: u8 },
    /// The operator ran `director demote`.
    Demoted,
    /// The operator ran `director promote`.
    Promoted,
    /// A tracked object with weight 0 went down.
    Fault { track: String },
    /// Every fault cleared.
    FaultCleared,
    /// Another member of the sync group moved; this one follows.
    Group { leader: String },
    /// The daemon is stopping.
    Shutdown,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Startup => f.write_str("start-up"),
            Cause::Owner => f.write_str("address owner (priority 255)"),
            Cause::MasterDown => {
                f.write_str("master down: no advertisement in Master_Down_Interval")
            }
            Cause::MasterResigned { from } => write!(f, "master {from} resigned (priority 0)"),
            Cause::Preempt { from, priority } => {
                write!(f, "preempt: master {from} has lower priority {priority}")
            }
            Cause::HigherPriority { from, priority } => {
                write!(f, "advertisement from {from} with priority {priority}")
            }
            Cause::Demoted => f.write_str("operator demote"),
            Cause::Promoted => f.write_str("operator promote"),
            Cause::Fault { track } => write!(f, "fault: {track} down"),
            Cause::FaultCleared => f.write_str("fault cleared"),
            Cause::Group { leader } => write!(f, "sync group follows {leader}"),
            Cause::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Log, record the event, run the notify hook.
    Transition {
        from: State,
        to: State,
        cause: Cause,
    },
    /// Put the VIPs on the interface (and let it answer ARP for them).
    AddVips,
    /// Take the VIPs off the interface.
    RemoveVips,
    /// Send one advertisement with this priority (0 = resign).
    SendAdvert { priority: u8 },
    /// Send one gratuitous ARP for every VIP.
    Garp,
    /// A master with lower priority is on the segment (two masters); this one stays master,
    /// has advertised at once and starts a gratuitous ARP burst. Logged and recorded.
    DualMaster { from: IpAddr, priority: u8 },
    /// An advert the pair's peer contradicts (see [`Instance::set_pair_peer`]) was ignored:
    /// logged and recorded once per episode.
    Uncorroborated {
        from: IpAddr,
        priority: u8,
        why: Uncorroborated,
    },
    /// This member's master went silent while another member of its sync group (`by`)
    /// hears a live one: it stays BACKUP. Logged and recorded once per episode.
    GroupHeld { by: String },
}

/// What the pair's peer says of this VRID over the authenticated sync link (its heartbeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerClaim {
    /// The source of its adverts (its primary address).
    pub addr: IpAddr,
    pub state: State,
    /// The priority it advertises.
    pub priority: u8,
}

/// Why an advert was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncorroborated {
    /// From a router that is not the pair's peer (the pair is two boxes and knows its peer's
    /// address from the sync link).
    UnknownRouter { peer: IpAddr },
    /// From the peer's address with a priority the peer, over the sync link, does not claim.
    PriorityContradicted { claimed: u8 },
}

impl fmt::Display for Uncorroborated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uncorroborated::UnknownRouter { peer } => {
                write!(f, "not the pair's peer ({peer}, as the sync link says)")
            }
            Uncorroborated::PriorityContradicted { claimed } => write!(
                f,
                "the peer says over the sync link that it advertises priority {claimed}"
            ),
        }
    }
}

/// Per-instance counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub adverts_rx: u64,
    pub adverts_tx: u64,
    pub priority_zero_rx: u64,
    pub priority_zero_tx: u64,
    pub became_master: u64,
    pub became_backup: u64,
    pub faults: u64,
    /// Adverts of the other VRRP version (a v2 advert to a v3 instance), ignored.
    pub wrong_version: u64,
    /// v2 adverts whose interval differs from ours (RFC 3768 §7.1: discarded).
    pub interval_mismatch: u64,
    /// Adverts whose address list differs from ours (accepted and counted, as keepalived).
    pub addr_mismatch: u64,
    /// Our own adverts looped back, ignored.
    pub own: u64,
    pub dual_master: u64,
    pub garps: u64,
    /// Adverts the pair's peer contradicts over the sync link, ignored.
    pub uncorroborated: u64,
    /// Times this member's down timer ran out while another member of its sync group heard
    /// a live master, and it stayed BACKUP.
    pub group_held: u64,
}

/// A snapshot for `director vrrp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub vrid: u8,
    pub state: State,
    pub configured_priority: u8,
    pub effective_priority: u8,
    /// The master as last seen (ourselves when master).
    pub master: Option<IpAddr>,
    pub master_priority: Option<u8>,
    pub master_adver_interval: Duration,
    pub demoted: bool,
    pub promoted: bool,
    /// Preemption held off (connection sync has not finished its resync).
    pub preempt_held: bool,
    /// Tracked objects that are down.
    pub tracks_down: Vec<String>,
    pub last_transition: Option<(Time, State, State, Cause)>,
    pub counters: Counters,
}

#[derive(Debug, Clone, Default)]
struct Garps {
    /// Gratuitous ARPs still to send in the current burst.
    pending: u32,
    next: Option<Time>,
    second_burst: Option<Time>,
    refresh: Option<Time>,
}

#[derive(Debug, Clone)]
struct TrackState {
    track: Track,
    up: bool,
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Instance {
    cfg: InstanceConfig,
    state: State,
    master_adver_interval: Duration,
    master_down_at: Option<Time>,
    adver_at: Option<Time>,
    /// The last advert that set the down timer was a resignation from this address.
    resigned_by: Option<IpAddr>,
    /// The last advert was from a lower-priority master we are about to preempt.
    preempting: Option<(IpAddr, u8)>,
    garps: Garps,
    tracks: Vec<TrackState>,
    /// Faulted because another member of the sync group is.
    group_fault: Option<String>,
    demoted: bool,
    promoted: bool,
    preempt_held: bool,
    started_at: Time,
    /// When a lower-priority master was first seen (for preempt_delay).
    lower_seen_since: Option<Time>,
    /// When a lower-priority master was last heard while we are master.
    dual_master_seen: Option<Time>,
    /// The pair's peer, as the sync link says now (`None`: no word from it).
    pair_peer: Option<PeerClaim>,
    /// The peer's advert address, once the sync link has named it (kept while it is silent).
    peer_addr: Option<IpAddr>,
    /// When an uncorroborated advert was last ignored, and from whom.
    uncorroborated_seen: Option<(Time, IpAddr)>,
    master: Option<(IpAddr, u8)>,
    /// When a live master last reset our down timer (Backup only): see
    /// [`Instance::hears_live_master`].
    master_heard_at: Option<Time>,
    /// Sync group: another member hears a live master (its name), so this one's own timer
    /// running out does not make the group master (see [`Instance::set_group_hold`]).
    group_hold: Option<String>,
    /// The current hold episode was reported.
    group_hold_reported: bool,
    last_transition: Option<(Time, State, State, Cause)>,
    actions: VecDeque<Action>,
    counters: Counters,
}

impl Instance {
    pub fn new(cfg: InstanceConfig) -> Instance {
        let tracks = cfg
            .tracks
            .iter()
            .map(|t| TrackState {
                track: t.clone(),
                up: true,
            })
            .collect();
        Instance {
            master_adver_interval: cfg.advert_interval,
            cfg,
            state: State::Initialize,
            master_down_at: None,
            adver_at: None,
            resigned_by: None,
            preempting: None,
            garps: Garps::default(),
            tracks,
            group_fault: None,
            demoted: false,
            promoted: false,
            preempt_held: false,
            started_at: Duration::ZERO,
            lower_seen_since: None,
            dual_master_seen: None,
            pair_peer: None,
            peer_addr: None,
            uncorroborated_seen: None,
            master: None,
            master_heard_at: None,
            group_hold: None,
            group_hold_reported: false,
            last_transition: None,
            actions: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The priority this instance advertises and compares with: the configured one, 254
    /// while promoted, plus the weights of tracked objects that are down, in 1..=254. The
    /// address owner always has 255.
    pub fn effective_priority(&self) -> u8 {
        if self.cfg.priority == OWNER_PRIORITY {
            return OWNER_PRIORITY;
        }
        let base = if self.promoted {
            PROMOTED_PRIORITY
        } else {
            self.cfg.priority
        };
        let delta: i32 = self
            .tracks
            .iter()
            .filter(|t| !t.up && t.track.weight != 0)
            .map(|t| t.track.weight)
            .sum();
        (i32::from(base) + delta).clamp(1, 254) as u8
    }

    /// The first tracked object with weight 0 that is down, or the group's fault.
    fn fault_reason(&self) -> Option<String> {
        self.tracks
            .iter()
            .find(|t| !t.up && t.track.weight == 0)
            .map(|t| t.track.name.clone())
            .or_else(|| self.group_fault.clone())
    }

    /// Skew_Time (RFC 9568 §6.1): ((256 − Priority) × Master_Adver_Interval) / 256. v2
    /// (RFC 3768) uses (256 − Priority) / 256 seconds, which is the same with a 1 s interval.
    pub fn skew_time(&self) -> Duration {
        let interval = match self.cfg.version {
            Version::V3 => self.master_adver_interval,
            Version::V2 => Duration::from_secs(1),
        };
        interval * (256 - u32::from(self.effective_priority())) / 256
    }

    /// Master_Down_Interval: 3 × Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval * 3 + self.skew_time()
    }

    pub fn status(&self) -> Status {
        Status {
            name: self.cfg.name.clone(),
            vrid: self.cfg.vrid,
            state: self.state,
            configured_priority: self.cfg.priority,
            effective_priority: self.effective_priority(),
            master: self.master.map(|m| m.0),
            master_priority: self.master.map(|m| m.1),
            master_adver_interval: self.master_adver_interval,
            demoted: self.demoted,
            promoted: self.promoted,
            preempt_held: self.preempt_held,
            tracks_down: self
                .tracks
                .iter()
                .filter(|t| !t.up)
                .map(|t| t.track.name.clone())
                .chain(self.group_fault.iter().map(|g| format!("group: {g}")))
                .collect(),
            last_transition: self.last_transition.clone(),
            counters: self.counters.clone(),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest time [`Instance::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        [
            self.master_down_at,
            self.adver_at,
            self.garps.next,
            self.garps.second_burst,
            self.garps.refresh,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// RFC 9568 §6.4.1: the Startup event.
    pub fn startup(&mut self, now: Time) {
        if self.state != State::Initialize {
            return;
        }
        self.started_at = now;
        if let Some(track) = self.fault_reason() {
            self.enter_fault(now, Cause::Fault { track });
        } else if self.cfg.priority == OWNER_PRIORITY {
            self.become_master(now, Cause::Owner);
        } else {
            self.master_adver_interval = self.cfg.advert_interval;
            self.become_backup(now, Cause::Startup);
        }
    }

    /// RFC 9568 §6.4.2/§6.4.3: the Shutdown event. A master resigns with priority 0.
    pub fn shutdown(&mut self, now: Time) {
        if self.state == State::Master {
            self.send_advert(0);
            self.actions.push_back(Action::RemoveVips);
        }
        self.clear_timers();
        self.transition(now, State::Initialize, Cause::Shutdown);
    }

    /// An advertisement for this VRID arrived from `src` (already decoded and checked by
    /// the codec: TTL, version, type, length and checksum).
    pub fn handle_advert(&mut self, now: Time, src: IpAddr, advert: &Advert) {
        if src == self.cfg.primary {
            self.counters.own += 1;
            return;
        }
        if advert.version != self.cfg.version {
            self.counters.wrong_version += 1;
            return;
        }
        if advert.version == Version::V2
            && Duration::from_millis(u64::from(advert.interval_cs) * 10) != self.cfg.advert_interval
        {
            self.counters.interval_mismatch += 1;
            return;
        }
        if let Some(why) = self.uncorroborated(src, advert) {
            self.ignore_uncorroborated(now, src, advert.priority, why);
            return;
        }
        self.counters.adverts_rx += 1;
        if advert.priority == 0 {
            self.counters.priority_zero_rx += 1;
        }
        if !same_addresses(&advert.addrs, &self.cfg.vips) {
            self.counters.addr_mismatch += 1;
        }
        let advert_interval = match advert.version {
            // RFC 9568 §6.4.2: a backup learns the master's interval.
            Version::V3 => Duration::from_millis(u64::from(advert.interval_cs) * 10),
            Version::V2 => self.cfg.advert_interval,
        };
        let local = self.effective_priority();
        match self.state {
            State::Initialize | State::Fault => {}
            State::Backup => {
                if advert.priority == 0 {
                    // §6.4.2: the master resigned; take over after Skew_Time.
                    self.resigned_by = Some(src);
                    self.preempting = None;
                    self.master = None;
                    self.master_heard_at = None;
                    self.master_down_at = Some(now + self.skew_time());
                    return;
                }
                self.master = Some((src, advert.priority));
                let lower = advert.priority < local
                    || (advert.priority == local && addr_greater(self.cfg.primary, src));
                let may_preempt = self.may_preempt(now, lower);
                if !lower || !may_preempt {
                    // §6.4.2: reset the Master_Down_Timer.
                    self.resigned_by = None;
                    self.preempting = None;
                    self.master_adver_interval = advert_interval;
                    self.master_down_at = Some(now + self.master_down_interval());
                    self.master_heard_at = Some(now);
                } else {
                    // Discard; the timer runs out and we preempt.
                    self.preempting = Some((src, advert.priority));
                    self.master_heard_at = None;
                }
            }
            State::Master => {
                if advert.priority == 0 {
                    // §6.4.3: a resigning router; assert ourselves at once.
                    self.send_advert(local);
                    self.adver_at = Some(now + self.cfg.advert_interval);
                    return;
                }
                let higher = advert.priority > local
                    || (advert.priority == local && addr_greater(src, self.cfg.primary));
                if higher {
                    // Two masters, and we lose. Our last word is one more advert at our own
                    // priority: the winner may not have heard us yet, and only a winner that
                    // learns of the dual master knows to refresh the neighbours' ARP caches
                    // (they may point at us). To any backup it is an ordinary advert.
                    self.send_advert(local);
                    self.master_adver_interval = advert_interval;
                    self.become_backup(
                        now,
                        Cause::HigherPriority {
                            from: src,
                            priority: advert.priority,
                        },
                    );
                    self.master = Some((src, advert.priority));
                    self.master_heard_at = Some(now);
                } else {
                    // Two masters: the other will yield on our advert. Send it now, and
                    // refresh the neighbours' caches once per dual-master episode.
                    let episode_new = self
                        .dual_master_seen
                        .is_none_or(|seen| now >= seen + self.master_down_interval());
                    self.dual_master_seen = Some(now);
                    self.send_advert(local);
                    self.adver_at = Some(now + self.cfg.advert_interval);
                    if episode_new {
                        self.counters.dual_master += 1;
                        self.actions.push_back(Action::DualMaster {
                            from: src,
                            priority: advert.priority,
                        });
                        self.start_garp_burst(now);
                    }
                }
            }
        }
    }

    /// What the pair's peer says of this VRID over the sync link, or `None` when the link is
    /// down or says nothing of it. Once the peer's address is known, an advert from any
    /// other address is not believed (the pair has two members); while the peer speaks, an
    /// advert from its address with a priority other than the one it claims (or 0, a
    /// resignation) is not believed either. Without a word from the sync link ever, this is
    /// RFC 9568 as written.
    pub fn set_pair_peer(&mut self, claim: Option<PeerClaim>) {
        if let Some(c) = claim {
            self.peer_addr = Some(c.addr);
        }
        self.pair_peer = claim;
    }

    fn uncorroborated(&self, src: IpAddr, advert: &Advert) -> Option<Uncorroborated> {
        let peer = self.peer_addr?;
        if src != peer {
            return Some(Uncorroborated::UnknownRouter { peer });
        }
        match self.pair_peer {
            Some(c) if advert.priority != 0 && advert.priority != c.priority => {
                Some(Uncorroborated::PriorityContradicted {
                    claimed: c.priority,
                })
            }
            _ => None,
        }
    }

    /// An advert not believed: counted; an event once per episode; a master asserts itself
    /// at once (and refreshes the neighbours' caches once per episode, which the forger may
    /// have poisoned), as for a dual master it wins against.
    fn ignore_uncorroborated(&mut self, now: Time, src: IpAddr, priority: u8, why: Uncorroborated) {
        self.counters.uncorroborated += 1;
        // An episode: adverts from one source, each within Master_Down_Interval of the last.
        let episode_new = self
            .uncorroborated_seen
            .is_none_or(|(seen, from)| from != src || now >= seen + self.master_down_interval());
        self.uncorroborated_seen = Some((now, src));
        if episode_new {
            self.actions.push_back(Action::Uncorroborated {
                from: src,
                priority,
                why,
            });
        }
        if self.state == State::Master {
            let local = self.effective_priority();
            self.send_advert(local);
            self.adver_at = Some(now + self.cfg.advert_interval);
            if episode_new {
                self.start_garp_burst(now);
            }
        }
    }

    /// Whether a lower-priority master may be preempted now.
    fn may_preempt(&mut self, now: Time, lower: bool) -> bool {
        if !lower {
            self.lower_seen_since = None;
            return false;
        }
        if self.demoted || !(self.cfg.preempt || self.promoted) {
            return false;
        }
        if self.preempt_held && !self.promoted {
            return false;
        }
        if self.promoted || self.cfg.preempt_delay.is_zero() {
            return true;
        }
        let since = *self.lower_seen_since.get_or_insert(now);
        now >= self.started_at + self.cfg.preempt_delay && now >= since + self.cfg.preempt_delay
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.state == State::Backup && self.master_down_at.is_some_and(|t| now >= t) {
            if let Some(by) = self.group_hold.clone() {
                // Another member of the sync group hears a live master: the group is not
                // without one, so this member's silence does not make it master (it would
                // pull that member up, which yields again on the next advert: the group
                // would flap). Looked at again after an interval.
                self.counters.group_held += 1;
                if !self.group_hold_reported {
                    self.group_hold_reported = true;
                    self.actions.push_back(Action::GroupHeld { by });
                }
                self.master_down_at = Some(now + self.master_adver_interval);
                return;
            }
            let cause = match (self.resigned_by, self.preempting) {
                (Some(from), _) => Cause::MasterResigned { from },
                (None, Some((from, priority))) => Cause::Preempt { from, priority },
                (None, None) => Cause::MasterDown,
            };
            self.become_master(now, cause);
        }
        if self.state != State::Master {
            return;
        }
        if let Some(at) = self.adver_at.filter(|&t| now >= t) {
            self.send_advert(self.effective_priority());
            // Keep the cadence of the schedule; if we fell behind by a whole interval, restart
            // it from now rather than sending a catch-up burst.
            let next = at + self.cfg.advert_interval;
            self.adver_at = Some(if next > now {
                next
            } else {
                now + self.cfg.advert_interval
            });
        }
        if self.garps.second_burst.is_some_and(|t| now >= t) {
            self.garps.second_burst = None;
            self.start_garp_burst(now);
        }
        if self.garps.refresh.is_some_and(|t| now >= t) {
            self.garps.refresh = Some(now + self.cfg.garp.refresh);
            self.start_garp_burst(now);
        }
        while self.garps.next.is_some_and(|t| now >= t) {
            self.counters.garps += 1;
            self.actions.push_back(Action::Garp);
            self.garps.pending = self.garps.pending.saturating_sub(1);
            self.garps.next = if self.garps.pending == 0 {
                None
            } else if self.cfg.garp.interval.is_zero() {
                Some(now)
            } else {
                Some(now + self.cfg.garp.interval)
            };
        }
    }

    /// A tracked object changed. Unknown names are ignored (the driver feeds every
    /// instance every signal; each tracks what it was configured to).
    pub fn set_track(&mut self, now: Time, name: &str, up: bool) {
        let before_fault = self.fault_reason();
        let before_priority = self.effective_priority();
        let mut changed = false;
        for t in self.tracks.iter_mut().filter(|t| t.track.name == name) {
            changed |= t.up != up;
            t.up = up;
        }
        if changed {
            self.after_track_change(now, before_fault, before_priority);
        }
    }

    /// Whether this instance tracks `name`.
    pub fn tracks(&self, name: &str) -> bool {
        self.tracks.iter().any(|t| t.track.name == name)
    }

    fn after_track_change(&mut self, now: Time, before_fault: Option<String>, before_priority: u8) {
        let fault = self.fault_reason();
        match (before_fault.is_some(), fault) {
            (false, Some(track)) => self.enter_fault(now, Cause::Fault { track }),
            (true, None) => self.leave_fault(now),
            _ => {
                if self.state == State::Master && self.effective_priority() != before_priority {
                    // Tell the peer now rather than at the next advert.
                    self.send_advert(self.effective_priority());
                    self.adver_at = Some(now + self.cfg.advert_interval);
                }
            }
        }
    }

    /// Sync group: another member faulted (`Some(leader)`) or every member recovered (`None`).
    /// Returns whether anything changed.
    pub fn set_group_fault(&mut self, now: Time, leader: Option<&str>) -> bool {
        if self.group_fault.as_deref() == leader {
            return false;
        }
        let before_fault = self.fault_reason();
        let before_priority = self.effective_priority();
        self.group_fault = leader.map(str::to_owned);
        self.after_track_change(now, before_fault, before_priority);
        true
    }

    /// Whether this instance is in FAULT because of its own tracked objects (not the group's).
    pub fn own_fault(&self) -> bool {
        self.tracks.iter().any(|t| !t.up && t.track.weight == 0)
    }

    /// The master this backup hears now, if it is live: its advert reset our down timer
    /// within the last two advertisement intervals. A master that died is silent for at
    /// least the down interval (three intervals and the skew) when any member's timer runs
    /// out, so this never holds a real failover back; one lost advert does not end it.
    pub fn hears_live_master(&self, now: Time) -> Option<(IpAddr, u8)> {
        let heard = self.master_heard_at?;
        (self.state == State::Backup && now < heard + 2 * self.master_adver_interval)
            .then_some(self.master)
            .flatten()
    }

    /// Sync group: `Some(member)` while another member hears a live master (the router
    /// sets it before this one's timers run); the group then stays BACKUP when this
    /// member's own master goes silent. An operator's promote is not held.
    pub fn set_group_hold(&mut self, by: Option<&str>) {
        if by.is_none() {
            self.group_hold_reported = false;
        }
        self.group_hold = by.map(str::to_owned);
    }

    /// Sync group: another member became master; a backup follows at once.
    pub fn follow_master(&mut self, now: Time, leader: &str) {
        if self.state == State::Backup {
            self.become_master(
                now,
                Cause::Group {
                    leader: leader.to_owned(),
                },
            );
        }
    }

    /// Sync group: another member yielded to a higher-priority peer; a master follows.
    pub fn follow_backup(&mut self, now: Time, leader: &str) {
        if self.state == State::Master {
            self.become_backup(
                now,
                Cause::Group {
                    leader: leader.to_owned(),
                },
            );
        }
    }

    /// Holds preemption off (or lets it go again): a node whose connection table is not yet
    /// a copy of the master's must not take the VIPs from a live master, or its flows would
    /// break. Taking over from a master that went silent is not affected. Once released,
    /// the next advert of a lower-priority master is preempted as usual.
    pub fn hold_preempt(&mut self, held: bool) {
        self.preempt_held = held;
        if held {
            self.lower_seen_since = None;
        }
    }

    /// `director demote`: resign now (priority 0) and stop preempting until promoted. The
    /// instance stays a backup and still takes over if the peer disappears.
    pub fn demote(&mut self, now: Time) {
        self.demoted = true;
        self.promoted = false;
        self.lower_seen_since = None;
        if self.state == State::Master {
            self.send_advert(0);
            self.resigned_by = None;
            self.become_backup(now, Cause::Demoted);
        }
    }

    /// `director promote`: take over now and advertise priority 254 until demoted.
    pub fn promote(&mut self, now: Time) {
        self.demoted = false;
        self.promoted = true;
        match self.state {
            State::Backup => self.become_master(now, Cause::Promoted),
            State::Master => {
                self.send_advert(self.effective_priority());
                self.adver_at = Some(now + self.cfg.advert_interval);
            }
            State::Initialize | State::Fault => {}
        }
    }

    fn enter_fault(&mut self, now: Time, cause: Cause) {
        if self.state == State::Master {
            // A box that cannot serve must not hold the VIP: resign so the peer takes over
            // after Skew_Time.
            self.send_advert(0);
            self.actions.push_back(Action::RemoveVips);
        }
        self.clear_timers();
        self.counters.faults += 1;
        self.master = None;
        self.master_heard_at = None;
        self.transition(now, State::Fault, cause);
    }

    fn leave_fault(&mut self, now: Time) {
        if self.state != State::Fault {
            return;
        }
        if self.cfg.priority == OWNER_PRIORITY {
            self.become_master(now, Cause::FaultCleared);
        } else {
            self.master_adver_interval = self.cfg.advert_interval;
            self.become_backup(now, Cause::FaultCleared);
        }
    }

    fn become_master(&mut self, now: Time, cause: Cause) {
        self.master_heard_at = None;
        self.transition(now, State::Master, cause);
        self.counters.became_master += 1;
        self.clear_timers();
        self.actions.push_back(Action::AddVips);
        self.send_advert(self.effective_priority());
        self.adver_at = Some(now + self.cfg.advert_interval);
        self.master = Some((self.cfg.primary, self.effective_priority()));
        self.dual_master_seen = None;
        self.start_garp_burst(now);
        // Send the first gratuitous ARPs in the same turn as the first advert.
        self.handle_timeout(now);
        if !self.cfg.garp.delay.is_zero() {
            self.garps.second_burst = Some(now + self.cfg.garp.delay);
        }
        if !self.cfg.garp.refresh.is_zero() {
            self.garps.refresh = Some(now + self.cfg.garp.refresh);
        }
    }

    fn become_backup(&mut self, now: Time, cause: Cause) {
        let was_master = self.state == State::Master;
        self.transition(now, State::Backup, cause);
        self.counters.became_backup += 1;
        self.clear_timers();
        if was_master {
            self.actions.push_back(Action::RemoveVips);
        }
        self.lower_seen_since = None;
        self.master = None;
        self.master_down_at = Some(now + self.master_down_interval());
    }

    fn start_garp_burst(&mut self, now: Time) {
        self.garps.pending = self.cfg.garp.repeat.max(1);
        self.garps.next = Some(now);
    }

    fn clear_timers(&mut self) {
        self.resigned_by = None;
        self.preempting = None;
        self.master_down_at = None;
        self.adver_at = None;
        self.garps = Garps::default();
    }

    fn send_advert(&mut self, priority: u8) {
        self.counters.adverts_tx += 1;
        if priority == 0 {
            self.counters.priority_zero_tx += 1;
        }
        self.actions.push_back(Action::SendAdvert { priority });
    }

    fn transition(&mut self, now: Time, to: State, cause: Cause) {
        let from = self.state;
        self.state = to;
        self.last_transition = Some((now, from, to, cause.clone()));
        self.actions
            .push_back(Action::Transition { from, to, cause });
    }

    /// The advert this instance sends with `priority`.
    pub fn advert(&self, priority: u8) -> Advert {
        let cs = self.cfg.advert_interval.as_millis() / 10;
        Advert {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            interval_cs: u16::try_from(cs).unwrap_or(u16::MAX),
            addrs: self.cfg.vips.clone(),
        }
    }
}

/// RFC 9568 §6.4.3: the tie-break compares primary addresses as unsigned integers.
fn addr_greater(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) > u32::from(b),
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) > u128::from(b),
        (IpAddr::V6(_), IpAddr::V4(_)) => true,
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Same set of addresses, in any order.
fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}
