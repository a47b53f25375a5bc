//! The exact index: each followed endpoint's KV-cache blocks as its event stream reports them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use switchyard_balance::EndpointState;
use switchyard_core::{EndpointId, KvEvent, KvEventKind};
use tokio::time::Instant;

use crate::prefix::policy::ExactMatches;
use crate::prefix::{IndexStats, PrefixIndex};

/// Why an update was not applied. The stream that brought it should reconnect and resume from
/// [`KvFeed::resume_point`]; until it has, the endpoint is routed on the approximate index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The endpoint is not followed (it left the pool, or was never added).
    #[error("endpoint {0} is not followed")]
    NotFollowed(EndpointId),
    /// Events came before any snapshot, or from another instance than the snapshot's.
    #[error("endpoint {0}: events without a snapshot of their instance")]
    NotSynced(EndpointId),
    /// An event is missing: the stream skipped from `expected` to `got`.
    #[error("endpoint {endpoint}: expected event {expected}, got {got}")]
    Gap {
        /// The endpoint.
        endpoint: EndpointId,
        /// The sequence number due.
        expected: u64,
        /// The one that came.
        got: u64,
    },
}

/// One followed endpoint's stream, as far as it has been applied.
#[derive(Debug)]
struct Stream {
    slot: u32,
    /// The replica instance the blocks belong to, once a snapshot came.
    instance: Option<u64>,
    /// The last event applied (or the snapshot's sequence).
    sequence: u64,
    /// Events flow: a snapshot was applied and nothing went wrong since.
    synced: bool,
    /// When the stream last said anything (events or a heartbeat).
    heard: Instant,
}

#[derive(Debug)]
struct State {
    index: PrefixIndex,
    streams: BTreeMap<EndpointId, Stream>,
    free: Vec<u32>,
    scratch: Vec<u32>,
}

/// Which KV-cache blocks each followed endpoint holds, exactly, from its replica's stream of
/// block events (shared between the policy that reads it and the subscribers that feed it).
///
/// Each endpoint keeps at most `capacity_blocks` blocks, least recently stored evicted first, so
/// a replica that floods events cannot grow the index past `endpoints × capacity_blocks`
/// entries. Updates carry the replica's instance id and sequence numbers: an event that does
/// not follow the last one applied is refused (the stream resumes from
/// [`resume_point`](Self::resume_point)), a repeated one is skipped, and a snapshot of another
/// instance (a restarted replica) replaces everything held for the endpoint.
#[derive(Debug)]
pub struct KvFeed {
    capacity_blocks: u32,
    stale_after: Duration,
    state: Mutex<State>,
}

