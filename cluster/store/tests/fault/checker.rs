//! Checks a recorded history: linearizability of each key as a register with
//! compare-and-set (Wing & Gong's search with memoisation), and revision order.

use std::collections::{BTreeMap, HashSet};

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Set the value.
    Write(String),
    /// Set `new` if the value is `expected`.
    Cas { expected: String, new: String },
    /// Read the value.
    Read,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; for a CAS whether it applied, for a read the value seen.
    Ok {
        applied: bool,
        value: Option<String>,
        revision: u64,
    },
    /// Definitely not applied.
    Fail,
    /// Timed out or lost: may or may not have applied.
    Unknown,
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    pub key: String,
    pub kind: Kind,
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

/// The state an unobserved write leaves behind: a value no read or compare matches.
const JUNK: &str = "\u{0}unobserved";

/// Finds a linearisation of one key's operations, or says why there is none.
///
/// Operations with an unknown outcome may or may not have taken effect, at any time
/// after their invocation. Those whose value nobody ever read are interchangeable:
/// each can only have replaced the value with one nobody sees, so they are counted
/// rather than searched one by one (which would be exponential in their number).
fn linearizable(ops: &[&Op]) -> Result<(), String> {
    let observed: HashSet<&str> = ops
        .iter()
        .filter_map(|o| match (&o.kind, &o.outcome) {
            (Kind::Read, Outcome::Ok { value: Some(v), .. }) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let unobserved_unknown = |o: &Op| {
        o.outcome == Outcome::Unknown
            && match &o.kind {
                Kind::Write(v) | Kind::Cas { new: v, .. } => !observed.contains(v.as_str()),
                Kind::Read => false,
            }
    };
    let mut junk_invokes: Vec<u64> = ops
        .iter()
        .filter(|o| unobserved_unknown(o))
        .map(|o| o.invoke)
        .collect();
    junk_invokes.sort_unstable();
    // Failed operations, unknown reads and unobserved unknown writes are not searched.
    let ops: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| !matches!(o.outcome, Outcome::Fail))
        .filter(|o| !(o.kind == Kind::Read && o.outcome == Outcome::Unknown))
        .filter(|o| !unobserved_unknown(o))
        .collect();
    let n = ops.len();
    let complete = |o: &Op| {
        if o.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            o.complete
        }
    };
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, Option<String>, usize)> = HashSet::new();
    // Depth-first over (placed operations, value, unobserved writes used).
    let mut stack: Vec<(Vec<u64>, Option<String>, usize)> = vec![(vec![0; words], None, 0)];
    while let Some((done, state, junk_used)) = stack.pop() {
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        if (0..n).all(|i| is_done(i) || ops[i].outcome == Outcome::Unknown) {
            return Ok(());
        }
        if !seen.insert((done.clone(), state.clone(), junk_used)) {
            continue;
        }
        let horizon = (0..n)
            .filter(|&i| !is_done(i))
            .map(|i| complete(ops[i]))
            .min()
            .unwrap_or(u64::MAX);
        let junk_available = junk_invokes.iter().take_while(|&&t| t <= horizon).count();
        if junk_available > junk_used && state.as_deref() != Some(JUNK) {
            stack.push((done.clone(), Some(JUNK.to_owned()), junk_used + 1));
        }
        for i in 0..n {
            if is_done(i) || ops[i].invoke > horizon {
                continue;
            }
            let next_state = match (&ops[i].kind, &ops[i].outcome) {
                (Kind::Write(v), _) => Some(Some(v.clone())),
                (Kind::Cas { expected, new }, Outcome::Ok { applied: true, .. }) => {
                    (state.as_deref() == Some(expected.as_str())).then(|| Some(new.clone()))
                }
                (Kind::Cas { expected, .. }, Outcome::Ok { applied: false, .. }) => {
                    (state.as_deref() != Some(expected.as_str())).then(|| state.clone())
                }
                (Kind::Cas { expected, new }, Outcome::Unknown) => {
                    Some(if state.as_deref() == Some(expected.as_str()) {
                        Some(new.clone())
                    } else {
                        state.clone()
                    })
                }
                (Kind::Read, Outcome::Ok { value, .. }) => (value == &state).then(|| state.clone()),
                _ => None,
            };
            if let Some(next_state) = next_state {
                let mut next = done.clone();
                next[i / 64] |= 1 << (i % 64);
                stack.push((next, next_state, junk_used));
            }
        }
    }
    Err(format!(
        "no linearisation of {n} operations on key {:?}",
        ops.first().map(|o| &o.key)
    ))
}

