//! A dependency-graph scheduler on tokio: a node starts the moment its last
//! dependency succeeds (no polling); independent nodes run concurrently under
//! a cap; a failed node's dependents are skipped at once while unrelated
//! nodes go on; a deadline cancels what is still running.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Its body returned `true`.
    Succeeded,
    /// Its body returned `false` or panicked.
    Failed,
    /// It never ran because dependency `because` failed or was skipped.
    Skipped {
        /// The dependency that did not succeed.
        because: usize,
    },
    /// The deadline passed before it finished.
    Cancelled,
}

/// A node and the nodes it waits for. Dependencies on ids that are not nodes
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node id.
    pub id: usize,
    /// Ids it waits for.
    pub deps: Vec<usize>,
}

/// Run every node of an acyclic graph. `start(id)` returns the node's body,
/// which resolves to whether it succeeded; `on_skip(id, because)` is called as
/// soon as a node is known never to run. Nodes become ready in graph order.
/// Nodes on a cycle (which callers should have rejected) end as cancelled.
pub async fn run_graph<F, Fut>(
    nodes: &[Node],
    max_concurrency: usize,
    deadline: Option<Instant>,
    mut start: F,
    mut on_skip: impl FnMut(usize, usize),
) -> BTreeMap<usize, NodeOutcome>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let ids: BTreeSet<usize> = nodes.iter().map(|n| n.id).collect();
    let mut waiting_on: BTreeMap<usize, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for node in nodes {
        let deps: BTreeSet<usize> = node
            .deps
            .iter()
            .copied()
            .filter(|d| ids.contains(d) && *d != node.id)
            .collect();
        waiting_on.insert(node.id, deps.len());
        for dep in deps {
            dependents.entry(dep).or_default().push(node.id);
        }
    }
    let mut ready: VecDeque<usize> = nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| waiting_on.get(id) == Some(&0))
        .collect();
    let mut outcomes: BTreeMap<usize, NodeOutcome> = BTreeMap::new();
    let mut running: JoinSet<(usize, bool)> = JoinSet::new();
    let mut running_ids: BTreeMap<tokio::task::Id, usize> = BTreeMap::new();
    let cap = max_concurrency.max(1);

    loop {
        while running.len() < cap {
            let Some(id) = ready.pop_front() else { break };
            let body = start(id);
            let handle = running.spawn(async move { (id, body.await) });
            running_ids.insert(handle.id(), id);
        }
        if running.is_empty() {
            break;
        }
        let joined = match deadline {
            Some(deadline) => tokio::select! {
                joined = running.join_next_with_id() => joined,
                () = tokio::time::sleep_until(deadline) => {
                    running.abort_all();
                    break;
                }
            },
            None => running.join_next_with_id().await,
        };
        let Some(joined) = joined else { break };
        let (id, succeeded) = match joined {
            Ok((task_id, (id, ok))) => {
                running_ids.remove(&task_id);
                (id, ok)
            }
            Err(error) => match running_ids.remove(&error.id()) {
                Some(id) => (id, false),
                None => continue,
            },
        };
        if succeeded {
            outcomes.insert(id, NodeOutcome::Succeeded);
            for &dependent in dependents.get(&id).map(Vec::as_slice).unwrap_or_default() {
                if outcomes.contains_key(&dependent) {
                    continue;
                }
                if let Some(count) = waiting_on.get_mut(&dependent) {
                    *count -= 1;
                    if *count == 0 {
                        ready.push_back(dependent);
                    }
                }
            }
        } else {
            outcomes.insert(id, NodeOutcome::Failed);
            skip_dependents(id, &dependents, &mut outcomes, &mut ready, &mut on_skip);
        }
    }
    for node in nodes {
        outcomes.entry(node.id).or_insert(NodeOutcome::Cancelled);
    }
    outcomes
}

