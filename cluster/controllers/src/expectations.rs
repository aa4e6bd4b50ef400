//! Expectations: the creates and deletes a controller asked of the API and has not
//! seen in its cache yet (kube-controller-manager's `ControllerExpectations`). A
//! controller acts on an owner only when they are settled, so a cache that lags its
//! own writes never makes it create a pod twice or delete one more than it meant to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;

/// How long an unobserved write is waited for before the controller looks afresh
/// (kube-controller-manager's expectations timeout).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One owner's outstanding writes.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Objects created, by the key the owner knows them by (a name, a node), not yet
    /// in the cache.
    creating: Vec<String>,
    /// Objects deleted, by uid, still in the cache without a deletion timestamp.
    deleting: Vec<String>,
    since: Option<Instant>,
}

impl Expectations {
    /// Remembers that an object known by `key` was created.
    pub fn created(&mut self, key: impl Into<String>) {
        self.creating.push(key.into());
        self.since.get_or_insert_with(Instant::now);
    }

    /// Remembers that the object with `uid` was deleted.
    pub fn deleted(&mut self, uid: impl Into<String>) {
        self.deleting.push(uid.into());
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether every write has been seen in `objects` (the owner's, from the cache),
    /// each known by `key`; or the oldest waited longer than [`TIMEOUT`]. A settled
    /// owner starts afresh.
    pub fn settled<T: Resource>(
        &mut self,
        objects: &[Arc<T>],
        key: impl Fn(&T) -> Option<String>,
    ) -> bool {
        self.creating
            .retain(|wanted| !objects.iter().any(|o| key(o).as_ref() == Some(wanted)));
        self.deleting.retain(|uid| {
            objects.iter().any(|o| {
                let meta = o.meta();
                meta.uid.as_ref() == Some(uid) && meta.deletion_timestamp.is_none()
            })
        });
        let expired = self.since.is_some_and(|s| s.elapsed() > TIMEOUT);
        if expired || (self.creating.is_empty() && self.deleting.is_empty()) {
            *self = Self::default();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, uid: &str, deleting: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "uid": uid,
                    "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn writes_settle_once_the_cache_shows_them() {
        let by_name = |p: &Pod| p.metadata.name.clone();
        let mut expected = Expectations::default();
        assert!(expected.settled::<Pod>(&[], by_name));
        expected.created("web-0");
        expected.deleted("u-1");
        let old = pod("web-1", "u-1", false);
        assert!(!expected.settled(std::slice::from_ref(&old), by_name));
        // The create is seen; the deleted pod still has no deletion timestamp.
        assert!(!expected.settled(&[pod("web-0", "u-0", false), old], by_name));
        assert!(expected.settled(&[pod("web-1", "u-1", true)], by_name));
    }
}
