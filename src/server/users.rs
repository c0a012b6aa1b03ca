//! Who is connected, by user: the connections of each authenticated subject (a token's
//! `sub`, or a publish key's name), so that the control API can disconnect, subscribe or
//! unsubscribe every connection of a user.
//!
//! Anonymous connections are not listed: they have no user to be found by. A connection is
//! listed from its first named identity until its session ends.

use std::collections::HashMap;

use parking_lot::Mutex;

/// The connections of each user, by client id.
#[derive(Debug, Default)]
pub(crate) struct Users {
    connections: Mutex<HashMap<Box<str>, Vec<u64>>>,
}

impl Users {
    /// Lists client `id` under `subject`.
    pub(crate) fn add(&self, subject: &str, id: u64) {
        self.connections
            .lock()
            .entry(subject.into())
            .or_default()
            .push(id);
    }

    /// Takes client `id` off `subject`'s list; a user with no connection left is forgotten.
    pub(crate) fn remove(&self, subject: &str, id: u64) {
        let mut connections = self.connections.lock();
        let Some(ids) = connections.get_mut(subject) else {
            return;
        };
        ids.retain(|&i| i != id);
        if ids.is_empty() {
            connections.remove(subject);
        }
    }

    /// The client ids of `subject`'s connections here, oldest first.
    pub(crate) fn of(&self, subject: &str) -> Vec<u64> {
        self.connections
            .lock()
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_listed_while_any_of_its_connections_is() {
        let users = Users::default();
        users.add("alice", 1);
        users.add("bob", 2);
        users.add("alice", 3);
        assert_eq!(users.of("alice"), [1, 3]);
        users.remove("alice", 1);
        assert_eq!(users.of("alice"), [3]);
        users.remove("alice", 3);
        users.remove("alice", 3);
        assert!(users.of("alice").is_empty());
        users.remove("carol", 9);
        assert_eq!(users.of("bob"), [2]);
    }
}
