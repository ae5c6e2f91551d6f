use std::collections::HashSet;
use std::thread;

use hgpt_store::{
    DB_FILE_NAME, NewRun, RunFinish, RunPage, RunRow, RunState, RunSummary, SCHEMA_VERSION, Store,
    StoreError, StoredEvent,
};
use serde_json::{Value, json};

fn new_run(id: &str, created: u64) -> NewRun {
    NewRun {
        id: id.to_owned(),
        created_at_ms: created,
        request: format!("request of {id}"),
        messages: json!([{"role": "user", "content": format!("request of {id}")}]),
    }
}

fn ev(seq: u64, data: Value) -> StoredEvent {
    StoredEvent {
        seq,
        at_ms: 1000 + seq,
        data,
    }
}

fn finish(state: RunState, at: u64) -> RunFinish {
    RunFinish {
        state,
        finished_at_ms: at,
        record: None,
        error: None,
    }
}

fn state_of(store: &Store, id: &str) -> RunState {
    store.run(id).unwrap().unwrap().state
}

#[test]
fn round_trip_of_every_method() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.path(), None);
    assert!(store.run("r1").unwrap().is_none());

    let run = new_run("r1", 100);
    store.insert_run(&run).unwrap();
    assert_eq!(
        store.run("r1").unwrap().unwrap(),
        RunRow {
            id: "r1".into(),
            state: RunState::Queued,
            created_at_ms: 100,
            started_at_ms: None,
            finished_at_ms: None,
            request: "request of r1".into(),
            messages: run.messages.clone(),
            record: None,
            error: None,
        }
    );

    store.set_running("r1", 150).unwrap();
    let events = vec![
        ev(1, json!({"type": "state", "state": "queued"})),
        ev(2, json!({"type": "planned", "plan": [], "warnings": []})),
        ev(
            3,
            json!({"type": "answer_delta", "text": "héllo \u{1F600}"}),
        ),
    ];
    store.append_events("r1", &events).unwrap();
    store.append_events("r1", &[]).unwrap();
    assert_eq!(store.events("r1", 0).unwrap(), events);

    let record = json!({"request": "x", "answer": "done", "tasks": [{"id": 0}]});
    store
        .finish_run(
            "r1",
            &RunFinish {
                state: RunState::Succeeded,
                finished_at_ms: 200,
                record: Some(record.clone()),
                error: None,
            },
        )
        .unwrap();
    let row = store.run("r1").unwrap().unwrap();
    assert_eq!(row.state, RunState::Succeeded);
    assert_eq!(row.started_at_ms, Some(150));
    assert_eq!(row.finished_at_ms, Some(200));
    assert_eq!(row.record, Some(record));
    assert_eq!(row.messages, run.messages);

    // The serialized row has exactly the wire field names.
    let wire = serde_json::to_value(&row).unwrap();
    assert_eq!(wire["state"], "succeeded");
    assert_eq!(wire["error"], Value::Null);
    let keys: HashSet<_> = wire.as_object().unwrap().keys().cloned().collect();
    let want: HashSet<String> = [
        "id",
        "state",
        "created_at_ms",
        "started_at_ms",
        "finished_at_ms",
        "request",
        "messages",
        "record",
        "error",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(keys, want);
    let back: RunRow = serde_json::from_value(wire).unwrap();
    assert_eq!(back, row);

    store.insert_run(&new_run("r2", 300)).unwrap();
    let page = store.list_runs(10, None).unwrap();
    assert_eq!(page.next, None);
    assert_eq!(
        page.runs,
        vec![
            RunSummary {
                id: "r2".into(),
                state: RunState::Queued,
                created_at_ms: 300,
                started_at_ms: None,
                finished_at_ms: None,
                request: "request of r2".into(),
                error: None,
            },
            RunSummary {
                id: "r1".into(),
                state: RunState::Succeeded,
                created_at_ms: 100,
                started_at_ms: Some(150),
                finished_at_ms: Some(200),
                request: "request of r1".into(),
                error: None,
            },
        ]
    );
    let page_json: RunPage = serde_json::from_value(serde_json::to_value(&page).unwrap()).unwrap();
    assert_eq!(page_json, page);

    let counts = store.count_by_state().unwrap();
    assert_eq!(
        counts,
        vec![
            (RunState::Queued, 1),
            (RunState::Running, 0),
            (RunState::Succeeded, 1),
            (RunState::Failed, 0),
            (RunState::Cancelled, 0),
            (RunState::Interrupted, 0),
        ]
    );

    assert_eq!(
        store.mark_interrupted(400, "shutdown", None).unwrap(),
        vec!["r2"]
    );
}

