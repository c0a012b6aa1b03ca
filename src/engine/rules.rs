//! Channel options by pattern (`[[channels]]` in the config): a channel's default
//! priority, its history size and its throttle.
//!
//! A rule's pattern is a channel name (`orders`), a prefix ending in `*` (`metrics.*`
//! matches `metrics.cpu` and `metrics.` itself), or `*` alone (every channel). Each option
//! comes from the first rule, in config order, that matches the channel and sets it; a
//! channel no rule sets an option for gets the server-wide default. Resolving is a scan of
//! the rules with string comparisons, done once per published event (not per frame) and
//! once per channel log created; with no rules it is an empty loop.

use crate::config::ChannelRule;
use crate::event::Priority;

/// A rule's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// This channel only.
    Exact(String),
    /// Every channel starting with this (empty: every channel).
    Prefix(String),
}

impl Pattern {
    fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, channel: &str) -> bool {
        match self {
            Self::Exact(name) => name == channel,
            Self::Prefix(prefix) => channel.starts_with(prefix.as_str()),
        }
    }
}

/// The configured rules, ready to match channels against.
#[derive(Debug, Default)]
pub(crate) struct ChannelRules {
    rules: Box<[(Pattern, ChannelRule)]>,
}

impl ChannelRules {
    /// The rules of the config, in order. Patterns are checked by `Config::validate`.
    pub(crate) fn new(rules: &[ChannelRule]) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|rule| (Pattern::parse(&rule.pattern), rule.clone()))
                .collect(),
        }
    }

    /// The first value `option` gives among the rules that match `channel`.
    fn first<T>(&self, channel: &str, option: impl Fn(&ChannelRule) -> Option<T>) -> Option<T> {
        self.rules
            .iter()
            .filter(|(pattern, _)| pattern.matches(channel))
            .find_map(|(_, rule)| option(rule))
    }

    /// The priority of an event published on `channel` without one.
    #[inline]
    pub(crate) fn priority(&self, channel: &str) -> Priority {
        if self.rules.is_empty() {
            return Priority::Normal;
        }
        self.first(channel, |rule| rule.priority)
            .unwrap_or_default()
    }

    /// How many events `channel`'s history keeps, if a rule says.
    pub(crate) fn history(&self, channel: &str) -> Option<usize> {
        self.first(channel, |rule| rule.history)
    }

    /// Whether `channel` keeps its presence (off unless a rule turns it on).
    pub(crate) fn presence(&self, channel: &str) -> bool {
        !self.rules.is_empty() && self.first(channel, |rule| rule.presence).unwrap_or(false)
    }

    /// `channel`'s throttle interval, if a rule sets one.
    pub(crate) fn throttle(&self, channel: &str) -> Option<std::time::Duration> {
        self.first(channel, |rule| rule.throttle)
    }
}

/// Why a pattern cannot be used: `None` if it can.
pub(crate) fn pattern_error(pattern: &str) -> Option<String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if name.contains('*') {
        return Some("`*` may only end a pattern".into());
    }
    if name.is_empty() {
        return (pattern != "*").then(|| "is empty".into());
    }
    // A prefix is checked as a channel name would be: `metrics.` is a valid start.
    crate::protocol::channel::validate(name)
        .err()
        .map(|e| format!("is not a channel name or prefix: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, priority: Option<Priority>, history: Option<usize>) -> ChannelRule {
        let mut rule = ChannelRule::new(pattern);
        rule.priority = priority;
        rule.history = history;
        rule
    }

    #[test]
    fn each_option_comes_from_the_first_rule_that_sets_it() {
        let rules = ChannelRules::new(&[
            rule("metrics.cpu", None, Some(10)),
            rule("metrics.*", Some(Priority::Low), Some(500)),
            rule("*", Some(Priority::High), None),
        ]);
        assert_eq!(rules.priority("metrics.cpu"), Priority::Low);
        assert_eq!(rules.history("metrics.cpu"), Some(10));
        assert_eq!(rules.priority("metrics.disk"), Priority::Low);
        assert_eq!(rules.history("metrics.disk"), Some(500));
        assert_eq!(
            rules.priority("metrics"),
            Priority::High,
            "not under `metrics.`"
        );
        assert_eq!(rules.history("metrics"), None);
        assert_eq!(rules.priority("orders"), Priority::High);

        let mut rooms = rule("room.*", None, None);
        rooms.presence = Some(true);
        let mut quiet = rule("room.quiet", None, None);
        quiet.presence = Some(false);
        let with_presence = ChannelRules::new(&[quiet, rooms]);
        assert!(with_presence.presence("room.blue"));
        assert!(!with_presence.presence("room.quiet"));
        assert!(!with_presence.presence("orders"));

        let none = ChannelRules::default();
        assert!(!none.presence("orders"));
        assert_eq!(none.priority("orders"), Priority::Normal);
        assert_eq!(none.history("orders"), None);
    }

    #[test]
    fn patterns_are_names_prefixes_or_everything() {
        for ok in ["*", "orders", "metrics.*", "a:b/c-*"] {
            assert_eq!(pattern_error(ok), None, "{ok}");
        }
        for bad in ["", "**", "me*trics", "*.cpu", "bad name", "ü*"] {
            assert!(pattern_error(bad).is_some(), "{bad}");
        }
    }
}
