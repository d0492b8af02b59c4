//! The one place that touches store file systems in ways an attacker could steer:
//! Unix sockets under state directories of any depth.

pub mod socket;