#[test]
fn persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("nested").join("store");
    {
        let store = Store::open(&sub).unwrap();
        assert_eq!(store.path(), Some(sub.join(DB_FILE_NAME).as_path()));
        store.insert_run(&new_run("a", 1)).unwrap();
        store.insert_run(&new_run("b", 2)).unwrap();
        store.set_running("a", 3).unwrap();
        store
            .append_events("a", &[ev(1, json!({"n": 1})), ev(2, json!({"n": 2}))])
            .unwrap();
        store
            .finish_run(
                "a",
                &RunFinish {
                    state: RunState::Failed,
                    finished_at_ms: 9,
                    record: Some(json!({"answer": null})),
                    error: Some("boom".into()),
                },
            )
            .unwrap();
    }
    assert!(sub.join(DB_FILE_NAME).is_file());
    let store = Store::open(&sub).unwrap();
    let a = store.run("a").unwrap().unwrap();
    assert_eq!(a.state, RunState::Failed);
    assert_eq!(a.started_at_ms, Some(3));
    assert_eq!(a.finished_at_ms, Some(9));
    assert_eq!(a.error.as_deref(), Some("boom"));
    assert_eq!(a.record, Some(json!({"answer": null})));
    assert_eq!(
        store.events("a", 0).unwrap(),
        vec![ev(1, json!({"n": 1})), ev(2, json!({"n": 2}))]
    );
    assert_eq!(state_of(&store, "b"), RunState::Queued);
    let ids: Vec<_> = store
        .list_runs(20, None)
        .unwrap()
        .runs
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["b", "a"]);
    // Creation order continues after reopening.
    store.insert_run(&new_run("c", 0)).unwrap();
    assert_eq!(store.list_runs(1, None).unwrap().runs[0].id, "c");
}

