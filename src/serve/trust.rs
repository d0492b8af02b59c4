//! Who a client is and what it may do, as `nix-daemon` decides it: the peer's
//! credentials from the socket (`SO_PEERCRED`), matched against `trusted-users` and
//! `allowed-users` (user names, `@group` for members of a group, `*` for everyone).
//! Names come from `/etc/passwd` and `/etc/group` (see `accounts`).

use std::os::fd::AsFd;

use crate::spec::ServeSpec;

/// The process at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The user's name, or the uid as text when it has none.
    pub user: String,
}

impl Peer {
    pub fn of(socket: &impl AsFd) -> std::io::Result<Peer> {
        let cred = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials)?;
        let uid = cred.uid();
        let user = crate::accounts::user_name(uid).unwrap_or_else(|| uid.to_string());
        Ok(Peer { pid: cred.pid(), uid, gid: cred.gid(), user })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// May do everything (root, `trusted-users`).
    Trusted,
    /// May use the store within Nix's limits for untrusted users.
    Allowed,
    /// Refused at the handshake.
    Refused,
}

/// Whether `peer` matches a `trusted-users`/`allowed-users` list.
fn matches(list: &[String], peer: &Peer) -> bool {
    list.iter().any(|entry| {
        if entry == "*" || *entry == peer.user {
            return true;
        }
        let Some(group) = entry.strip_prefix('@') else { return false };
        match crate::accounts::group(group) {
            Some(g) => g.gid == peer.gid || g.members.iter().any(|m| *m == peer.user),
            None => false,
        }
    })
}

pub fn decide(serve: &ServeSpec, peer: &Peer) -> Trust {
    // A build (a process of the build users' group) never talks to the daemon.
    if let Some(group) = &serve.build_users_group {
        if peer.uid != 0 && crate::accounts::group_name(peer.gid).as_deref() == Some(group.as_str()) {
            return Trust::Refused;
        }
    }
    // Root is always trusted, as by nix-daemon (which runs as root and trusts itself).
    if peer.uid == 0 || matches(&serve.trusted_users, peer) {
        Trust::Trusted
    } else if matches(&serve.allowed_users, peer) {
        Trust::Allowed
    } else {
        Trust::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, user: &str) -> Peer {
        Peer { pid: 1, uid, gid: 4242, user: user.into() }
    }

    #[test]
    fn lists_match_as_nix_daemon_matches_them() {
        let mut s = ServeSpec { trusted_users: vec!["alice".into()], allowed_users: vec!["bob".into()], ..Default::default() };
        assert_eq!(decide(&s, &peer(0, "root")), Trust::Trusted);
        assert_eq!(decide(&s, &peer(1000, "alice")), Trust::Trusted);
        assert_eq!(decide(&s, &peer(1001, "bob")), Trust::Allowed);
        assert_eq!(decide(&s, &peer(1002, "carol")), Trust::Refused);
        s.allowed_users = vec!["*".into()];
        assert_eq!(decide(&s, &peer(1002, "carol")), Trust::Allowed);
        // `@root` names group 0, which every test machine has; carol is not in it.
        let root_group = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find(|l| l.split(':').nth(2) == Some("0"))
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .to_string();
        s.allowed_users = vec![format!("@{root_group}")];
        assert_eq!(decide(&s, &peer(1002, "carol")), Trust::Refused);
        assert_eq!(decide(&s, &Peer { gid: 0, ..peer(1002, "carol") }), Trust::Allowed);
        s.allowed_users = vec!["@no-such-group-here".into()];
        assert_eq!(decide(&s, &peer(1002, "carol")), Trust::Refused);
        // Processes of the build users' group are builds: refused, even if allowed.
        s.allowed_users = vec!["*".into()];
        s.build_users_group = Some(root_group.clone());
        assert_eq!(decide(&s, &Peer { gid: 0, ..peer(1002, "carol") }), Trust::Refused);
        assert_eq!(decide(&s, &peer(1002, "carol")), Trust::Allowed);
    }
}
