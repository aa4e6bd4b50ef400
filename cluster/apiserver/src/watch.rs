//! Watch fan-out. Each resource type has one [`Hub`]: one watch on this node's copy of
//! the store, decoding each change once into a shared event, keeping the latest
//! events in a window and broadcasting them to every client watch of that type. A
//! client resuming from a resourceVersion inside the window is served from it; one
//! from further back gets a store watch of its own (history permitting) and one from
//! compacted history gets `410 Expired`, as kube-apiserver's watch cache does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use cairn_store::types::EventKind;
use serde_json::Value;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::storage::Storage;

/// How many events each hub keeps for clients that resume.
const WINDOW: usize = 8192;
/// How many events a slow client may fall behind the broadcast before it catches up
/// from the window.
const CHANNEL: usize = 4096;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created (or, for one watch, came to match its selectors).
    Added,
    /// Changed.
    Modified,
    /// Removed (or stopped matching).
    Deleted,
}

impl EventType {
    /// The watch protocol's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object, decoded once for every watcher.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// The revision of the write.
    pub revision: u64,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for a delete: its last state), its
    /// resourceVersion the event's revision.
    pub object: Arc<Value>,
    /// The object before the change, if it existed.
    pub previous: Option<Arc<Value>>,
}

struct Window {
    /// Every event with a revision above this one is in `events` (or still to come).
    low: u64,
    /// The highest revision the hub has processed.
    seen: u64,
    events: VecDeque<Arc<WatchEvent>>,
    alive: bool,
}

/// One resource type's shared watch.
pub struct Hub {
    window: Mutex<Window>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

/// A client's view of a hub: the window's events after its revision, then the live
/// broadcast.
pub struct Subscription {
    /// Events already in the window, after the revision asked for.
    pub backlog: Vec<Arc<WatchEvent>>,
    /// The live events.
    pub live: broadcast::Receiver<Arc<WatchEvent>>,
}

/// Why a hub cannot serve a revision.
#[derive(Debug, PartialEq, Eq)]
pub enum TooOld {
    /// Older than the window: a store watch of its own can serve it.
    BeforeWindow,
    /// The hub stopped (its store watch ended); a new one is needed.
    Stopped,
}

impl Hub {
    /// Starts following `resource` from revision `from + 1` on.
    fn start(storage: &Storage, resource: &ResourceType, from: u64) -> Result<Arc<Self>, ApiError> {
        let mut watch = storage.watch(&resource.key_prefix(), from + 1)?;
        let (tx, _) = broadcast::channel(CHANNEL);
        let hub = Arc::new(Self {
            window: Mutex::new(Window {
                low: from,
                seen: from,
                events: VecDeque::new(),
                alive: true,
            }),
            tx,
        });
        let weak = Arc::downgrade(&hub);
        let storage = storage.clone();
        let plural = resource.plural.clone();
        tokio::spawn(async move {
            while let Some(applied) = watch.next().await {
                let Some(hub) = weak.upgrade() else { return };
                let applied = match applied {
                    Ok(applied) => applied,
                    Err(err) => {
                        warn!(resource = %plural, error = %err, "store watch failed");
                        break;
                    }
                };
                for event in applied.events {
                    match decode(&storage, applied.revision, &event) {
                        Ok(event) => hub.publish(event),
                        Err(err) => {
                            warn!(resource = %plural, error = %err, "undecodable event skipped")
                        }
                    }
                }
                hub.advance(applied.revision);
            }
            if let Some(hub) = weak.upgrade()
                && let Ok(mut window) = hub.window.lock()
            {
                window.alive = false;
            }
            debug!(resource = %plural, "watch hub stopped");
        });
        Ok(hub)
    }

    fn publish(&self, event: WatchEvent) {
        let event = Arc::new(event);
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        window.seen = window.seen.max(event.revision);
        window.events.push_back(Arc::clone(&event));
        while window.events.len() > WINDOW {
            if let Some(old) = window.events.pop_front() {
                window.low = old.revision;
            }
        }
        // Sent while the window is locked, so a subscriber sees each event exactly
        // once: in its backlog or on the channel.
        let _ = self.tx.send(event);
    }

    fn advance(&self, revision: u64) {
        if let Ok(mut window) = self.window.lock() {
            window.seen = window.seen.max(revision);
        }
    }

    /// The highest revision processed: every event up to it has been published.
    pub fn seen(&self) -> u64 {
        self.window.lock().map(|w| w.seen).unwrap_or(0)
    }

    /// The events after `revision`, then the live ones.
    pub fn subscribe(&self, revision: u64) -> Result<Subscription, TooOld> {
        let Ok(window) = self.window.lock() else {
            return Err(TooOld::Stopped);
        };
        if !window.alive {
            return Err(TooOld::Stopped);
        }
        if revision < window.low {
            return Err(TooOld::BeforeWindow);
        }
        let live = self.tx.subscribe();
        let backlog = window
            .events
            .iter()
            .filter(|e| e.revision > revision)
            .cloned()
            .collect();
        Ok(Subscription { backlog, live })
    }

