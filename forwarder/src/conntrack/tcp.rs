//! TCP state tracking, after the IPVS model (`net/netfilter/ipvs/ip_vs_proto_tcp.c`).
//!
//! IPVS does not follow sequence numbers: it classifies each segment by its most
//! significant flag (RST, then SYN, then FIN, then ACK; a segment with none of them leaves
//! the state alone) and looks the next state up in a table indexed by direction and
//! current state. IPVS has three directions: INPUT (client → real, the director also sees
//! the replies: NAT, FULLNAT), OUTPUT (real → client) and INPUT_ONLY (DR, TUN: replies
//! bypass the director). Our six states are IPVS's minus its SYN_SENT / LAST_ACK / LISTEN /
//! SYNACK and with CLOSE_WAIT meaning what TCP means by it: the real server closed first.
//!
//! ```text
//!            | SynRecv   Established FinWait  CloseWait TimeWait Close
//! -----------+-------------------------------------------------------------
//! IN  SYN    | SynRecv   Established SynRecv* SynRecv*  SynRecv* SynRecv*
//! IN  FIN    | FinWait   FinWait     FinWait  TimeWait  TimeWait Close
//! IN  ACK    | Establ.   Established FinWait  CloseWait TimeWait Close
//! IN  RST    | Close     Close       Close    Close     Close    Close
//! OUT SYN    | SynRecv   Established FinWait  CloseWait TimeWait Close
//! OUT FIN    | CloseWait CloseWait   TimeWait CloseWait TimeWait Close
//! OUT ACK    | SynRecv   Established FinWait  CloseWait TimeWait Close
//! OUT RST    | Close     Close       Close    Close     Close    Close
//! ```
//! `*` = re-open: the client reused its port for a new connection (see
//! [`ConnState::reopens_on_syn`]). IPVS re-opens from its FIN states too, which matters in
//! DR: there the director never sees the server's FIN, so a closed flow stays in FinWait.
//!
//! Differences from IPVS, on purpose:
//! - OUT SYN (the SYN+ACK) and OUT ACK keep SynRecv: only the client's ACK completes the
//!   handshake, so a real server cannot make a flow "active" by itself.
//! - TimeWait is entered on the second FIN (IPVS does the same); the final ACK keeps it.
//!   Its timeout equals FinWait's, so the exact moment does not change the flow's life.
//! - INPUT_ONLY needs no rows of its own: its IPVS rows differ from INPUT only in states we
//!   do not have, and every transition of our IN rows is driven by client segments alone.
//!   DR and TUN flows therefore use the IN rows and simply never see OUT ones.

use super::entry::ConnState;

/// TCP flag bits as on the wire (RFC 9293 §3.1).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Which way a packet travels relative to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → VIP (matched by a [`super::FlowKey`]).
    In,
    /// Real server → client or LIP (matched by a [`super::ReplyKey`]).
    Out,
}

const SR: ConnState = ConnState::SynRecv;
const ES: ConnState = ConnState::Established;
const FW: ConnState = ConnState::FinWait;
const CW: ConnState = ConnState::CloseWait;
const TW: ConnState = ConnState::TimeWait;
const CL: ConnState = ConnState::Close;

/// `NEXT[direction][event][state - 1]`, events in the order SYN, FIN, ACK, RST.
const NEXT: [[[ConnState; 6]; 4]; 2] = [
    // IN (and INPUT_ONLY)
    [
        [SR, ES, SR, SR, SR, SR],
        [FW, FW, FW, TW, TW, CL],
        [ES, ES, FW, CW, TW, CL],
        [CL, CL, CL, CL, CL, CL],
    ],
    // OUT
    [
        [SR, ES, FW, CW, TW, CL],
        [CW, CW, TW, CW, TW, CL],
        [SR, ES, FW, CW, TW, CL],
        [CL, CL, CL, CL, CL, CL],
    ],
];

/// The segment's event, by IPVS precedence: RST, SYN, FIN, ACK.
fn event(flags: u8) -> Option<usize> {
    if flags & tcp_flags::RST != 0 {
        Some(3)
    } else if flags & tcp_flags::SYN != 0 {
        Some(0)
    } else if flags & tcp_flags::FIN != 0 {
        Some(1)
    } else if flags & tcp_flags::ACK != 0 {
        Some(2)
    } else {
        None
    }
}

/// Next state of a TCP connection in `state` that sees a segment with `flags` going `dir`.
/// UDP (and any non-TCP state) is returned unchanged.
pub fn tcp_next_state(state: ConnState, dir: Direction, flags: u8) -> ConnState {
    let col = match state {
        ConnState::Udp => return state,
        s => s as usize - 1,
    };
    match event(flags) {
        Some(ev) => NEXT[dir as usize][ev][col],
        None => state,
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;

    #[test]
    fn rst_wins_over_every_other_flag() {
        for s in [SR, ES, FW, CW, TW] {
            assert_eq!(tcp_next_state(s, Direction::In, RST | SYN | ACK), CL);
            assert_eq!(tcp_next_state(s, Direction::Out, RST | FIN), CL);
        }
    }

    #[test]
    fn segment_without_syn_fin_ack_rst_keeps_state() {
        for s in [SR, ES, FW, CW, TW, CL, ConnState::Udp] {
            assert_eq!(tcp_next_state(s, Direction::In, PSH), s);
        }
    }

    #[test]
    fn fin_ack_counts_as_fin() {
        assert_eq!(tcp_next_state(ES, Direction::In, FIN | ACK), FW);
        assert_eq!(tcp_next_state(ES, Direction::Out, FIN | ACK), CW);
    }

    #[test]
    fn only_client_syn_reopens_closing_states() {
        for s in [FW, CW, TW, CL] {
            assert!(s.reopens_on_syn());
            assert_eq!(tcp_next_state(s, Direction::In, SYN), SR);
            assert_eq!(tcp_next_state(s, Direction::Out, SYN | ACK), s);
        }
        assert!(!ES.reopens_on_syn() && !SR.reopens_on_syn());
    }

    #[test]
    fn udp_ignores_tcp_flags() {
        assert_eq!(
            tcp_next_state(ConnState::Udp, Direction::In, RST),
            ConnState::Udp
        );
    }
}