impl KvFeed {
    /// A feed keeping `capacity_blocks` per endpoint, that counts an endpoint's stream stale when
    /// it has said nothing for `stale_after`.
    pub fn new(capacity_blocks: u32, stale_after: Duration) -> Self {
        let capacity_blocks = capacity_blocks.max(1);
        Self {
            capacity_blocks,
            stale_after,
            state: Mutex::new(State {
                index: PrefixIndex::new(0, capacity_blocks),
                streams: BTreeMap::new(),
                free: Vec::new(),
                scratch: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts following `endpoint` (nothing known yet). Following one already followed keeps
    /// what is known.
    pub fn follow(&self, endpoint: &EndpointId) {
        let mut state = self.lock();
        let state = &mut *state;
        if state.streams.contains_key(endpoint) {
            return;
        }
        let slot = state.free.pop().unwrap_or(state.index.slots() as u32);
        state.index.ensure_slots(slot as usize + 1, self.capacity_blocks);
        let heard = Instant::now();
        state
            .streams
            .insert(endpoint.clone(), Stream { slot, instance: None, sequence: 0, synced: false, heard });
    }

    /// Stops following `endpoint` and forgets its blocks (it left the pool).
    pub fn forget(&self, endpoint: &EndpointId) {
        let mut state = self.lock();
        if let Some(stream) = state.streams.remove(endpoint) {
            state.index.clear_slot(stream.slot as usize);
            state.free.push(stream.slot);
        }
    }

    /// Whether `endpoint` is followed.
    pub fn follows(&self, endpoint: &EndpointId) -> bool {
        self.lock().streams.contains_key(endpoint)
    }

    /// Where `endpoint`'s stream should resume: the instance and last sequence applied, once a
    /// snapshot was (`None`: ask for a snapshot).
    pub fn resume_point(&self, endpoint: &EndpointId) -> Option<(u64, u64)> {
        let state = self.lock();
        let stream = state.streams.get(endpoint)?;
        stream.instance.map(|instance| (instance, stream.sequence))
    }

    /// Replaces what `endpoint` holds by `blocks` (least recently used first) of replica
    /// `instance`, as of event `sequence`. Blocks of another instance are forgotten.
    pub fn apply_snapshot(
        &self,
        endpoint: &EndpointId,
        instance: u64,
        sequence: u64,
        blocks: &[u64],
    ) -> Result<(), FeedError> {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let stream =
            state.streams.get_mut(endpoint).ok_or_else(|| FeedError::NotFollowed(endpoint.clone()))?;
        state.index.clear_slot(stream.slot as usize);
        state.index.insert(stream.slot as usize, blocks);
        stream.instance = Some(instance);
        stream.sequence = sequence;
        stream.synced = true;
        stream.heard = now;
        Ok(())
    }

    /// Applies `endpoint`'s `events` of replica `instance`, in order: one already applied is
    /// skipped; one that skips a sequence stops the update with [`FeedError::Gap`] (the events
    /// before it stay applied) and the endpoint waits for its stream to resume. No events is a
    /// heartbeat: the stream is alive.
    pub fn apply_events(
        &self,
        endpoint: &EndpointId,
        instance: u64,
        events: &[KvEvent],
    ) -> Result<(), FeedError> {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let stream =
            state.streams.get_mut(endpoint).ok_or_else(|| FeedError::NotFollowed(endpoint.clone()))?;
        if !stream.synced || stream.instance != Some(instance) {
            stream.synced = false;
            return Err(FeedError::NotSynced(endpoint.clone()));
        }
        stream.heard = now;
        let slot = stream.slot as usize;
        for event in events {
            if event.sequence <= stream.sequence {
                continue;
            }
            if event.sequence != stream.sequence + 1 {
                stream.synced = false;
                return Err(FeedError::Gap {
                    endpoint: endpoint.clone(),
                    expected: stream.sequence + 1,
                    got: event.sequence,
                });
            }
            match event.kind {
                KvEventKind::Stored => state.index.insert(slot, &[event.block]),
                KvEventKind::Removed => {
                    state.index.remove_block(slot, event.block);
                }
            }
            stream.sequence = event.sequence;
        }
        Ok(())
    }

    /// Marks `endpoint`'s stream down (disconnected): it is routed on the approximate index
    /// until a resumed stream has delivered again. What it held is kept for the resume.
    pub fn mark_down(&self, endpoint: &EndpointId) {
        if let Some(stream) = self.lock().streams.get_mut(endpoint) {
            stream.synced = false;
        }
    }

    /// Whether `endpoint`'s stream is live: synced, and heard from within `stale_after`.
    pub fn is_live(&self, endpoint: &EndpointId) -> bool {
        let now = Instant::now();
        self.lock().streams.get(endpoint).is_some_and(|s| self.live(s, now))
    }

    fn live(&self, stream: &Stream, now: Instant) -> bool {
        stream.synced && now.saturating_duration_since(stream.heard) <= self.stale_after
    }

    /// How many of `blocks`' leading blocks `endpoint` holds, as far as the feed knows (whether
    /// or not its stream is live).
    pub fn longest_match(&self, endpoint: &EndpointId, blocks: &[u64]) -> u32 {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(stream) = state.streams.get(endpoint) else { return 0 };
        state.scratch.resize(state.index.slots(), 0);
        state.index.longest_matches(blocks, &mut state.scratch);
        state.scratch.get(stream.slot as usize).copied().unwrap_or(0)
    }

    /// What the index holds: entries and bytes against its bound.
    pub fn stats(&self) -> IndexStats {
        let state = self.lock();
        IndexStats {
            entries: state.index.len(),
            capacity: state.index.capacity(),
            memory_bytes: state.index.memory_bytes(),
        }
    }

    /// Blocks held for `endpoint`.
    pub fn blocks_of(&self, endpoint: &EndpointId) -> usize {
        let state = self.lock();
        state.streams.get(endpoint).map_or(0, |s| state.index.slot_len(s.slot as usize))
    }
}

impl ExactMatches for KvFeed {
    fn exact_matches(&self, eligible: &[Arc<EndpointState>], blocks: &[u64], out: &mut Vec<Option<u32>>) {
        out.clear();
        out.resize(eligible.len(), None);
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        if !state.streams.values().any(|s| self.live(s, now)) {
            return;
        }
        state.scratch.resize(state.index.slots(), 0);
        state.index.longest_matches(blocks, &mut state.scratch);
        for (i, e) in eligible.iter().enumerate() {
            if let Some(stream) = state.streams.get(e.id())
                && self.live(stream, now)
            {
                out[i] = state.scratch.get(stream.slot as usize).copied();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EndpointId {
        EndpointId::from(s)
    }

    #[tokio::test(start_paused = true)]
    async fn events_follow_a_snapshot_in_order_and_repeats_are_skipped() {
        let feed = KvFeed::new(100, Duration::from_secs(5));
        let a = id("a");
        assert_eq!(feed.apply_snapshot(&a, 1, 0, &[]), Err(FeedError::NotFollowed(a.clone())));
        feed.follow(&a);
        assert!(matches!(feed.apply_events(&a, 7, &[KvEvent::stored(1, 5)]), Err(FeedError::NotSynced(_))));
        feed.apply_snapshot(&a, 7, 10, &[1, 2]).unwrap();
        assert!(feed.is_live(&a));
        feed.apply_events(&a, 7, &[KvEvent::stored(9, 99), KvEvent::stored(11, 3), KvEvent::removed(12, 1)])
            .unwrap();
        assert_eq!(feed.resume_point(&a), Some((7, 12)));
        assert_eq!(feed.longest_match(&a, &[2, 3]), 2);
        assert_eq!(feed.longest_match(&a, &[1]), 0, "removed");
        assert_eq!(feed.longest_match(&a, &[99]), 0, "an event the snapshot already held is skipped");
        // A repeat of what was applied changes nothing; a gap stops the stream.
        feed.apply_events(&a, 7, &[KvEvent::removed(12, 1), KvEvent::stored(13, 4)]).unwrap();
        assert_eq!(feed.blocks_of(&a), 3);
        let gap = feed.apply_events(&a, 7, &[KvEvent::stored(15, 6)]);
        assert_eq!(gap, Err(FeedError::Gap { endpoint: a.clone(), expected: 14, got: 15 }));
        assert!(!feed.is_live(&a));
        assert_eq!(feed.resume_point(&a), Some((7, 13)), "resume from the last event applied");
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_of_a_new_instance_forgets_the_old_blocks() {
        let feed = KvFeed::new(100, Duration::from_secs(5));
        let a = id("a");
        feed.follow(&a);
        feed.apply_snapshot(&a, 1, 3, &[1, 2, 3]).unwrap();
        feed.mark_down(&a);
        assert!(!feed.is_live(&a));
        feed.apply_snapshot(&a, 2, 1, &[8]).unwrap();
        assert_eq!(feed.longest_match(&a, &[1]), 0);
        assert_eq!(feed.longest_match(&a, &[8]), 1);
        assert!(matches!(feed.apply_events(&a, 1, &[KvEvent::stored(4, 4)]), Err(FeedError::NotSynced(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_goes_stale() {
        let feed = KvFeed::new(100, Duration::from_secs(5));
        let a = id("a");
        feed.follow(&a);
        feed.apply_snapshot(&a, 1, 0, &[]).unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        feed.apply_events(&a, 1, &[]).unwrap(); // heartbeat
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(feed.is_live(&a));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!feed.is_live(&a));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_replica_cannot_grow_the_index_past_its_bound() {
        let capacity = 1_000;
        let feed = KvFeed::new(capacity, Duration::from_secs(5));
        let (a, b) = (id("a"), id("b"));
        feed.follow(&a);
        feed.follow(&b);
        feed.apply_snapshot(&b, 1, 0, &(0..500).collect::<Vec<_>>()).unwrap();
        // A snapshot larger than the bound, then a flood of stores and never a removal.
        feed.apply_snapshot(&a, 1, 0, &(1_000_000..1_005_000).collect::<Vec<_>>()).unwrap();
        assert_eq!(feed.blocks_of(&a), capacity as usize);
        let mut peak_bytes = 0;
        for round in 0..200u64 {
            let events: Vec<_> =
                (0..1_000).map(|k| KvEvent::stored(round * 1_000 + k + 1, round * 7_919 + k)).collect();
            feed.apply_events(&a, 1, &events).unwrap();
            let stats = feed.stats();
            assert!(stats.entries <= stats.capacity, "{stats:?}");
            peak_bytes = peak_bytes.max(stats.memory_bytes);
        }
        assert_eq!(feed.blocks_of(&a), capacity as usize);
        assert_eq!(feed.blocks_of(&b), 500, "the other endpoint's blocks are not evicted for it");
        assert_eq!(feed.stats().capacity, 2 * capacity as usize);
        // 200,000 blocks streamed; the index holds memory for its bound of 2,000 entries only.
        assert!(peak_bytes <= 2 * capacity as usize * 100, "{peak_bytes} bytes");
    }
}
