//! First light: HTTP through the VIP in NAT mode, and nothing dropped on the way.

use director_lab::topo::{tally, ServiceSpec, Topo};
use director_lab::Lab;

#[test]
fn nat_round_robin_smoke() {
    let Some(lab) = Lab::for_test("smoke") else {
        return;
    };
    let mut topo = Topo::nat(lab, 3).expect("topology");
    let svc = [ServiceSpec::http("rr", &[1, 1, 1])];
    topo.start(&svc).expect("start");
    let names = topo.curl_many(30, None).expect("curl through the VIP");
    assert_eq!(tally(&names, 3), vec![10, 10, 10]);
    let stats = topo.director_json("stats").expect("stats");
    let drops = &stats["datapath"]["drops"];
    for (reason, n) in drops.as_object().expect("drop counters") {
        assert_eq!(n.as_u64(), Some(0), "unexpected drops {reason}: {stats}");
    }
}
