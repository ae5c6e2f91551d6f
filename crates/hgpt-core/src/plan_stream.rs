//! Reading a plan while the controller is still writing it.
//!
//! [`PlanReader`] finds each task object of the plan's list the moment its
//! closing brace arrives; [`StreamingPlan`] post-processes them one by one
//! and releases a task as soon as nothing later in the plan can change it.
//! The whole-plan reader ([`crate::plan::parse_and_postprocess`]) stays the
//! judge: every item the stream yields is checked against what it reads from
//! the same text, and when the plan is complete [`StreamingPlan::reconcile`]
//! checks every released task against the finished plan.

use crate::plan::{Plan, PlanError, PlanTask, parse_plan, pure_references, read_task, settle_task};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Finds the task objects of a plan in the controller's answer as it
/// streams in.
///
/// It follows the shape planners are asked for: a JSON list (after prose or
/// a code-fence opener), whose items are objects. Any other shape (objects
/// with no list, a wrapper object, stray characters between items) ends the
/// streaming: the rest of the plan is read whole when it is complete.
#[derive(Debug, Default)]
pub struct PlanReader {
    text: String,
    /// Where the next item may start, once the list is found.
    cursor: Option<usize>,
    /// The items found so far.
    items: Vec<Map<String, Value>>,
    /// Nothing more is read as it streams (the list ended, or the answer
    /// took a shape only the whole-plan reader handles).
    done: bool,
}

impl PlanReader {
    /// A reader with no text yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add the next piece of the answer; returns the items it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<Map<String, Value>> {
        self.text.push_str(chunk);
        let mut found = Vec::new();
        while !self.done {
            match self.next_item() {
                Some(item) => {
                    self.items.push(item.clone());
                    found.push(item);
                }
                None => break,
            }
        }
        found
    }

    /// The answer so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The answer so far, taken.
    pub fn into_text(self) -> String {
        self.text
    }

    /// The next complete item, if the text holds one (`done` set when the
    /// stream can yield no more).
    fn next_item(&mut self) -> Option<Map<String, Value>> {
        let cursor = match self.cursor {
            Some(cursor) => cursor,
            None => {
                let start = self.list_start()?;
                self.cursor = Some(start);
                start
            }
        };
        let rest = &self.text[cursor..];
        let skipped = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_whitespace() || c == ',')
                .len();
        let at = cursor + skipped;
        match self.text[at..].chars().next() {
            None => return None,
            Some('{') => {}
            // The list ended, or something only the whole reader handles.
            Some(_) => {
                self.done = true;
                return None;
            }
        }
        // An error may only mean the object is not complete yet (a number
        // cut after its sign reads as malformed): try again with more text.
        // A truly malformed item is left to the whole-plan reader.
        let Ok((value, end)) = crate::lenient_json::parse_value_at(&self.text, at) else {
            return None;
        };
        let Value::Object(item) = value else {
            self.done = true;
            return None;
        };
        // The whole-plan reader, on the text up to this item with the list
        // closed, must read exactly the items found so far and this one.
        let mut closed = self.text[..end].to_string();
        closed.push(']');
        let agrees = parse_plan(&closed).is_ok_and(|items| {
            items.len() == self.items.len() + 1
                && items[..self.items.len()] == self.items[..]
                && items.last() == Some(&item)
        });
        if !agrees {
            self.done = true;
            return None;
        }
        self.cursor = Some(end);
        Some(item)
    }

    /// Just past the `[` that opens the plan's list, once it is known; sets
    /// `done` when the answer starts with an object instead.
    fn list_start(&mut self) -> Option<usize> {
        let text = &self.text;
        let bracket = text.find('[');
        let fence = text.find("```");
        // In a code fence the list is read from the fence's body.
        let body = match fence {
            Some(fence) if bracket.is_none_or(|b| fence < b) => {
                let after = fence + 3;
                // The fence's opening line is not complete yet.
                let newline = text[after..].find('\n')?;
                after + newline + 1
            }
            _ => 0,
        };
        let body_text = &text[body..];
        let bracket = body_text.find('[');
        let brace = body_text.find('{');
        match (bracket, brace) {
            (Some(b), brace) if brace.is_none_or(|o| b < o) => Some(body + b + 1),
            (_, Some(_)) => {
                self.done = true;
                None
            }
            _ => None,
        }
    }
}

