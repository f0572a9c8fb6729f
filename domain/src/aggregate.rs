//! The small aggregate layer the services build on.
//!
//! `eventually` 0.4 (the released version) predates tokio 1 and has no snapshots, so the
//! engine carries its own two-trait layer instead (see `docs/adr/0003-own-aggregate-layer.md`).

/// An event-sourced aggregate: state rebuilt by folding events, commands decided against it.
///
/// A command decides exactly one event. That keeps "one command's events are atomic" true by
/// construction: one event is one record on the log.
pub trait Aggregate: Default + Clone {
    /// What a caller asks the aggregate to do.
    type Command;
    /// What happened, as recorded on the log.
    type Event;
    /// Why a command was refused.
    type Error;

    /// Decides the event a command produces in the current state, or refuses it.
    fn decide(&self, command: &Self::Command) -> Result<Self::Event, Self::Error>;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Folds the event at stream `version`: for a state that remembers where an event is,
    /// so that a snapshot can leave the event's bulk out and a read fetch it back.
    fn apply_at(&mut self, event: &Self::Event, version: u64) {
        let _ = version;
        self.apply(event);
    }
}

/// An aggregate state together with the stream version it reflects (0 = no events yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Versioned<A> {
    /// The folded state.
    pub state: A,
    /// How many events have been folded into `state`.
    pub version: u64,
}

impl<A: Aggregate> Versioned<A> {
    /// Folds the next event of the stream.
    pub fn apply(&mut self, event: &A::Event) {
        self.version += 1;
        self.state.apply_at(event, self.version);
    }

    /// Rebuilds a state from a whole stream of events.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a A::Event>) -> Self
    where
        A::Event: 'a,
    {
        let mut versioned = Self::default();
        for event in events {
            versioned.apply(event);
        }
        versioned
    }
}
