//! Where a channel's subscription stands in the server's sequence: what was delivered
//! last, and a gap waiting for the replay that follows it.

use crate::event::{Gap, GapReason};
use crate::wire::Recovery;

/// A channel's place in the server's offsets, in the current epoch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The offset of the last event delivered, or the position the server gave when the
    /// channel was subscribed; `None` while unknown.
    pub(crate) offset: Option<u64>,
    /// A gap to report just before the first replayed event.
    pending: Option<Gap>,
}

/// Whether to deliver an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Deliver it, after this gap if there is one.
    Deliver(Option<Gap>),
    /// Already delivered (or older than what was): drop it.
    Duplicate,
}

impl Position {
    /// Whether an event at `offset` is new here; if so it becomes the last delivered.
    /// Events without an offset (status snapshots) are always new.
    pub(crate) fn admit(&mut self, offset: Option<u64>) -> Admit {
        match (offset, self.offset) {
            (Some(o), Some(last)) if o <= last => Admit::Duplicate,
            (Some(o), _) => {
                self.offset = Some(o);
                Admit::Deliver(self.pending.take().map(|gap| Gap {
                    before: Some(o),
                    ..gap
                }))
            }
            (None, _) => Admit::Deliver(None),
        }
    }

    /// The server's position for a channel it just subscribed: taken unless this client
    /// already has its own (a resumed channel keeps the offset it resumed from).
    pub(crate) fn start_at(&mut self, position: u64) {
        self.offset.get_or_insert(position);
    }

    /// How the server's recovery of `channel` went. Returns a gap to report now; a gap
    /// followed by a replay is held until the replay's first event (see [`admit`](Self::admit)).
    pub(crate) fn recovered(&mut self, channel: &str, recovery: &Recovery) -> Option<Gap> {
        if recovery.recovered {
            return None;
        }
        let reason = recovery.reason.clone().unwrap_or(GapReason::Other);
        let gap = Gap {
            channel: channel.to_owned(),
            reason: reason.clone(),
            after: self.offset,
            before: None,
        };
        if reason == GapReason::EpochChanged {
            // The old offsets mean nothing in the new sequence.
            self.offset = None;
        }
        if recovery.replayed > 0 {
            self.pending = Some(gap);
            None
        } else {
            Some(gap)
        }
    }

    /// A reconnect without a position to resume from: what was published meanwhile is
    /// lost, and the client cannot tell how much.
    pub(crate) fn untracked(&self, channel: &str) -> Option<Gap> {
        self.offset.is_none().then(|| Gap {
            channel: channel.to_owned(),
            reason: GapReason::NoHistory,
            after: None,
            before: None,
        })
    }

    /// A channel the server subscribed on connect without resuming it, though it was
    /// subscribed before: what was published meanwhile is lost.
    pub(crate) fn not_resumed(&self, channel: &str) -> Gap {
        self.untracked(channel).unwrap_or_else(|| Gap {
            channel: channel.to_owned(),
            reason: GapReason::NotResumed,
            after: self.offset,
            before: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovery(recovered: bool, replayed: u64, reason: Option<GapReason>) -> Recovery {
        Recovery {
            recovered,
            replayed,
            reason,
        }
    }

    #[test]
    fn events_are_delivered_once_and_in_order() {
        let mut p = Position::default();
        p.start_at(10);
        assert_eq!(p.admit(Some(11)), Admit::Deliver(None));
        assert_eq!(p.admit(Some(11)), Admit::Duplicate);
        assert_eq!(p.admit(Some(9)), Admit::Duplicate);
        assert_eq!(
            p.admit(None),
            Admit::Deliver(None),
            "snapshots have no offset"
        );
        assert_eq!(p.admit(Some(15)), Admit::Deliver(None));
        p.start_at(3);
        assert_eq!(p.offset, Some(15), "a position never moves a known offset");
    }

    #[test]
    fn a_truncated_history_reports_the_range_before_the_replay() {
        let mut p = Position::default();
        p.start_at(4);
        p.admit(Some(5));
        let now = p.recovered("a", &recovery(false, 3, Some(GapReason::HistoryTruncated)));
        assert_eq!(now, None, "held for the replay");
        assert_eq!(
            p.admit(Some(20)),
            Admit::Deliver(Some(Gap {
                channel: "a".into(),
                reason: GapReason::HistoryTruncated,
                after: Some(5),
                before: Some(20),
            }))
        );
        assert_eq!(p.admit(Some(21)), Admit::Deliver(None));
    }

    #[test]
    fn a_new_epoch_reports_at_once_and_starts_over() {
        let mut p = Position::default();
        p.admit(Some(500));
        let gap = p
            .recovered("a", &recovery(false, 0, Some(GapReason::EpochChanged)))
            .unwrap();
        assert_eq!((gap.after, gap.before), (Some(500), None));
        p.start_at(2);
        assert_eq!(
            p.admit(Some(3)),
            Admit::Deliver(None),
            "small offsets again"
        );
        assert_eq!(
            p.recovered("a", &recovery(true, 4, None)),
            None,
            "a complete recovery is no gap"
        );
    }

    #[test]
    fn without_a_position_a_reconnect_is_an_unmeasured_gap() {
        let p = Position::default();
        assert_eq!(p.untracked("a").unwrap().reason, GapReason::NoHistory);
        let mut q = Position::default();
        q.start_at(0);
        assert_eq!(q.untracked("a"), None);
    }
}