    /// The window's events after `revision`, for a client that fell behind the
    /// broadcast; `None` when they are no longer all there.
    pub fn since(&self, revision: u64) -> Option<Vec<Arc<WatchEvent>>> {
        let window = self.window.lock().ok()?;
        if revision < window.low {
            return None;
        }
        Some(
            window
                .events
                .iter()
                .filter(|e| e.revision > revision)
                .cloned()
                .collect(),
        )
    }
}

/// Decodes one store event into a watch event.
pub fn decode(
    storage: &Storage,
    revision: u64,
    event: &cairn_store::types::Event,
) -> Result<WatchEvent, ApiError> {
    let previous = match &event.prev {
        Some(prev) => Some(Arc::new(storage.decode(prev, prev.mod_revision)?)),
        None => None,
    };
    Ok(match event.kind {
        EventKind::Put => WatchEvent {
            revision,
            kind: if previous.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            },
            object: Arc::new(storage.decode(&event.kv, revision)?),
            previous,
        },
        EventKind::Delete => {
            let Some(prev) = &event.prev else {
                return Err(ApiError::Internal(
                    "a delete event without the deleted value".into(),
                ));
            };
            WatchEvent {
                revision,
                kind: EventType::Deleted,
                // The last state, at the deleting revision (as kube-apiserver does).
                object: Arc::new(storage.decode(prev, revision)?),
                previous,
            }
        }
    })
}

/// The hubs of every resource type, created on first use.
#[derive(Default)]
pub struct Hubs {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

impl Hubs {
    /// The hub of `resource`, started (from `now`, the latest revision) if it has
    /// none running.
    pub fn get(
        &self,
        storage: &Storage,
        resource: &ResourceType,
        now: u64,
    ) -> Result<Arc<Hub>, ApiError> {
        let key = resource.key_prefix();
        let mut hubs = self
            .hubs
            .lock()
            .map_err(|_| ApiError::Internal("the watch hubs lock is poisoned".into()))?;
        if let Some(hub) = hubs.get(&key)
            && hub.window.lock().map(|w| w.alive).unwrap_or(false)
        {
            return Ok(Arc::clone(hub));
        }
        let hub = Hub::start(storage, resource, now)?;
        hubs.insert(key, Arc::clone(&hub));
        Ok(hub)
    }
}

/// Where a client watch gets its events: a hub, or a store watch of its own when it
/// resumes from before the hub's window.
pub enum Source {
    /// Shared.
    Hub {
        /// The hub.
        hub: Arc<Hub>,
        /// Its events not yet handed out.
        pending: VecDeque<Arc<WatchEvent>>,
        /// The live channel.
        live: broadcast::Receiver<Arc<WatchEvent>>,
        /// The last revision handed out.
        last: u64,
    },
    /// Own store watch.
    Store {
        /// The watch.
        watch: cairn_store::node::Watch,
        /// Decoding.
        storage: Storage,
        /// Events of the current revision not yet handed out.
        pending: VecDeque<Arc<WatchEvent>>,
    },
}

impl Source {
    /// Events after `revision` of `resource`: from the hub when it has them, else
    /// from a store watch of their own; `Expired` when history is compacted.
    pub fn open(
        hubs: &Hubs,
        storage: &Storage,
        resource: &ResourceType,
        revision: u64,
        now: u64,
    ) -> Result<Self, ApiError> {
        let hub = hubs.get(storage, resource, now.max(revision))?;
        match hub.subscribe(revision) {
            Ok(sub) => Ok(Source::Hub {
                hub,
                pending: sub.backlog.into(),
                live: sub.live,
                last: revision,
            }),
            Err(_) => {
                let watch = storage.watch(&resource.key_prefix(), revision + 1)?;
                Ok(Source::Store {
                    watch,
                    storage: storage.clone(),
                    pending: VecDeque::new(),
                })
            }
        }
    }

    /// The next event; `Ok(None)` when the source ended; `Err(Expired)` when the
    /// client fell so far behind that the window no longer has its events.
    pub async fn next(&mut self) -> Result<Option<Arc<WatchEvent>>, ApiError> {
        match self {
            Source::Hub {
                hub,
                pending,
                live,
                last,
            } => loop {
                if let Some(event) = pending.pop_front() {
                    *last = (*last).max(event.revision);
                    return Ok(Some(event));
                }
                match live.recv().await {
                    Ok(event) => {
                        if event.revision <= *last {
                            continue; // already handed out from the backlog
                        }
                        *last = event.revision;
                        return Ok(Some(event));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => match hub.since(*last) {
                        Some(events) => pending.extend(events),
                        None => {
                            return Err(ApiError::Expired(format!(
                                "too old resource version: {last} (the watch fell behind)"
                            )));
                        }
                    },
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                }
            },
            Source::Store {
                watch,
                storage,
                pending,
            } => loop {
                if let Some(event) = pending.pop_front() {
                    return Ok(Some(event));
                }
                match watch.next().await {
                    Some(Ok(applied)) => {
                        for event in &applied.events {
                            pending.push_back(Arc::new(decode(storage, applied.revision, event)?));
                        }
                    }
                    Some(Err(err)) => return Err(ApiError::Internal(err.to_string())),
                    None => return Ok(None),
                }
            },
        }
    }

    /// The highest revision every event up to which has been handed out, for
    /// bookmarks.
    pub fn bookmark_revision(&self) -> Option<u64> {
        match self {
            Source::Hub {
                hub,
                pending,
                live,
                last,
            } => {
                // Read first: an event published after this is above it, and one
                // published before it is still on the channel if not yet taken.
                let seen = hub.seen();
                (pending.is_empty() && live.is_empty()).then(|| seen.max(*last))
            }
            Source::Store { .. } => None,
        }
    }
}