/// A plan post-processed item by item as it streams, releasing each task
/// once its final form is certain and the tasks it needs are released.
///
/// A task is held back while: an argument holds several references (it
/// will be unfolded into copies whose ids depend on the whole plan); it
/// references or explicitly depends on a task not yet released (which may
/// come later, or never); it is a task the controller can do itself and
/// the only one so far (a lone such task is answered as chat). After a
/// duplicate or invalid id nothing more is released.
#[derive(Debug, Default)]
pub struct StreamingPlan {
    /// Items seen, with or without a task field (their positions count).
    items: usize,
    /// Tasks read, in order, with their explicit dependencies.
    read: Vec<(PlanTask, Vec<usize>)>,
    /// Ids of the tasks read.
    seen: BTreeSet<usize>,
    /// Tasks released, in release order.
    released: Vec<PlanTask>,
    released_ids: BTreeSet<usize>,
    /// The plan cannot be valid: nothing more is released.
    blocked: bool,
}

impl StreamingPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the next item of the plan; returns the tasks that are now
    /// certain and ready to hand to selection (this one, or ones it
    /// unblocked).
    pub fn push(&mut self, item: &Map<String, Value>) -> Vec<PlanTask> {
        let position = self.items;
        self.items += 1;
        if self.blocked {
            return Vec::new();
        }
        // Warnings come with the finished plan, from the whole-plan path.
        let mut ignored = Vec::new();
        match read_task(position, item, &mut ignored) {
            Ok(Some((task, explicit))) => {
                if !self.seen.insert(task.id) {
                    self.blocked = true;
                    return Vec::new();
                }
                self.read.push((task, explicit));
            }
            Ok(None) => return Vec::new(),
            Err(_) => {
                self.blocked = true;
                return Vec::new();
            }
        }
        self.release_ready()
    }

    /// The tasks released so far, in release order.
    pub fn released(&self) -> &[PlanTask] {
        &self.released
    }

    /// Check the released tasks against the finished plan: each must be in
    /// it exactly as it was released. An error names the first that is not,
    /// or what made the finished plan unusable.
    pub fn reconcile(&self, finished: &Result<Plan, PlanError>) -> Result<(), String> {
        let plan = match finished {
            Ok(plan) => plan,
            Err(error) if self.released.is_empty() => return Err(error.to_string()),
            Err(error) => {
                return Err(format!(
                    "{error}; tasks {:?} had already started",
                    self.released.iter().map(|t| t.id).collect::<Vec<_>>()
                ));
            }
        };
        for task in &self.released {
            match plan.get(task.id) {
                Some(same) if same == task => {}
                Some(other) => {
                    return Err(format!(
                        "task {} started as {} {}, but the finished plan has it as {} {}",
                        task.id,
                        task.task,
                        task.to_json(),
                        other.task,
                        other.to_json()
                    ));
                }
                None => {
                    return Err(format!(
                        "task {} started, but the finished plan does not have it",
                        task.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Release, in plan order, every held task that has become certain,
    /// until none is left to release.
    fn release_ready(&mut self) -> Vec<PlanTask> {
        let mut newly = Vec::new();
        loop {
            let ready = self.read.iter().position(|(task, explicit)| {
                !self.released_ids.contains(&task.id) && self.is_certain(task, explicit)
            });
            let Some(index) = ready else { break };
            let (task, explicit) = self.read[index].clone();
            let mut ignored = Vec::new();
            // Every id it names has been read, so settling it against the
            // ids read so far gives its final form.
            match settle_task(task, explicit, &self.seen, &mut ignored) {
                Ok(task) => {
                    self.released_ids.insert(task.id);
                    self.released.push(task.clone());
                    newly.push(task);
                }
                Err(_) => {
                    self.blocked = true;
                    break;
                }
            }
        }
        newly
    }

    /// Whether nothing later in the plan can change this task and every
    /// task it waits for is released.
    fn is_certain(&self, task: &PlanTask, explicit: &[usize]) -> bool {
        let unfolds = task.args.values().any(|value| {
            value
                .as_str()
                .and_then(pure_references)
                .is_some_and(|ids| ids.len() > 1)
        });
        if unfolds {
            return false;
        }
        if task.kind().is_some_and(|k| k.is_llm_capable()) && self.read.len() < 2 {
            return false;
        }
        let referenced = task.referenced_ids();
        let references_ready = referenced
            .iter()
            .all(|r| *r == task.id || self.released_ids.contains(r));
        // An explicit dependency is kept unless it is on the task itself or
        // a forward one no reference needs (both dropped); a kept one, or
        // one on a task not read yet, must wait.
        let dependencies_ready = explicit.iter().all(|&d| {
            d == task.id
                || self.released_ids.contains(&d)
                || (self.seen.contains(&d) && d > task.id && !referenced.contains(&d))
        });
        references_ready && dependencies_ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_and_postprocess;

    /// Stream `text` in the given pieces; returns the released tasks and
    /// the reconciliation with the whole-plan reading of the same text.
    fn stream(pieces: &[&str]) -> (Vec<PlanTask>, Result<(), String>) {
        let mut reader = PlanReader::new();
        let mut plan = StreamingPlan::new();
        let mut released = Vec::new();
        for piece in pieces {
            for item in reader.push(piece) {
                released.extend(plan.push(&item));
            }
        }
        let finished = parse_and_postprocess(reader.text());
        let verdict = plan.reconcile(&finished);
        assert_eq!(released, plan.released());
        (released, verdict)
    }

    /// Every split of `text` into two pieces, and one byte at a time.
    fn every_chunking(text: &str) -> Vec<Vec<&str>> {
        let mut chunkings: Vec<Vec<&str>> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .map(|i| vec![&text[..i], &text[i..]])
            .collect();
        chunkings.push(
            text.char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect(),
        );
        chunkings
    }

    const CHAIN: &str = r#"```json
[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
 {"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
 {"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}}]
```"#;

    #[test]
    fn tasks_are_released_as_their_objects_close() {
        let first_end = CHAIN.find("}},").unwrap() + 2;
        let mut reader = PlanReader::new();
        let mut plan = StreamingPlan::new();
        let mut released = Vec::new();
        for item in reader.push(&CHAIN[..first_end - 1]) {
            released.extend(plan.push(&item));
        }
        assert!(released.is_empty(), "the first object is not closed yet");
        for item in reader.push(&CHAIN[first_end - 1..first_end]) {
            released.extend(plan.push(&item));
        }
        assert_eq!(released.len(), 1, "its closing brace completes it");
        assert_eq!(released[0].id, 0);
        let whole = parse_and_postprocess(CHAIN).unwrap();
        assert_eq!(released[0], whole.tasks[0]);
    }

    #[test]
    fn any_chunking_releases_the_whole_plans_tasks() {
        let plans = [
            CHAIN,
            // Escapes, braces and brackets inside strings; single quotes.
            r#"Plan: [{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a \"red\" {circle} [big]\\"}},
              {'task': 'image-to-text', 'id': 1, 'dep': [0], 'args': {'image': '<GENERATED-0>'}}]"#,
            // Ids out of order, a reference to a later task, node spellings.
            r#"[{"task": "text-to-speech", "id": 3, "dep": [2], "args": {"text": "<GENERATED>-2"}},
                {"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "x"}},
                {"task": "image-to-text", "id": 2, "dep": [0], "args": {"image": "<node-0>"}}]"#,
            // Missing ids are positional; a forward explicit dependency.
            r#"[{"task": "object-detection", "dep": [1], "args": {"image": "/a.jpg"}},
                {"task": "image-classification", "args": {"image": "/a.jpg"}}]"#,
            // Unfolding: a task with two references waits for the whole plan.
            r#"[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a"}},
                {"task": "text-to-image", "id": 1, "dep": [-1], "args": {"text": "b"}},
                {"task": "image-to-text", "id": 2, "dep": [0, 1], "args": {"image": "<GENERATED>-0,<GENERATED>-1"}},
                {"task": "text-to-speech", "id": 3, "dep": [2], "args": {"text": "<GENERATED>-2"}}]"#,
        ];
        for text in plans {
            let whole = parse_and_postprocess(text).unwrap();
            let (at_once, _) = stream(&[text]);
            let mut at_once_ids: Vec<usize> = at_once.iter().map(|t| t.id).collect();
            at_once_ids.sort_unstable();
            for pieces in every_chunking(text) {
                let (released, verdict) = stream(&pieces);
                assert_eq!(verdict, Ok(()), "{pieces:?}");
                for task in &released {
                    assert_eq!(whole.get(task.id), Some(task), "{pieces:?}");
                }
                let mut ids: Vec<usize> = released.iter().map(|t| t.id).collect();
                ids.sort_unstable();
                assert_eq!(
                    ids, at_once_ids,
                    "every chunking releases the same tasks: {pieces:?}"
                );
            }
            let released = at_once;
            let ids: Vec<usize> = released.iter().map(|t| t.id).collect();
            if text.contains("<GENERATED>-0,<GENERATED>-1") {
                assert_eq!(ids, [0, 1], "the unfolded task and its dependent wait");
            } else {
                assert_eq!(ids.len(), whole.tasks.len(), "{text}");
            }
        }
    }

    #[test]
    fn a_task_waits_for_what_it_needs() {
        let text = r#"[{"task": "image-to-text", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}},
                       {"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "x"}}]"#;
        let mut reader = PlanReader::new();
        let mut plan = StreamingPlan::new();
        let second = text.find("},\n").unwrap() + 2;
        let items = reader.push(&text[..second]);
        assert_eq!(items.len(), 1);
        assert!(plan.push(&items[0]).is_empty(), "task 0 is not known yet");
        let items = reader.push(&text[second..]);
        let released: Vec<usize> = plan.push(&items[0]).iter().map(|t| t.id).collect();
        assert_eq!(released, [0, 1], "task 0, then the task waiting for it");
    }

    #[test]
    fn a_lone_text_task_is_not_released_until_a_second_task_comes() {
        let one = r#"[{"task": "summarization", "id": 0, "dep": [-1], "args": {"text": "long"}}"#;
        let mut reader = PlanReader::new();
        let mut plan = StreamingPlan::new();
        let items = reader.push(one);
        assert!(plan.push(&items[0]).is_empty(), "it may be the only task");
        let items = reader
            .push(r#", {"task": "text-to-speech", "id": 1, "args": {"text": "<GENERATED>-0"}}]"#);
        let released: Vec<usize> = plan.push(&items[0]).iter().map(|t| t.id).collect();
        assert_eq!(released, [0, 1]);
    }

    #[test]
    fn malformed_plans_release_nothing_they_cannot_keep() {
        // A duplicate id: the first task runs, the rest waits for the whole
        // reading, which fails, and the reconciliation says so.
        let duplicate = r#"[{"task": "object-detection", "id": 0, "args": {"image": "/a.jpg"}},
                            {"task": "image-classification", "id": 0, "args": {"image": "/a.jpg"}},
                            {"task": "image-to-text", "id": 1, "args": {"image": "/a.jpg"}}]"#;
        for pieces in every_chunking(duplicate) {
            let (released, verdict) = stream(&pieces);
            assert_eq!(released.iter().map(|t| t.id).collect::<Vec<_>>(), [0]);
            let error = verdict.unwrap_err();
            assert!(
                error.contains("two tasks have id 0") && error.contains("[0]"),
                "{error}"
            );
        }
        // Cut off: the complete tasks run; the whole reading keeps them.
        let cut = r#"[{"task": "object-detection", "id": 0, "args": {"image": "/a.jpg"}},
                      {"task": "image-classification", "id": 1, "args": {"image": "/a"#;
        let (released, _) = stream(&[cut]);
        assert_eq!(released.len(), 1);
        // A reference to a task that never comes: held, never released.
        let unknown = r#"[{"task": "text-to-speech", "id": 0, "args": {"text": "<GENERATED>-7"}},
                          {"task": "object-detection", "id": 1, "args": {"image": "/a.jpg"}}]"#;
        let (released, verdict) = stream(&[unknown]);
        assert_eq!(released.iter().map(|t| t.id).collect::<Vec<_>>(), [1]);
        assert!(verdict.unwrap_err().contains("no task 7"));
    }

    #[test]
    fn shapes_only_the_whole_reader_handles_are_not_streamed() {
        for text in [
            // Objects with no list.
            r#"{"task": "image-to-text", "id": 0, "args": {"image": "a.jpg"}}, {"task": "object-detection", "id": 1, "args": {"image": "a.jpg"}}"#,
            // A wrapper object.
            r#"{"tasks": [{"task": "image-to-text", "id": 0, "args": {"image": "a.jpg"}}]}"#,
        ] {
            let (released, verdict) = stream(&[text]);
            assert!(released.is_empty(), "{text}");
            assert_eq!(verdict, Ok(()));
            assert!(!parse_and_postprocess(text).unwrap().is_empty());
        }
        // A stray brace after an object: what came before it still streams.
        let stray = r#"[{"task": "image-classification", "id": 0, "args": {"image": "a.jpg"}}}, {"task": "image-to-text", "id": 1, "args": {"image": "a.jpg"}}]"#;
        let (released, verdict) = stream(&[stray]);
        assert_eq!(released.len(), 1);
        assert_eq!(verdict, Ok(()));
        // Prose and an empty list release nothing.
        for text in ["I cannot help with that.", "[]", "```json\n[]\n```"] {
            for pieces in every_chunking(text) {
                assert!(stream(&pieces).0.is_empty());
            }
        }
    }
}
