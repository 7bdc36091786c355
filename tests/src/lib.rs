//! The network-namespace lab: topology builder with RAII teardown, lab servers and
//! benchmark drivers.
