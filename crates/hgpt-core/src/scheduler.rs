//! A dependency-graph scheduler on tokio: a node starts the moment its last
//! dependency succeeds (no polling); independent nodes run concurrently under
//! a cap; a failed node's dependents are skipped at once while unrelated
//! nodes go on; a deadline cancels what is still running.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use tokio::sync::mpsc;
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
    start: F,
    on_skip: impl FnMut(usize, usize),
) -> BTreeMap<usize, NodeOutcome>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let (sender, incoming) = mpsc::unbounded_channel();
    let _ = sender.send(nodes.to_vec());
    drop(sender);
    run_growing_graph(incoming, max_concurrency, deadline, start, on_skip).await
}

/// [`run_graph`] for a graph that grows while it runs: nodes arrive in
/// batches on `incoming` (a plan read as it streams), and the run ends when
/// the sender is dropped and every node has ended. A node's dependencies
/// are the nodes of earlier batches or its own batch; ids not among them
/// are ignored, and a node whose dependency already failed is skipped at
/// once. A repeated id is ignored.
pub async fn run_growing_graph<F, Fut>(
    mut incoming: mpsc::UnboundedReceiver<Vec<Node>>,
    max_concurrency: usize,
    deadline: Option<Instant>,
    mut start: F,
    mut on_skip: impl FnMut(usize, usize),
) -> BTreeMap<usize, NodeOutcome>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut graph = Graph::default();
    let mut running: JoinSet<(usize, bool)> = JoinSet::new();
    let mut running_ids: BTreeMap<tokio::task::Id, usize> = BTreeMap::new();
    let cap = max_concurrency.max(1);
    let mut open = true;

    loop {
        while running.len() < cap {
            let Some(id) = graph.ready.pop_front() else {
                break;
            };
            let body = start(id);
            let handle = running.spawn(async move { (id, body.await) });
            running_ids.insert(handle.id(), id);
        }
        if running.is_empty() && !open {
            break;
        }
        let deadline_passed = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            batch = incoming.recv(), if open => match batch {
                Some(nodes) => graph.add(nodes, &mut on_skip),
                None => open = false,
            },
            Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
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
                graph.finished(id, succeeded, &mut on_skip);
            }
            () = deadline_passed => {
                running.abort_all();
                break;
            }
        }
    }
    let Graph {
        order,
        mut outcomes,
        ..
    } = graph;
    for id in order {
        outcomes.entry(id).or_insert(NodeOutcome::Cancelled);
    }
    outcomes
}

/// The scheduler's view of the graph so far.
#[derive(Default)]
struct Graph {
    /// Every node id, in the order added.
    order: Vec<usize>,
    ids: BTreeSet<usize>,
    /// Per node, how many dependencies have not succeeded yet.
    waiting_on: BTreeMap<usize, usize>,
    dependents: BTreeMap<usize, Vec<usize>>,
    ready: VecDeque<usize>,
    outcomes: BTreeMap<usize, NodeOutcome>,
}

impl Graph {
    /// Add a batch of nodes: wire their dependencies, skip those whose
    /// dependency already did not succeed, queue those with none left.
    fn add(&mut self, nodes: Vec<Node>, on_skip: &mut impl FnMut(usize, usize)) {
        let mut batch: Vec<Node> = Vec::with_capacity(nodes.len());
        for node in nodes {
            if self.ids.insert(node.id) {
                self.order.push(node.id);
                batch.push(node);
            }
        }
        let mut doomed: Vec<(usize, usize)> = Vec::new();
        for node in &batch {
            let deps: BTreeSet<usize> = node
                .deps
                .iter()
                .copied()
                .filter(|d| self.ids.contains(d) && *d != node.id)
                .collect();
            let mut waiting = 0;
            for dep in deps {
                match self.outcomes.get(&dep) {
                    Some(NodeOutcome::Succeeded) => {}
                    Some(_) => doomed.push((node.id, dep)),
                    None => {
                        waiting += 1;
                        self.dependents.entry(dep).or_default().push(node.id);
                    }
                }
            }
            self.waiting_on.insert(node.id, waiting);
        }
        for (id, because) in doomed {
            if self.outcomes.contains_key(&id) {
                continue;
            }
            self.outcomes.insert(id, NodeOutcome::Skipped { because });
            on_skip(id, because);
            skip_dependents(
                id,
                &self.dependents,
                &mut self.outcomes,
                &mut self.ready,
                on_skip,
            );
        }
        for node in &batch {
            if self.waiting_on.get(&node.id) == Some(&0) && !self.outcomes.contains_key(&node.id) {
                self.ready.push_back(node.id);
            }
        }
    }

