//! An event's priority and conflation key, carried across the cluster as NATS headers
//! (`Sigmahub-Priority`, `Sigmahub-Conflate`; absent when the publisher gave none), so that
//! every node degrades its slow clients the same way. An event without a priority gets its
//! channel's default on each node (`[[channels]]`, which the nodes of a cluster share).

use async_nats::HeaderMap;

use crate::event::{ConflateKey, Event, Priority};

const PRIORITY: &str = "Sigmahub-Priority";
const CONFLATE: &str = "Sigmahub-Conflate";

/// Adds `event`'s priority and conflation key, those it has, to `headers`.
pub(super) fn put_degrade_meta(headers: &mut HeaderMap, event: &Event) {
    if let Some(priority) = event.priority() {
        headers.insert(PRIORITY, priority.as_str());
    }
    if let Some(key) = event.conflate() {
        headers.insert(CONFLATE, key.as_str());
    }
}

/// The priority and conflation key in `headers`: none where they are absent or not valid
/// (a message from an older node, or from elsewhere).
pub(super) fn degrade_meta(headers: Option<&HeaderMap>) -> (Option<Priority>, Option<ConflateKey>) {
    let Some(headers) = headers else {
        return (None, None);
    };
    let priority = headers
        .get(PRIORITY)
        .and_then(|v| Priority::from_name(v.as_str()));
    let conflate = headers
        .get(CONFLATE)
        .and_then(|v| ConflateKey::new(v.as_str()).ok());
    (priority, conflate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_and_key_round_trip_and_default_when_absent() {
        let event = Event::new("a", &1)
            .unwrap()
            .with_priority(Priority::Critical)
            .with_conflate(Some(ConflateKey::new("agent-7").unwrap()));
        let mut headers = HeaderMap::new();
        put_degrade_meta(&mut headers, &event);
        let (priority, key) = degrade_meta(Some(&headers));
        assert_eq!(priority, Some(Priority::Critical));
        assert_eq!(key.unwrap().as_str(), "agent-7");

        let mut headers = HeaderMap::new();
        put_degrade_meta(&mut headers, &Event::new("a", &1).unwrap());
        assert!(headers.get(PRIORITY).is_none() && headers.get(CONFLATE).is_none());
        assert_eq!(degrade_meta(Some(&headers)), (None, None));
        headers.insert(PRIORITY, "urgent");
        assert_eq!(degrade_meta(Some(&headers)), (None, None));
        assert_eq!(degrade_meta(None), (None, None));
        // An explicit `normal` travels: it may differ from the channel's default.
        let mut headers = HeaderMap::new();
        put_degrade_meta(
            &mut headers,
            &Event::new("a", &1).unwrap().with_priority(Priority::Normal),
        );
        assert_eq!(degrade_meta(Some(&headers)).0, Some(Priority::Normal));
    }
}