#[test]
fn list_runs_paginates_newest_first() {
    let store = Store::open_in_memory().unwrap();
    // created_at_ms deliberately not monotonic: order is insertion order.
    for i in 0..45u64 {
        store
            .insert_run(&new_run(&format!("run-{i:02}"), 1000 - i))
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_runs(20, cursor.as_deref()).unwrap();
        sizes.push(page.runs.len());
        seen.extend(page.runs.into_iter().map(|r| r.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(sizes.len() < 10, "pagination does not terminate");
    }
    assert_eq!(sizes, [20, 20, 5]);
    let want: Vec<String> = (0..45).rev().map(|i| format!("run-{i:02}")).collect();
    assert_eq!(seen, want);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 45);

    // Exactly one full page: no next.
    let store2 = Store::open_in_memory().unwrap();
    for i in 0..3 {
        store2.insert_run(&new_run(&format!("x{i}"), i)).unwrap();
    }
    assert_eq!(store2.list_runs(3, None).unwrap().next, None);
    assert!(store2.list_runs(2, None).unwrap().next.is_some());
    // An empty store has one empty page.
    let empty = Store::open_in_memory()
        .unwrap()
        .list_runs(20, None)
        .unwrap();
    assert_eq!(
        empty,
        RunPage {
            runs: vec![],
            next: None
        }
    );
}

#[test]
fn list_runs_clamps_limit() {
    let store = Store::open_in_memory().unwrap();
    for i in 0..205u64 {
        store.insert_run(&new_run(&format!("r{i}"), i)).unwrap();
    }
    let zero = store.list_runs(0, None).unwrap();
    assert_eq!(zero.runs.len(), 1);
    assert_eq!(zero.runs[0].id, "r204");
    assert!(zero.next.is_some());
    let huge = store.list_runs(usize::MAX, None).unwrap();
    assert_eq!(huge.runs.len(), 200);
    let rest = store.list_runs(usize::MAX, huge.next.as_deref()).unwrap();
    assert_eq!(rest.runs.len(), 5);
    assert_eq!(rest.next, None);
}

#[test]
fn bad_cursor_is_rejected() {
    let store = Store::open_in_memory().unwrap();
    store.insert_run(&new_run("a", 1)).unwrap();
    for bad in ["", "abc", "-3", "1e3", "12abc", "99999999999999999999999"] {
        match store.list_runs(20, Some(bad)) {
            Err(StoreError::BadCursor(c)) => assert_eq!(c, bad),
            other => panic!("cursor {bad:?}: {other:?}"),
        }
    }
}

#[test]
fn unknown_run_errors() {
    let store = Store::open_in_memory().unwrap();
    assert!(matches!(
        store.set_running("nope", 1),
        Err(StoreError::UnknownRun(id)) if id == "nope"
    ));
    assert!(matches!(
        store.append_events("nope", &[ev(1, json!({}))]),
        Err(StoreError::UnknownRun(id)) if id == "nope"
    ));
    assert!(matches!(
        store.finish_run("nope", &finish(RunState::Failed, 1)),
        Err(StoreError::UnknownRun(id)) if id == "nope"
    ));
    assert!(matches!(
        store.events("nope", 0),
        Err(StoreError::UnknownRun(id)) if id == "nope"
    ));
    assert!(store.run("nope").unwrap().is_none());
}

#[test]
fn duplicate_run_id_is_rejected() {
    let store = Store::open_in_memory().unwrap();
    store.insert_run(&new_run("same", 1)).unwrap();
    let mut other = new_run("same", 2);
    other.request = "different".into();
    assert!(matches!(
        store.insert_run(&other),
        Err(StoreError::DuplicateRun(id)) if id == "same"
    ));
    let row = store.run("same").unwrap().unwrap();
    assert_eq!(row.created_at_ms, 1);
    assert_eq!(row.request, "request of same");
}

#[test]
fn state_transitions_are_guarded() {
    let store = Store::open_in_memory().unwrap();
    store.insert_run(&new_run("a", 1)).unwrap();
    // finish_run needs a terminal state.
    assert!(matches!(
        store.finish_run("a", &finish(RunState::Running, 2)),
        Err(StoreError::InvalidTransition {
            from: RunState::Queued,
            to: RunState::Running,
            ..
        })
    ));
    store.set_running("a", 2).unwrap();
    assert!(matches!(
        store.set_running("a", 3),
        Err(StoreError::InvalidTransition {
            from: RunState::Running,
            to: RunState::Running,
            ..
        })
    ));
    store
        .finish_run(
            "a",
            &RunFinish {
                state: RunState::Cancelled,
                finished_at_ms: 5,
                record: None,
                error: Some("cancelled by client".into()),
            },
        )
        .unwrap();
    // A finished run is never overwritten.
    let before = store.run("a").unwrap().unwrap();
    let again = RunFinish {
        state: RunState::Succeeded,
        finished_at_ms: 9,
        record: Some(json!({"answer": "late"})),
        error: None,
    };
    assert!(matches!(
        store.finish_run("a", &again),
        Err(StoreError::AlreadyFinished(id, RunState::Cancelled)) if id == "a"
    ));
    assert!(matches!(
        store.set_running("a", 10),
        Err(StoreError::AlreadyFinished(_, RunState::Cancelled))
    ));
    assert_eq!(store.run("a").unwrap().unwrap(), before);

    // A queued run may end directly (e.g. cancelled before it started).
    store.insert_run(&new_run("b", 1)).unwrap();
    store
        .finish_run("b", &finish(RunState::Cancelled, 4))
        .unwrap();
    let b = store.run("b").unwrap().unwrap();
    assert_eq!(
        (b.state, b.started_at_ms, b.finished_at_ms),
        (RunState::Cancelled, None, Some(4))
    );
    // Events may still be appended after the end (the terminal `state` event).
    store
        .append_events("b", &[ev(1, json!({"type": "state"}))])
        .unwrap();
}

#[test]
fn mark_interrupted_only_touches_live_runs() {
    let store = Store::open_in_memory().unwrap();
    store.insert_run(&new_run("queued", 1)).unwrap();
    store.insert_run(&new_run("running", 2)).unwrap();
    store.set_running("running", 3).unwrap();
    store.insert_run(&new_run("done", 4)).unwrap();
    store.set_running("done", 5).unwrap();
    store
        .finish_run(
            "done",
            &RunFinish {
                state: RunState::Succeeded,
                finished_at_ms: 6,
                record: Some(json!({"answer": "ok"})),
                error: None,
            },
        )
        .unwrap();
    store.insert_run(&new_run("failed", 7)).unwrap();
    store
        .finish_run(
            "failed",
            &RunFinish {
                state: RunState::Failed,
                finished_at_ms: 8,
                record: None,
                error: Some("original".into()),
            },
        )
        .unwrap();
    let done_before = store.run("done").unwrap().unwrap();
    let failed_before = store.run("failed").unwrap().unwrap();

    let final_event = json!({"type": "state", "state": "interrupted"});
    store
        .append_events(
            "running",
            &[StoredEvent {
                seq: 1,
                at_ms: 3,
                data: json!({"type": "state", "state": "running"}),
            }],
        )
        .unwrap();
    let ids = store
        .mark_interrupted(100, "server restarted", Some(&final_event))
        .unwrap();
    assert_eq!(ids, ["queued", "running"]);
    for id in ["queued", "running"] {
        let row = store.run(id).unwrap().unwrap();
        assert_eq!(row.state, RunState::Interrupted);
        assert_eq!(row.error.as_deref(), Some("server restarted"));
        assert_eq!(row.finished_at_ms, Some(100));
    }
    assert_eq!(
        store.run("running").unwrap().unwrap().started_at_ms,
        Some(3)
    );
    assert_eq!(store.run("done").unwrap().unwrap(), done_before);
    assert_eq!(store.run("failed").unwrap().unwrap(), failed_before);
    // Nothing left to interrupt.
    // Each interrupted run ends with the final event, numbered after its last.
    let queued_events = store.events("queued", 0).unwrap();
    assert_eq!(queued_events.len(), 1);
    assert_eq!((queued_events[0].seq, queued_events[0].at_ms), (1, 100));
    assert_eq!(queued_events[0].data, final_event);
    let running_events = store.events("running", 0).unwrap();
    assert_eq!(running_events.len(), 2);
    assert_eq!(running_events[1].seq, 2);
    assert_eq!(running_events[1].data, final_event);
    assert!(store.events("done", 0).unwrap().is_empty());
    assert!(
        store
            .mark_interrupted(200, "again", Some(&final_event))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.run("queued").unwrap().unwrap().finished_at_ms,
        Some(100)
    );
}

#[test]
fn events_after_seq() {
    let store = Store::open_in_memory().unwrap();
    store.insert_run(&new_run("a", 1)).unwrap();
    store.insert_run(&new_run("b", 1)).unwrap();
    // Appended out of order across two batches; read back ascending.
    store
        .append_events("a", &[ev(3, json!(3)), ev(1, json!(1))])
        .unwrap();
    store
        .append_events("a", &[ev(2, json!(2)), ev(4, json!(4)), ev(5, json!(5))])
        .unwrap();
    store.append_events("b", &[ev(1, json!("b1"))]).unwrap();
    let seqs = |after| -> Vec<u64> {
        store
            .events("a", after)
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(0), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(2), [3, 4, 5]);
    assert_eq!(seqs(5), Vec::<u64>::new());
    assert_eq!(seqs(u64::MAX), Vec::<u64>::new());
    assert_eq!(store.events("b", 0).unwrap(), vec![ev(1, json!("b1"))]);
    assert_eq!(store.events("a", 3).unwrap()[0], ev(4, json!(4)));
}

#[test]
fn append_events_is_atomic() {
    let store = Store::open_in_memory().unwrap();
    store.insert_run(&new_run("a", 1)).unwrap();
    store.append_events("a", &[ev(1, json!(1))]).unwrap();
    // Duplicate within the batch.
    let err = store
        .append_events(
            "a",
            &[ev(2, json!(2)), ev(3, json!(3)), ev(2, json!("again"))],
        )
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateEvent { run_id, seq: 2 } if run_id == "a"),
        "{err:?}"
    );
    // Duplicate of an already stored event.
    let err = store
        .append_events("a", &[ev(4, json!(4)), ev(1, json!("dup"))])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEvent { seq: 1, .. }),
        "{err:?}"
    );
    // seq 0 is invalid and fails the whole batch too.
    assert!(
        store
            .append_events("a", &[ev(5, json!(5)), ev(0, json!(0))])
            .is_err()
    );
    assert_eq!(store.events("a", 0).unwrap(), vec![ev(1, json!(1))]);
    // The store is still usable afterwards.
    store.append_events("a", &[ev(2, json!(2))]).unwrap();
    assert_eq!(store.events("a", 0).unwrap().len(), 2);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    match Store::open(dir.path()) {
        Err(StoreError::SchemaTooNew(v)) => assert_eq!(v, 99),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // The file was not modified.
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn fresh_file_gets_current_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Reopening an up-to-date file does not fail or re-run migrations.
    drop(conn);
    Store::open(dir.path()).unwrap();
}

