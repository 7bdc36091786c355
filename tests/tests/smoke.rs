//! First light: HTTP through the VIP in NAT mode.

use director_lab::topo::{tally, ServiceSpec, Topo};
use director_lab::Lab;

#[test]
fn nat_round_robin_smoke() {
    let Some(lab) = Lab::for_test("smoke") else { return };
    let mut topo = Topo::nat(lab, 3).expect("topology");
    let svc = [ServiceSpec::http("rr", &[1, 1, 1])];
    topo.start(&svc).expect("start");
    let names = topo.curl_many(30, None).expect("curl through the VIP");
    let counts = tally(&names, 3);
    println!("{counts:?}");
    println!("{}", topo.director_cli(&["stats"]).unwrap());
    assert_eq!(counts, vec![10, 10, 10]);
}