    /// A node's body ended: release or skip its dependents.
    fn finished(&mut self, id: usize, succeeded: bool, on_skip: &mut impl FnMut(usize, usize)) {
        if !succeeded {
            self.outcomes.insert(id, NodeOutcome::Failed);
            skip_dependents(
                id,
                &self.dependents,
                &mut self.outcomes,
                &mut self.ready,
                on_skip,
            );
            return;
        }
        self.outcomes.insert(id, NodeOutcome::Succeeded);
        for &dependent in self
            .dependents
            .get(&id)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if self.outcomes.contains_key(&dependent) {
                continue;
            }
            if let Some(count) = self.waiting_on.get_mut(&dependent) {
                *count -= 1;
                if *count == 0 {
                    self.ready.push_back(dependent);
                }
            }
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn a_growing_graph_runs_nodes_as_they_arrive() {
        let (sender, incoming) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let feeder = {
            let log = log.clone();
            async move {
                sender.send(vec![node(0, &[]), node(1, &[])]).unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
                log.lock().unwrap().push("batch 2".to_string());
                // 0 succeeded and 1 failed by now: 2 runs at once, 3 is
                // skipped at once, and so is 4, which waits for 3.
                sender
                    .send(vec![
                        node(4, &[3]),
                        node(2, &[0]),
                        node(3, &[1]),
                        node(2, &[]),
                    ])
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
                log.lock().unwrap().push("closed".to_string());
            }
        };
        let mut skipped = Vec::new();
        let run = run_growing_graph(
            incoming,
            4,
            None,
            |id| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(format!("start {id}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    id != 1
                }
            },
            |id, because| skipped.push((id, because)),
        );
        let (outcomes, ()) = tokio::join!(run, feeder);
        assert_eq!(outcomes[&0], NodeOutcome::Succeeded);
        assert_eq!(outcomes[&1], NodeOutcome::Failed);
        assert_eq!(outcomes[&2], NodeOutcome::Succeeded);
        assert_eq!(outcomes[&3], NodeOutcome::Skipped { because: 1 });
        assert_eq!(outcomes[&4], NodeOutcome::Skipped { because: 3 });
        assert_eq!(skipped, vec![(3, 1), (4, 3)]);
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            ["start 0", "start 1", "batch 2", "start 2", "closed"],
            "the run waited for the sender to close"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_while_waiting_for_nodes_ends_the_run() {
        let (sender, incoming) = mpsc::unbounded_channel();
        sender.send(vec![node(0, &[]), node(1, &[7])]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let outcomes =
            run_growing_graph(incoming, 2, Some(deadline), |_| async { true }, |_, _| {}).await;
        drop(sender);
        assert_eq!(outcomes[&0], NodeOutcome::Succeeded);
        assert_eq!(
            outcomes[&1],
            NodeOutcome::Succeeded,
            "a dependency on an id that is not a node is ignored"
        );
        assert_eq!(outcomes.len(), 2);
    }

    #[tokio::test]
    async fn empty_graph() {
        let outcomes = run_graph(&[], 1, None, |_| async { true }, |_, _| {}).await;
        assert!(outcomes.is_empty());
    }
}
