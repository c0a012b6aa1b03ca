//! An event's priority and conflation key, carried across the cluster as NATS headers
//! (`Sigmahub-Priority`, `Sigmahub-Conflate`; absent for the defaults), so that every
//! node degrades its slow clients the same way.

use async_nats::HeaderMap;

use crate::event::{ConflateKey, Event, Priority};

const PRIORITY: &str = "Sigmahub-Priority";
const CONFLATE: &str = "Sigmahub-Conflate";

/// Adds `event`'s priority (unless `normal`) and conflation key (if any) to `headers`.
pub(super) fn put_degrade_meta(headers: &mut HeaderMap, event: &Event) {
    if event.priority() != Priority::Normal {
        headers.insert(PRIORITY, event.priority().as_str());
    }
    if let Some(key) = event.conflate() {
        headers.insert(CONFLATE, key.as_str());
    }
}

/// The priority and conflation key in `headers`: the defaults where they are absent or
/// not valid (a message from an older node, or from elsewhere).
pub(super) fn degrade_meta(headers: Option<&HeaderMap>) -> (Priority, Option<ConflateKey>) {
    let Some(headers) = headers else {
        return (Priority::Normal, None);
    };
    let priority = headers
        .get(PRIORITY)
        .and_then(|v| Priority::from_name(v.as_str()))
        .unwrap_or_default();
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
        assert_eq!(priority, Priority::Critical);
        assert_eq!(key.unwrap().as_str(), "agent-7");

        let mut headers = HeaderMap::new();
        put_degrade_meta(&mut headers, &Event::new("a", &1).unwrap());
        assert!(headers.get(PRIORITY).is_none() && headers.get(CONFLATE).is_none());
        assert_eq!(degrade_meta(Some(&headers)), (Priority::Normal, None));
        headers.insert(PRIORITY, "urgent");
        assert_eq!(degrade_meta(Some(&headers)), (Priority::Normal, None));
        assert_eq!(degrade_meta(None), (Priority::Normal, None));
    }
}