#[test]
fn open_fails_when_dir_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    match Store::open(&file.join("sub")) {
        Err(StoreError::Io { path, .. }) => assert_eq!(path, file.join("sub")),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn corrupt_json_cells_give_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.insert_run(&new_run("bad-msgs", 1)).unwrap();
    store.insert_run(&new_run("bad-record", 2)).unwrap();
    store
        .finish_run("bad-record", &finish(RunState::Failed, 3))
        .unwrap();
    store.insert_run(&new_run("bad-event", 4)).unwrap();
    store
        .append_events("bad-event", &[ev(1, json!({}))])
        .unwrap();

    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
    conn.execute(
        "UPDATE runs SET messages = '{not json' WHERE id = 'bad-msgs'",
        [],
    )
    .unwrap();
    conn.execute("UPDATE runs SET record = '[1,' WHERE id = 'bad-record'", [])
        .unwrap();
    conn.execute(
        "UPDATE events SET data = 'nope' WHERE run_id = 'bad-event'",
        [],
    )
    .unwrap();
    drop(conn);

    for (id, col) in [("bad-msgs", "messages"), ("bad-record", "record")] {
        let err = store.run(id).unwrap_err();
        assert!(
            matches!(&err, StoreError::Json { run_id, column, .. } if run_id == id && *column == col),
            "{err:?}"
        );
        assert!(err.to_string().contains(id));
    }
    let err = store.events("bad-event", 0).unwrap_err();
    assert!(
        matches!(&err, StoreError::Json { run_id, .. } if run_id == "bad-event"),
        "{err:?}"
    );
    // Listings do not read the JSON columns and still work.
    assert_eq!(store.list_runs(10, None).unwrap().runs.len(), 3);
}