fn skip_dependents(
    failed: usize,
    dependents: &BTreeMap<usize, Vec<usize>>,
    outcomes: &mut BTreeMap<usize, NodeOutcome>,
    ready: &mut VecDeque<usize>,
    on_skip: &mut impl FnMut(usize, usize),
) {
    let mut stack = vec![failed];
    while let Some(cause) = stack.pop() {
        for &dependent in dependents
            .get(&cause)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if outcomes.contains_key(&dependent) {
                continue;
            }
            ready.retain(|&r| r != dependent);
            outcomes.insert(dependent, NodeOutcome::Skipped { because: cause });
            on_skip(dependent, cause);
            stack.push(dependent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn node(id: usize, deps: &[usize]) -> Node {
        Node {
            id,
            deps: deps.to_vec(),
        }
    }

    /// Records the peak number of bodies running at once.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    #[tokio::test(start_paused = true)]
    async fn independent_nodes_overlap_and_dependents_wait() {
        let gauge = Arc::new(Gauge::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let nodes = [
            node(0, &[]),
            node(1, &[]),
            node(2, &[]),
            node(3, &[0, 1, 2]),
        ];
        let outcomes = run_graph(
            &nodes,
            8,
            None,
            |id| {
                let gauge = gauge.clone();
                let log = log.clone();
                async move {
                    let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                    gauge.peak.fetch_max(now, Ordering::SeqCst);
                    log.lock().unwrap().push(format!("start {id}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    log.lock().unwrap().push(format!("end {id}"));
                    gauge.now.fetch_sub(1, Ordering::SeqCst);
                    true
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(
            gauge.peak.load(Ordering::SeqCst),
            3,
            "the three roots ran at the same time"
        );
        let log = log.lock().unwrap();
        let start3 = log.iter().position(|l| l == "start 3").unwrap();
        for id in 0..3 {
            assert!(log.iter().position(|l| *l == format!("end {id}")).unwrap() < start3);
        }
        assert!(outcomes.values().all(|o| *o == NodeOutcome::Succeeded));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_cap_is_respected() {
        let gauge = Arc::new(Gauge::default());
        let nodes: Vec<Node> = (0..6).map(|i| node(i, &[])).collect();
        run_graph(
            &nodes,
            2,
            None,
            |_| {
                let gauge = gauge.clone();
                async move {
                    let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                    gauge.peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    gauge.now.fetch_sub(1, Ordering::SeqCst);
                    true
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(gauge.peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_skips_dependents_transitively_but_not_others() {
        let nodes = [
            node(0, &[]),
            node(1, &[0]),
            node(2, &[1]),
            node(3, &[]),
            node(4, &[3]),
        ];
        let mut skipped = Vec::new();
        let outcomes = run_graph(
            &nodes,
            4,
            None,
            |id| async move { id != 0 },
            |id, because| skipped.push((id, because)),
        )
        .await;
        assert_eq!(outcomes[&0], NodeOutcome::Failed);
        assert_eq!(outcomes[&1], NodeOutcome::Skipped { because: 0 });
        assert_eq!(outcomes[&2], NodeOutcome::Skipped { because: 1 });
        assert_eq!(outcomes[&3], NodeOutcome::Succeeded);
        assert_eq!(outcomes[&4], NodeOutcome::Succeeded);
        assert_eq!(skipped, vec![(1, 0), (2, 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_body_counts_as_failed() {
        let nodes = [node(0, &[]), node(1, &[0])];
        let outcomes = run_graph(
            &nodes,
            2,
            None,
            |id| async move {
                if id == 0 {
                    panic!("boom");
                }
                true
            },
            |_, _| {},
        )
        .await;
        assert_eq!(outcomes[&0], NodeOutcome::Failed);
        assert_eq!(outcomes[&1], NodeOutcome::Skipped { because: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_cancels_what_is_left_and_keeps_what_is_done() {
        let nodes = [node(0, &[]), node(1, &[]), node(2, &[1])];
        let deadline = Instant::now() + Duration::from_secs(1);
        let outcomes = run_graph(
            &nodes,
            4,
            Some(deadline),
            |id| async move {
                let secs = if id == 0 { 0 } else { 10 };
                tokio::time::sleep(Duration::from_secs(secs)).await;
                true
            },
            |_, _| {},
        )
        .await;
        assert_eq!(outcomes[&0], NodeOutcome::Succeeded);
        assert_eq!(outcomes[&1], NodeOutcome::Cancelled);
        assert_eq!(outcomes[&2], NodeOutcome::Cancelled);
    }

    #[tokio::test]
    async fn empty_graph() {
        let outcomes = run_graph(&[], 1, None, |_| async { true }, |_, _| {}).await;
        assert!(outcomes.is_empty());
    }
}