/// Everything the history shows; empty when it is sound.
pub fn check(history: &[Op]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for ops in by_key.values() {
        if let Err(why) = linearizable(ops) {
            anomalies.push(why);
        }
    }
    // Revisions: acknowledged writes have distinct revisions that follow real time, and
    // a read sees at least the revision of every write that finished before it began.
    let writes: Vec<&Op> = history
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok { applied: true, .. }) && o.kind != Kind::Read)
        .collect();
    let mut revisions = HashSet::new();
    for w in &writes {
        let Outcome::Ok { revision, .. } = w.outcome else {
            continue;
        };
        if !revisions.insert(revision) {
            anomalies.push(format!("revision {revision} acknowledged for two writes"));
        }
    }
    for a in &writes {
        let Outcome::Ok { revision: ra, .. } = a.outcome else {
            continue;
        };
        for b in history.iter().filter(|b| b.invoke > a.complete) {
            if let Outcome::Ok {
                revision: rb,
                applied,
                ..
            } = b.outcome
            {
                let must_exceed = b.kind != Kind::Read && applied;
                if (must_exceed && rb <= ra) || rb < ra {
                    anomalies.push(format!(
                        "revision went back: {:?} at {ra} finished before {:?} began, which saw {rb}",
                        a.kind, b.kind
                    ));
                }
            }
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, invoke: u64, complete: u64, outcome: Outcome) -> Op {
        Op {
            key: "k".into(),
            kind,
            invoke,
            complete,
            outcome,
        }
    }

    fn ok(value: Option<&str>, revision: u64) -> Outcome {
        Outcome::Ok {
            applied: true,
            value: value.map(str::to_owned),
            revision,
        }
    }

    #[test]
    fn a_stale_read_is_caught_and_a_concurrent_one_is_fine() {
        let good = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 1)),
            op(Kind::Write("b".into()), 20, 30, ok(None, 2)),
            op(Kind::Read, 25, 40, ok(Some("a"), 2)),
        ];
        assert!(check(&good).is_empty(), "{:?}", check(&good));
        let stale = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 1)),
            op(Kind::Write("b".into()), 20, 30, ok(None, 2)),
            op(Kind::Read, 35, 40, ok(Some("a"), 2)),
        ];
        assert!(!check(&stale).is_empty());
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_and_an_unknown_one_may_go_either_way() {
        let lost = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 1)),
            op(Kind::Read, 20, 30, ok(None, 1)),
        ];
        assert!(!check(&lost).is_empty());
        let unknown = vec![
            op(Kind::Write("a".into()), 0, 10, Outcome::Unknown),
            op(Kind::Read, 20, 30, ok(None, 0)),
            op(Kind::Read, 40, 50, ok(None, 0)),
        ];
        assert!(check(&unknown).is_empty(), "{:?}", check(&unknown));
    }

    #[test]
    fn compare_and_set_must_see_the_value_it_compares() {
        let wrong = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 1)),
            op(
                Kind::Cas {
                    expected: "z".into(),
                    new: "b".into(),
                },
                20,
                30,
                ok(None, 2),
            ),
        ];
        assert!(!check(&wrong).is_empty());
        let refused = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 1)),
            op(
                Kind::Cas {
                    expected: "z".into(),
                    new: "b".into(),
                },
                20,
                30,
                Outcome::Ok {
                    applied: false,
                    value: None,
                    revision: 1,
                },
            ),
            op(Kind::Read, 40, 50, ok(Some("a"), 1)),
        ];
        assert!(check(&refused).is_empty(), "{:?}", check(&refused));
    }

    #[test]
    fn an_unobserved_unknown_write_may_explain_a_refused_compare() {
        let history = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 1)),
            op(Kind::Write("lost".into()), 12, 14, Outcome::Unknown),
            op(
                Kind::Cas {
                    expected: "a".into(),
                    new: "b".into(),
                },
                20,
                30,
                Outcome::Ok {
                    applied: false,
                    value: None,
                    revision: 2,
                },
            ),
        ];
        assert!(check(&history).is_empty(), "{:?}", check(&history));
        let impossible = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 1)),
            op(
                Kind::Cas {
                    expected: "a".into(),
                    new: "b".into(),
                },
                20,
                30,
                Outcome::Ok {
                    applied: false,
                    value: None,
                    revision: 2,
                },
            ),
        ];
        assert!(!check(&impossible).is_empty());
    }

    #[test]
    fn revisions_must_follow_real_time() {
        let backwards = vec![
            op(Kind::Write("a".into()), 0, 10, ok(None, 5)),
            Op {
                key: "other".into(),
                ..op(Kind::Write("b".into()), 20, 30, ok(None, 4))
            },
        ];
        assert!(
            check(&backwards)
                .iter()
                .any(|a| a.contains("revision went back"))
        );
    }
}