#[test]
fn out_of_range_numbers_are_rejected() {
    let store = Store::open_in_memory().unwrap();
    assert!(matches!(
        store.insert_run(&new_run("big", u64::MAX)),
        Err(StoreError::OutOfRange {
            what: "created_at_ms",
            value: u64::MAX
        })
    ));
    assert!(store.run("big").unwrap().is_none());
}

#[test]
fn concurrent_use_from_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..25u64 {
                    let id = format!("t{t}-r{i}");
                    store.insert_run(&new_run(&id, i)).unwrap();
                    store.set_running(&id, i + 1).unwrap();
                    for s in 1..=3 {
                        store
                            .append_events(&id, &[ev(s, json!({"t": t, "i": i, "s": s}))])
                            .unwrap();
                    }
                    store
                        .finish_run(&id, &finish(RunState::Succeeded, i + 2))
                        .unwrap();
                }
            })
        })
        .collect();
    // A second, independent connection to the same file writes at the same time.
    let other = Store::open(dir.path()).unwrap();
    for i in 0..10u64 {
        let id = format!("other-{i}");
        other.insert_run(&new_run(&id, i)).unwrap();
        other.append_events(&id, &[ev(1, json!(i))]).unwrap();
    }
    for h in handles {
        h.join().unwrap();
    }

    let reopened = Store::open(dir.path()).unwrap();
    let mut ids = HashSet::new();
    let mut cursor = None;
    loop {
        let page = reopened.list_runs(200, cursor.as_deref()).unwrap();
        ids.extend(page.runs.into_iter().map(|r| r.id));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(ids.len(), 110);
    for t in 0..4 {
        for i in 0..25u64 {
            let id = format!("t{t}-r{i}");
            assert!(ids.contains(&id), "{id} missing");
            let events = reopened.events(&id, 0).unwrap();
            assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
            assert_eq!(events[2].data, json!({"t": t, "i": i, "s": 3}));
        }
    }
    let counts = reopened.count_by_state().unwrap();
    assert!(counts.contains(&(RunState::Succeeded, 100)));
    assert!(counts.contains(&(RunState::Queued, 10)));
}

#[test]
fn prune_deletes_old_and_surplus_ended_runs_with_their_events() {
    let store = Store::open_in_memory().unwrap();
    // r0..r5 created in order; r0..r3 finished at 10, 20, 30, 40; r4 running, r5 queued.
    for i in 0..6u64 {
        let id = format!("r{i}");
        store.insert_run(&new_run(&id, i)).unwrap();
        store
            .append_events(&id, &[ev(1, json!({"type": "state"}))])
            .unwrap();
        if i < 5 {
            store.set_running(&id, i).unwrap();
        }
        if i < 4 {
            store
                .finish_run(
                    &id,
                    &RunFinish {
                        state: RunState::Succeeded,
                        finished_at_ms: (i + 1) * 10,
                        record: None,
                        error: None,
                    },
                )
                .unwrap();
        }
    }
    assert_eq!(store.prune(None, None).unwrap(), 0);
    // Finished before 25: r0 and r1.
    assert_eq!(store.prune(Some(25), None).unwrap(), 2);
    assert!(store.run("r0").unwrap().is_none());
    assert!(store.events("r1", 0).is_err());
    // Keep the newest 2 (r5, r4: both live), so r2 and r3 go; live runs stay whatever.
    assert_eq!(store.prune(None, Some(2)).unwrap(), 2);
    assert_eq!(store.prune(None, Some(0)).unwrap(), 0);
    let left: Vec<String> = store
        .list_runs(10, None)
        .unwrap()
        .runs
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, ["r5", "r4"]);
    assert_eq!(store.events("r4", 0).unwrap().len(), 1);
}
