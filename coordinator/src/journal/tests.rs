//! The journal's tests: real sled on disk in temporary directories, a toy
//! model, and a crash loop that SIGKILLs a child process writing the
//! journal.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use super::record::{self, Checked};
use super::*;

// ---------------------------------------------------------------------------
// The toy model.

/// Facts of the toy model. `Poison` cannot be encoded, to make the writer
/// fail on purpose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Fact {
    Add { key: u64, n: u64 },
    Finish { key: u64, at_ms: u64 },
    Poison(#[serde(serialize_with = "refuse", skip_deserializing)] ()),
}

fn refuse<S: serde::Serializer>(_: &(), _: S) -> Result<S::Ok, S::Error> {
    Err(serde::ser::Error::custom("this fact refuses to be encoded"))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Entry {
    sum: u64,
    adds: u64,
    finished_at_ms: Option<u64>,
}

/// Entries keyed by id; an entry leaves once finished. `applied` and
/// `digest` fold every fact in order, so a fact lost, repeated or
/// reordered shows in the comparison.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Toy {
    entries: BTreeMap<u64, Entry>,
    applied: u64,
    digest: u64,
}

impl Model for Toy {
    type Fact = Fact;

    fn kind(fact: &Fact) -> u8 {
        match fact {
            Fact::Add { .. } => 1,
            Fact::Finish { .. } => 2,
            Fact::Poison(()) => 3,
        }
    }

    fn apply(&mut self, fact: &Fact) {
        self.applied += 1;
        let mix = |d: u64, v: u64| (d ^ v).wrapping_mul(0x0100_0000_01b3);
        match *fact {
            Fact::Add { key, n } => {
                self.digest = mix(mix(self.digest, key), n);
                let entry = self.entries.entry(key).or_default();
                entry.sum += n;
                entry.adds += 1;
            }
            Fact::Finish { key, at_ms } => {
                self.digest = mix(mix(self.digest, !key), at_ms);
                self.entries.entry(key).or_default().finished_at_ms = Some(at_ms);
            }
            Fact::Poison(()) => {}
        }
    }

    fn take_finished(&mut self) -> Vec<(u64, Vec<u8>, u64)> {
        let done: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.finished_at_ms.is_some())
            .map(|(&k, _)| k)
            .collect();
        done.into_iter()
            .map(|key| {
                let entry = self.entries.remove(&key).expect("listed");
                let at = entry.finished_at_ms.expect("finished");
                (key, archived_bytes(&entry), at)
            })
            .collect()
    }
}

fn archived_bytes(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("entry encodes")
}

/// The fact the tests write at `seq`: eight per key, the eighth finishes it
/// (so nothing is added to a finished key).
fn fact_at(seq: Seq) -> Fact {
    let key = seq / 8;
    if seq % 8 == 7 {
        Fact::Finish {
            key,
            at_ms: 1_000 + seq,
        }
    } else {
        Fact::Add { key, n: seq }
    }
}

fn facts(seqs: std::ops::RangeInclusive<Seq>) -> Vec<Fact> {
    seqs.map(fact_at).collect()
}

/// What folding `facts` from scratch gives.
fn fold(facts: &[Fact]) -> Toy {
    let mut toy = Toy::default();
    for fact in facts {
        toy.apply(fact);
    }
    toy.take_finished();
    toy
}

// ---------------------------------------------------------------------------
// Harness.

/// A config that never snapshots by itself.
fn config(dir: &Path) -> JournalConfig {
    JournalConfig {
        snapshot_every_facts: u64::MAX,
        archive_retention_ms: u64::MAX,
        ..JournalConfig::new(dir)
    }
}

fn open(config: JournalConfig) -> (Journal<Toy>, Recovered<Toy>) {
    Journal::open(config, Box::new(|_| {})).expect("journal opens")
}

fn open_err(dir: &Path) -> JournalError {
    Journal::<Toy>::open(config(dir), Box::new(|_| {})).expect_err("journal refuses to open")
}

/// Appends `facts` in appends of `per_append` and waits until durable.
fn write(journal: &Journal<Toy>, facts: &[Fact], per_append: usize) -> Seq {
    let mut last = journal.durable();
    for chunk in facts.chunks(per_append) {
        last = journal.append(chunk.to_vec()).expect("append");
    }
    journal
        .wait_durable(last, Duration::from_secs(10))
        .expect("durable");
    last
}

/// A journal in a fresh directory holding `facts`, one commit (so one
/// block, keyed by its seq) per fact, closed.
fn journal_with(facts: &[Fact]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(config(dir.path()));
    for fact in facts {
        write(&journal, std::slice::from_ref(fact), 1);
    }
    journal.close().expect("close");
    dir
}

/// sled opened directly, for damaging and inspecting what is on disk.
fn raw(dir: &Path) -> sled::Db {
    super::open_sled(dir).expect("raw sled opens")
}

/// Every key and value of the journal's trees.
fn dump(dir: &Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let db = raw(dir);
    let mut out = Vec::new();
    for tree in ["log", "snapshot", "archive", "meta"] {
        for item in db.open_tree(tree).expect("tree").iter() {
            let (k, v) = item.expect("read");
            out.push((tree.to_owned(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

/// Replaces the log block at `seq` (`None`: removes it).
fn set_log(dir: &Path, seq: Seq, value: Option<Vec<u8>>) {
    let db = raw(dir);
    let log = db.open_tree("log").expect("tree");
    match value {
        Some(v) => log.insert(seq.to_be_bytes(), v).expect("insert"),
        None => log.remove(seq.to_be_bytes()).expect("remove"),
    };
    db.flush().expect("flush");
}

fn log_value(dir: &Path, seq: Seq) -> Vec<u8> {
    let db = raw(dir);
    let value = db.open_tree("log").expect("tree").get(seq.to_be_bytes());
    value.expect("read").expect("present").to_vec()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------
// Replay.

#[test]
fn replay_rebuilds_the_model_and_counts_incarnations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = facts(1..=100);

    let (journal, rec) = open(config(dir.path()));
    assert_eq!((rec.incarnation, rec.last_seq), (1, 0));
    assert_eq!(rec.model, Toy::default());
    assert_eq!(write(&journal, &all[..60], 7), 60);
    assert_eq!(journal.durable(), 60);
    journal.close().expect("close");

    let (journal, rec) = open(config(dir.path()));
    assert_eq!((rec.incarnation, rec.last_seq), (2, 60));
    assert_eq!(rec.model, fold(&all[..60]));
    assert_eq!(rec.stats.facts_replayed, 60);
    assert!(!rec.stats.torn_dropped);
    assert!(rec.stats.bytes_on_disk > 0);
    // Seqs go on from where the log ended.
    assert_eq!(write(&journal, &all[60..], 40), 100);
    journal.close().expect("close");

    let (journal, rec) = open(config(dir.path()));
    assert_eq!((rec.incarnation, rec.last_seq), (3, 100));
    assert_eq!(rec.model, fold(&all));
    journal.close().expect("close");
}

#[test]
fn an_empty_append_returns_the_last_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(config(dir.path()));
    assert_eq!(journal.append(Vec::new()).expect("append"), 0);
    assert_eq!(journal.append(facts(1..=3)).expect("append"), 3);
    assert_eq!(journal.append(Vec::new()).expect("append"), 3);
    journal.close().expect("close");
}

/// Folds facts 1..=100 with snapshots forced after the given seqs (and by
/// `snapshot_every_facts`), then checks the reopened model against the log
/// folded alone.
fn check_snapshots(snapshot_after: &[Seq], snapshot_every_facts: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = facts(1..=100);
    let cfg = JournalConfig {
        snapshot_every_facts,
        ..config(dir.path())
    };
    let (journal, _) = open(cfg.clone());
    let mut written = 0;
    for &at in snapshot_after {
        write(&journal, &all[written..at as usize], 3);
        written = at as usize;
        journal.snapshot_now().expect("snapshot");
    }
    write(&journal, &all[written..], 3);
    journal.close().expect("close");

    let (journal, rec) = open(cfg);
    let case = format!("snapshots after {snapshot_after:?}, every {snapshot_every_facts} facts");
    assert_eq!(rec.model, fold(&all), "{case}");
    assert_eq!(rec.last_seq, 100, "{case}");
    if let Some(&last) = snapshot_after.last() {
        assert!(rec.stats.snapshot_seq >= last, "{case}: {:?}", rec.stats);
    }
    assert_eq!(
        rec.stats.facts_replayed,
        100 - rec.stats.snapshot_seq,
        "{case}"
    );
    journal.close().expect("close");

    // Only the current snapshot and the log after it are left.
    let snapshot_seq = rec.stats.snapshot_seq;
    for (tree, key, _) in dump(dir.path()) {
        match tree.as_str() {
            "log" => assert!(record::parse_u64_key(&key) > Some(snapshot_seq), "{case}"),
            "snapshot" => {
                let (seq, _) = record::parse_snapshot_key(&key).expect("snapshot key");
                assert_eq!(seq, snapshot_seq, "{case}");
            }
            _ => {}
        }
    }
}

#[test]
fn a_snapshot_plus_the_log_equals_the_log_alone() {
    check_snapshots(&[], u64::MAX);
    check_snapshots(&[1], u64::MAX);
    check_snapshots(&[7], u64::MAX);
    check_snapshots(&[8], u64::MAX);
    check_snapshots(&[50], u64::MAX);
    check_snapshots(&[100], u64::MAX);
    check_snapshots(&[10, 20, 99], u64::MAX);
    check_snapshots(&[30, 30], u64::MAX);
    check_snapshots(&[], 1);
    check_snapshots(&[], 7);
    check_snapshots(&[], 64);
    check_snapshots(&[45], 10);
}

#[test]
fn a_snapshot_larger_than_a_part_is_split_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 40,000 unfinished entries of about 50 bytes each: about 2 MB of JSON.
    let all: Vec<Fact> = (0..40_000).map(|key| Fact::Add { key, n: key }).collect();
    let (journal, _) = open(config(dir.path()));
    write(&journal, &all, 1_000);
    journal.snapshot_now().expect("snapshot");
    journal.close().expect("close");

    let parts = dump(dir.path())
        .into_iter()
        .filter(|(tree, _, _)| tree == "snapshot")
        .count();
    assert!(parts >= 3, "header and at least two parts, found {parts}");
    let (journal, rec) = open(config(dir.path()));
    assert_eq!(rec.stats.snapshot_seq, 40_000);
    assert_eq!(rec.stats.facts_replayed, 0);
    assert_eq!(rec.model, fold(&all));
    journal.close().expect("close");
}

// ---------------------------------------------------------------------------
// Group commit and its guarantees.

/// Opens with `on_durable` recording every seq it reports.
fn open_recording(cfg: JournalConfig) -> (Journal<Toy>, Arc<Mutex<Vec<Seq>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let (journal, _) = Journal::<Toy>::open(
        cfg,
        Box::new(move |r| sink.lock().expect("lock").push(r.expect("durable"))),
    )
    .expect("journal opens");
    (journal, seen)
}

#[test]
fn an_append_is_committed_whole_even_over_max_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, seen) = open_recording(JournalConfig {
        max_batch: 4,
        ..config(dir.path())
    });
    let sizes = [3, 10, 2, 9, 1];
    let mut boundaries = Vec::new();
    let mut next = 1;
    for size in sizes {
        let last = journal
            .append(facts(next..=next + size - 1))
            .expect("append");
        boundaries.push(last);
        next = last + 1;
    }
    journal.close().expect("close");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.last(), Some(&25));
    assert!(
        seen.iter().all(|s| boundaries.contains(s)),
        "every durable seq ends an append: {seen:?} against {boundaries:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[test]
fn per_fact_sync_reports_every_fact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, seen) = open_recording(JournalConfig {
        sync: Sync::PerFact,
        ..config(dir.path())
    });
    write(&journal, &facts(1..=20), 5);
    journal.close().expect("close");
    assert_eq!(*seen.lock().expect("lock"), (1..=20).collect::<Vec<_>>());
    let (journal, rec) = open(config(dir.path()));
    assert_eq!(rec.model, fold(&facts(1..=20)));
    journal.close().expect("close");
}

#[test]
fn a_small_queue_applies_backpressure_without_losing_facts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = JournalConfig {
        queue_facts: 1,
        max_batch: 2,
        ..config(dir.path())
    };
    let (journal, _) = open(cfg.clone());
    let appender = journal.clone();
    let all = facts(1..=500);
    let sent = all.clone();
    std::thread::spawn(move || write(&appender, &sent, 3))
        .join()
        .expect("appender thread");
    journal.close().expect("close");
    let (journal, rec) = open(cfg);
    assert_eq!(rec.model, fold(&all));
    journal.close().expect("close");
}

#[test]
fn close_is_idempotent_across_clones_and_later_calls_say_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(config(dir.path()));
    let other = journal.clone();
    let last = journal.append(facts(1..=10)).expect("append");
    journal.close().expect("close drains");
    // The queued facts were committed before close returned.
    assert_eq!(other.durable(), last);
    assert!(matches!(
        other.append(facts(11..=11)),
        Err(JournalError::Closed)
    ));
    assert!(matches!(other.snapshot_now(), Err(JournalError::Closed)));
    other
        .wait_durable(last, Duration::ZERO)
        .expect("already durable");
    other.close().expect("second close");
}

#[test]
fn the_last_handle_may_drop_on_the_writer_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slot: Arc<Mutex<Option<Journal<Toy>>>> = Arc::default();
    let held = Arc::clone(&slot);
    let (journal, _) = Journal::<Toy>::open(
        config(dir.path()),
        Box::new(move |r| {
            if r.is_ok_and(|seq| seq >= 3) {
                // The last handle, dropped here, on the writer thread.
                drop(held.lock().expect("lock").take());
            }
        }),
    )
    .expect("journal opens");
    // The callback waits for this lock, so it runs after the test's own
    // handle is gone: the one it drops is the last.
    let mut guard = slot.lock().expect("lock");
    let appender = guard.insert(journal).clone();
    appender.append(facts(1..=3)).expect("append");
    drop(appender);
    drop(guard);
    // The writer ends by itself (the channel closed) and lets sled go.
    let (journal, rec) = open(config(dir.path()));
    assert_eq!(rec.model, fold(&facts(1..=3)));
    journal.close().expect("close");
}

#[test]
fn wait_durable_refuses_a_seq_never_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(config(dir.path()));
    journal.append(facts(1..=2)).expect("append");
    let err = journal
        .wait_durable(3, Duration::from_secs(10))
        .expect_err("never appended");
    assert_eq!(
        err.to_string(),
        "journal: seq 3 was never appended (the last appended is 2)"
    );
    journal.close().expect("close");
}

#[test]
fn a_failed_write_stops_the_journal_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reports);
    let (journal, _) = Journal::<Toy>::open(
        config(dir.path()),
        Box::new(move |r| {
            sink.lock()
                .expect("lock")
                .push(r.map_err(|e| e.to_string()))
        }),
    )
    .expect("journal opens");
    write(&journal, &facts(1..=3), 3);
    let seq = journal.append(vec![Fact::Poison(())]).expect("queued");
    let err = journal
        .wait_durable(seq, Duration::from_secs(10))
        .expect_err("never durable");
    let why =
        "journal: cannot encode log record seq 4 (fact kind 3): this fact refuses to be encoded";
    assert_eq!(
        err.to_string(),
        format!("the journal failed and takes no more facts: {why}")
    );
    assert_eq!(
        *reports.lock().expect("lock"),
        vec![Ok(3), Err(why.to_owned())]
    );
    assert!(matches!(
        journal.append(facts(4..=4)),
        Err(JournalError::Failed { .. })
    ));
    assert!(matches!(journal.close(), Err(JournalError::Failed { .. })));
    // What was durable before the failure is intact.
    let (journal, rec) = open(config(dir.path()));
    assert_eq!((rec.last_seq, rec.model), (3, fold(&facts(1..=3))));
    journal.close().expect("close");
}

#[test]
fn config_values_of_zero_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Journal::<Toy>::open(
        JournalConfig {
            queue_facts: 0,
            ..config(dir.path())
        },
        Box::new(|_| {}),
    )
    .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "journal config: queue_facts = 0: must be at least 1"
    );
}

// ---------------------------------------------------------------------------
// Torn writes and corruption.

/// A block of `count` records, sealed: the format written out here, apart
/// from the code under test.
fn seal(count: u32, records: &[u8]) -> Vec<u8> {
    let mut rest = count.to_le_bytes().to_vec();
    rest.extend_from_slice(records);
    let mut block = vec![1];
    block.extend_from_slice(&crc32fast::hash(&rest).to_le_bytes());
    block.extend_from_slice(&rest);
    block
}

/// Ways to damage a stored block, applied to a copy of a good one.
#[allow(clippy::type_complexity)]
fn block_damages() -> Vec<(&'static str, fn(Vec<u8>) -> Vec<u8>)> {
    vec![
        ("truncated", |v| v[..v.len() / 2].to_vec()),
        ("header only", |v| v[..record::BLOCK_HEADER_BYTES].to_vec()),
        ("shorter than a header", |v| v[..3].to_vec()),
        ("empty", |_| Vec::new()),
        ("payload bit flipped", |mut v| {
            let last = v.len() - 1;
            v[last] ^= 0x01;
            v
        }),
        ("count wrong", |mut v| {
            v[5] = v[5].wrapping_add(1);
            v
        }),
        ("checksum wrong", |mut v| {
            v[1] ^= 0x80;
            v
        }),
        ("version zero", |mut v| {
            v[0] = 0;
            v
        }),
    ]
}

#[test]
fn a_damaged_last_block_is_a_torn_write_and_is_dropped() {
    let all = facts(1..=20);
    for (name, damage) in block_damages() {
        let dir = journal_with(&all);
        let good = log_value(dir.path(), 20);
        set_log(dir.path(), 20, Some(damage(good)));

        let (journal, rec) = open(config(dir.path()));
        assert!(rec.stats.torn_dropped, "{name}");
        assert_eq!(rec.last_seq, 19, "{name}");
        assert_eq!(rec.model, fold(&all[..19]), "{name}");
        // Seq 20 is taken again, by the next fact, which survives.
        let more = vec![fact_at(20), fact_at(21)];
        assert_eq!(write(&journal, &more, 2), 21, "{name}");
        journal.close().expect("close");

        let (journal, rec) = open(config(dir.path()));
        assert!(!rec.stats.torn_dropped, "{name}");
        assert_eq!(rec.model, fold(&facts(1..=21)), "{name}");
        journal.close().expect("close");
    }
}

#[test]
fn a_torn_block_of_several_appends_goes_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = open(config(dir.path()));
    write(&journal, &facts(1..=5), 5);
    // Queued together, so committed together: appends of 3 and 4 facts in
    // one block from seq 6.
    journal.append(facts(6..=8)).expect("append");
    let last = journal.append(facts(9..=12)).expect("append");
    journal
        .wait_durable(last, Duration::from_secs(10))
        .expect("durable");
    journal.close().expect("close");
    let keys: Vec<Vec<u8>> = dump(dir.path())
        .into_iter()
        .filter(|(tree, _, _)| tree == "log")
        .map(|(_, key, _)| key)
        .collect();
    // Either one block (6..=12) or two (6..=8, 9..=12), depending on whether
    // the writer took the second append with the first.
    let last_key = record::parse_u64_key(keys.last().expect("a block")).expect("key");
    let good = log_value(dir.path(), last_key);
    set_log(dir.path(), last_key, Some(good[..good.len() - 1].to_vec()));
    let (journal, rec) = open(config(dir.path()));
    assert!(rec.stats.torn_dropped);
    assert_eq!(
        rec.last_seq,
        last_key - 1,
        "the whole block goes, never part of an append"
    );
    assert_eq!(rec.model, fold(&facts(1..=last_key - 1)));
    journal.close().expect("close");
}

/// Opens a damaged journal twice: both refuse with `expected` (`{dir}`
/// standing for the directory), and nothing stored changes.
fn check_refused(dir: &Path, expected: &str) {
    let before = dump(dir);
    let expected = expected.replace("{dir}", &dir.display().to_string());
    assert_eq!(open_err(dir).to_string(), expected);
    assert_eq!(
        open_err(dir).to_string(),
        expected,
        "the second open says the same"
    );
    assert!(dump(dir) == before, "a refused open changed nothing");
}

const RESTORE: &str = "Restore the data dir from a backup, or move the journal directory aside \
                       to start with an empty journal; the coordinator will not start on a \
                       damaged journal (nothing was changed)";

#[test]
fn a_damaged_block_before_the_last_is_corruption() {
    let all = facts(1..=20);
    for (name, damage) in block_damages() {
        let dir = journal_with(&all);
        let bad = damage(log_value(dir.path(), 10));
        let record::Block::Damaged { what } = record::check_block(&bad) else {
            panic!("{name}: not damaged");
        };
        set_log(dir.path(), 10, Some(bad));
        check_refused(
            dir.path(),
            &format!(
                "journal at {{dir}}: log record seq 10 is damaged: the block of facts starting \
                 there: {what}; later blocks follow, so this is not a torn write. {RESTORE}"
            ),
        );
    }
}

#[test]
fn a_bad_record_inside_a_whole_block_is_corruption_even_when_last() {
    let not_a_fact = serde_json::from_slice::<Fact>(b"{\"not\":\"a fact\"}").unwrap_err();
    // (name, the record's bytes from the good one, what the error says)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, fn(Vec<u8>) -> Vec<u8>, String)> = vec![
        (
            "kind byte wrong",
            |mut r| {
                r[1] = 9;
                r
            },
            "log record seq 20 (fact kind 9) is damaged: its header says kind 9 but the fact \
             is of kind 1"
                .into(),
        ),
        (
            "record checksum wrong",
            |mut r| {
                r[6] ^= 0xff;
                r
            },
            "log record seq 20 (fact kind 1) is damaged: checksum mismatch".into(),
        ),
        (
            "payload not a fact",
            |_| record::frame(1, b"{\"not\":\"a fact\"}"),
            format!(
                "log record seq 20 (fact kind 1) is damaged: the payload does not decode: \
                 {not_a_fact}"
            ),
        ),
        (
            "record version zero",
            |mut r| {
                r[0] = 0;
                r
            },
            "log record seq 20 (fact kind 1) is damaged: format version 0 was never written".into(),
        ),
        (
            "bytes after the records",
            |mut r| {
                r.push(0);
                r
            },
            "log record seq 20 is damaged: the block of facts starting there has 1 bytes after \
             its 1 records"
                .into(),
        ),
    ];
    for (name, damage, expected) in cases {
        let dir = journal_with(&facts(1..=20));
        let good = log_value(dir.path(), 20);
        let record = good[record::BLOCK_HEADER_BYTES..].to_vec();
        set_log(dir.path(), 20, Some(seal(1, &damage(record))));
        let err = open_err(dir.path()).to_string();
        let prefix = format!("journal at {}: {expected}", dir.path().display());
        assert!(err.starts_with(&prefix), "{name}: {err}");
        assert!(err.ends_with(RESTORE), "{name}: {err}");
        check_refused(
            dir.path(),
            &err.replace(&dir.path().display().to_string(), "{dir}"),
        );
    }
}

#[test]
fn a_gap_in_the_log_is_corruption() {
    let dir = journal_with(&facts(1..=20));
    set_log(dir.path(), 12, None);
    check_refused(
        dir.path(),
        &format!(
            "journal at {{dir}}: log record seq 12 is damaged: it is missing: the log goes from \
             seq 11 to 13. {RESTORE}"
        ),
    );
}

#[test]
fn a_damaged_snapshot_is_corruption() {
    let dir = journal_with(&facts(1..=20));
    let (journal, _) = open(config(dir.path()));
    journal.snapshot_now().expect("snapshot");
    journal.close().expect("close");
    {
        let db = raw(dir.path());
        let snapshot = db.open_tree("snapshot").expect("tree");
        let key = record::snapshot_key(20, 1);
        let mut part = snapshot.get(&key).expect("read").expect("part 1").to_vec();
        part[0] ^= 0xff;
        snapshot.insert(key, part).expect("insert");
        db.flush().expect("flush");
    }
    let err = open_err(dir.path()).to_string();
    assert!(
        err.contains("the snapshot at seq 20 is damaged: checksum mismatch"),
        "{err}"
    );
    check_refused(
        dir.path(),
        &err.replace(&dir.path().display().to_string(), "{dir}"),
    );
}

#[test]
fn a_newer_format_is_refused_by_name_even_in_the_last_record() {
    let newer = |at: &str| {
        format!(
            "journal at {{dir}}: {at} is in format version 2, newer than version 1 that this \
             Drover reads: a newer Drover wrote this journal; run that version (or a later one) \
             on this data dir (nothing was changed)"
        )
    };
    for seq in [10, 20] {
        // The block's version.
        let dir = journal_with(&facts(1..=20));
        let mut value = log_value(dir.path(), seq);
        value[0] = 2;
        set_log(dir.path(), seq, Some(value));
        check_refused(dir.path(), &newer(&format!("log record seq {seq}")));

        // A record's version, in a block that is otherwise whole.
        let dir = journal_with(&facts(1..=20));
        let mut record = log_value(dir.path(), seq)[record::BLOCK_HEADER_BYTES..].to_vec();
        record[0] = 2;
        set_log(dir.path(), seq, Some(seal(1, &record)));
        check_refused(
            dir.path(),
            &newer(&format!("log record seq {seq} (fact kind 1)")),
        );
    }

    let dir = journal_with(&facts(1..=3));
    {
        let db = raw(dir.path());
        let meta = db.open_tree("meta").expect("tree");
        meta.insert("format", &[7u8][..]).expect("insert");
        db.flush().expect("flush");
    }
    check_refused(
        dir.path(),
        "journal at {dir}: meta key `format` is in format version 7, newer than version 1 that \
         this Drover reads: a newer Drover wrote this journal; run that version (or a later one) \
         on this data dir (nothing was changed)",
    );
}

// ---------------------------------------------------------------------------
// The archive.

#[test]
fn finished_entries_move_to_the_archive_and_expire_after_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let retention_ms = 60_000;
    let cfg = JournalConfig {
        archive_retention_ms: retention_ms,
        ..config(dir.path())
    };
    let now = now_ms();
    let all = vec![
        Fact::Add { key: 1, n: 5 },
        Fact::Add { key: 2, n: 6 },
        Fact::Add { key: 3, n: 7 },
        Fact::Finish {
            key: 1,
            at_ms: now - 10 * retention_ms,
        },
        Fact::Finish { key: 2, at_ms: now },
    ];
    let entry = |n, at_ms| Entry {
        sum: n,
        adds: 1,
        finished_at_ms: Some(at_ms),
    };
    let (journal, _) = open(cfg.clone());
    write(&journal, &all, 5);
    // The writer archives right after folding the commit, before the next
    // message; a snapshot request is the next message.
    journal.snapshot_now().expect("snapshot");
    // The old entry went at the snapshot; the recent one stays.
    assert_eq!(journal.archived(1).expect("read"), None);
    assert_eq!(
        journal.archived(2).expect("read"),
        Some(archived_bytes(&entry(6, now)))
    );
    assert_eq!(journal.archived(3).expect("read"), None, "not finished");
    assert_eq!(journal.archived_keys(None, 10).expect("keys"), vec![2]);
    journal.close().expect("close");

    // Neither finished entry is in the snapshot.
    let (journal, rec) = open(cfg);
    assert_eq!(rec.stats.snapshot_seq, 5);
    assert_eq!(
        rec.model.entries.keys().copied().collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(rec.model, fold(&all));
    journal.close().expect("close");
}

#[test]
fn archived_keys_page_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = facts(1..=200); // keys 0..=24 finish
    let (journal, _) = open(config(dir.path()));
    write(&journal, &all, 10);
    journal
        .snapshot_now()
        .expect("archived before the snapshot");
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = journal.archived_keys(after, 7).expect("keys");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().copied();
        keys.extend(page);
    }
    assert_eq!(keys, (0..25).collect::<Vec<_>>());
    assert_eq!(
        journal.archived_keys(Some(u64::MAX), 7).expect("keys"),
        Vec::<u64>::new()
    );
    journal.close().expect("close");
}

#[test]
fn lost_archive_writes_are_redone_from_the_log() {
    let all = facts(1..=64);
    let dir = journal_with(&all);
    {
        // As if the crash came before the archive writes were flushed.
        let db = raw(dir.path());
        db.open_tree("archive")
            .expect("tree")
            .clear()
            .expect("clear");
        db.flush().expect("flush");
    }
    let (journal, rec) = open(config(dir.path()));
    assert_eq!(rec.model, fold(&all));
    let mut expected = Toy::default();
    for fact in &all {
        expected.apply(fact);
    }
    for (key, bytes, _) in expected.take_finished() {
        assert_eq!(
            journal.archived(key).expect("read"),
            Some(bytes),
            "key {key}"
        );
    }
    journal.close().expect("close");
}

#[test]
fn values_in_parts_round_trip_replace_and_name_a_missing_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store opens");
    let prefix = record::archive_prefix(7);
    let at = Location::Archive { key: 7 };
    let read = || store.read_parts(&store.archive, &prefix, at.clone());
    let put = |bytes: &[u8], finished_at_ms| {
        let batch = store
            .archive_batch(vec![(7, bytes.to_vec(), finished_at_ms)])
            .expect("batch");
        store.archive.apply_batch(batch).expect("apply");
    };
    let parts = |n| store.archive.scan_prefix(prefix).count() == n;

    // 10,000 bytes: a header and three parts of at most 4 KiB.
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    put(&big, 1_000);
    assert!(parts(4));
    assert_eq!(read().expect("read"), Some((1_000, big.clone())));

    // Archived again, smaller: the old parts go with it.
    put(b"small", 2_000);
    assert!(parts(2));
    assert_eq!(read().expect("read"), Some((2_000, b"small".to_vec())));

    put(&big, 3_000);
    store
        .archive
        .remove(record::archive_key(7, 2))
        .expect("remove");
    assert_eq!(
        read().expect_err("a part is missing").to_string(),
        format!(
            "journal at {}: archive entry 7 is damaged: part 2 of 3 is missing. {RESTORE}",
            dir.path().display()
        )
    );
    assert_eq!(
        store
            .read_parts(
                &store.archive,
                &record::archive_prefix(8),
                Location::Archive { key: 8 }
            )
            .expect("read"),
        None
    );
}

// ---------------------------------------------------------------------------
// Records.

#[test]
fn record_framing_round_trips_and_names_damage() {
    let rec = record::frame(4, b"payload");
    assert_eq!(
        record::check(&rec, 100),
        Checked::Valid {
            kind: 4,
            payload: b"payload"
        }
    );
    let check = |value: &[u8], max, expected: &str| {
        let got = match record::check(value, max) {
            Checked::Damaged { what, .. } => what,
            other => format!("{other:?}"),
        };
        assert_eq!(got, expected, "{value:?}");
    };
    check(&[], 100, "the record is empty");
    check(
        &[1, 4, 0],
        100,
        "the record has 3 bytes, fewer than its 10-byte header",
    );
    check(
        &rec,
        3,
        "the header claims 7 payload bytes, over the 3-byte limit",
    );
    check(
        &rec[..12],
        100,
        "the header claims 7 payload bytes but 2 follow",
    );
    check(&[0, 4], 100, "format version 0 was never written");
    check(&[2, 4], 100, "Newer { version: 2 }");
    let mut flipped = rec.clone();
    flipped[12] ^= 1;
    check(
        &flipped,
        100,
        "checksum mismatch: the header says 422c6a15, the payload hashes to 7f4c43a5",
    );
    check(
        &[rec.clone(), vec![0]].concat(),
        100,
        "1 bytes follow the record",
    );
}

#[test]
fn block_framing_round_trips_and_names_damage() {
    let mut writer = record::BlockWriter::default();
    writer.push(1, b"a");
    writer.push(2, b"bc");
    assert_eq!((writer.count(), writer.bytes()), (2, 9 + 11 + 12));
    let block = writer.seal();
    assert_eq!(writer.count(), 0, "sealing empties the writer");
    let records = [record::frame(1, b"a"), record::frame(2, b"bc")].concat();
    assert_eq!(block, seal(2, &records));
    assert_eq!(
        record::check_block(&block),
        record::Block::Valid {
            count: 2,
            records: &records
        }
    );
    let check = |value: &[u8], expected: &str| {
        let got = match record::check_block(value) {
            record::Block::Damaged { what } => what,
            other => format!("{other:?}"),
        };
        assert_eq!(got, expected, "{value:?}");
    };
    check(&[], "the block is empty");
    check(&[0, 1], "format version 0 was never written");
    check(&[3, 1], "Newer { version: 3 }");
    check(
        &block[..5],
        "the block has 5 bytes, fewer than its 9-byte header",
    );
    check(
        &block[..block.len() - 1],
        "checksum mismatch: the header says 19d7b901, the block hashes to b4e500d3",
    );
}

// ---------------------------------------------------------------------------
// The crash loop.

/// Set in the child's environment to the journal's directory.
const CHILD_ENV: &str = "DROVER_WAL_CRASH_CHILD";
/// Replays a run: the seed the crash loop prints.
const SEED_ENV: &str = "DROVER_WAL_CRASH_SEED";
/// Kills per run.
const KILLS: usize = 20;
/// One kill in this many lands during the child's start-up.
const STARTUP_KILL_EVERY: usize = 5;
/// A child that has not been killed by then stops by itself (so a parent
/// that died does not leave it running).
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for a child's next line before calling it hung.
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// Small batches, small queue and frequent snapshots, so kills land in
/// every step of the write path.
fn crash_config(dir: &Path) -> JournalConfig {
    JournalConfig {
        max_batch: 64,
        queue_facts: 128,
        snapshot_every_facts: 500,
        archive_retention_ms: u64::MAX,
        ..JournalConfig::new(dir)
    }
}

/// How many facts the append starting at `first` holds (1 to 40): a
/// function of the seq alone, so the parent knows where appends end.
fn append_len(first: Seq) -> u64 {
    1 + first.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 40
}

/// The child: appends forever from where the journal ends, printing every
/// durable seq as soon as it is durable, until it is killed.
#[test]
fn crash_loop_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    let (journal, rec) = Journal::<Toy>::open(
        crash_config(Path::new(&dir)),
        Box::new(|r| {
            let mut out = std::io::stdout().lock();
            match r {
                Ok(seq) => writeln!(out, "durable {seq}"),
                Err(e) => writeln!(out, "failed {e}"),
            }
            .and_then(|()| out.flush())
            .expect("stdout");
        }),
    )
    .expect("child opens the journal");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "open {} {}", rec.incarnation, rec.last_seq).expect("stdout");
        out.flush().expect("stdout");
    }
    let started = Instant::now();
    let mut last = rec.last_seq;
    while started.elapsed() < CHILD_LIFETIME {
        let n = append_len(last + 1);
        last = journal.append(facts(last + 1..=last + n)).expect("append");
    }
}

/// What the parent read from a child.
#[derive(Debug, Default)]
struct ChildSaw {
    incarnation: Option<u32>,
    max_durable: Seq,
}

#[test]
fn crash_loop_keeps_every_acknowledged_fact() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed: u64 = match std::env::var(SEED_ENV) {
        Ok(s) => s.parse().expect("the seed is a u64"),
        Err(_) => now_ms(),
    };
    println!("crash loop seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let module = module_path!();
    let child_test = format!(
        "{}::crash_loop_child",
        module.split_once("::").map_or(module, |(_, rest)| rest)
    );

    let mut incarnation = 0;
    let mut last_seq = 0;
    let mut expected = Toy::default();
    let mut finished: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut kills_with_acks = 0;
    for round in 0..KILLS {
        let ctx = format!("seed {seed}, round {round}");
        let mut child = Command::new(&exe)
            .args(["--exact", &child_test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped");
        let (lines_tx, lines_rx) = crossbeam_channel::unbounded();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut saw = ChildSaw::default();
        let take = |line: &str, saw: &mut ChildSaw| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("durable"), Some(seq), None) => {
                    saw.max_durable = saw.max_durable.max(seq.parse().expect("seq"));
                }
                (Some("open"), Some(inc), Some(_)) => {
                    saw.incarnation = Some(inc.parse().expect("incarnation"));
                }
                (Some("failed"), ..) => panic!("{ctx}: the child's journal failed: {line}"),
                _ => {} // The test harness's own lines.
            }
        };

        // The moment of the kill: every fifth round during start-up
        // (opening, recovery), the others after 1 to 30 acknowledged
        // commits; then a random delay of up to 3 ms so it lands anywhere in
        // the write path.
        let acks_first: u64 = if round % STARTUP_KILL_EVERY == STARTUP_KILL_EVERY - 1 {
            0
        } else {
            rng.random_range(1..=30)
        };
        let mut acks = 0;
        while acks < acks_first {
            let line = lines_rx
                .recv_timeout(LINE_TIMEOUT)
                .unwrap_or_else(|_| panic!("{ctx}: the child went quiet"));
            acks += u64::from(line.starts_with("durable "));
            take(&line, &mut saw);
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3_000)));
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        reader.join().expect("reader thread");
        // Lines the child wrote before it died: all acknowledged.
        for line in lines_rx.try_iter() {
            take(&line, &mut saw);
        }
        kills_with_acks += usize::from(saw.max_durable > last_seq);

        let (journal, rec) = open(crash_config(dir.path()));
        assert!(
            rec.incarnation > incarnation,
            "{ctx}: {} after {incarnation}",
            rec.incarnation
        );
        if let Some(child_incarnation) = saw.incarnation {
            assert_eq!(rec.incarnation, child_incarnation + 1, "{ctx}");
        }
        assert!(
            rec.last_seq >= saw.max_durable,
            "{ctx}: acknowledged up to {} but recovered only {}",
            saw.max_durable,
            rec.last_seq
        );
        // Whole appends only: the recovered end is where an append ends.
        let mut boundary = last_seq;
        while boundary < rec.last_seq {
            boundary += append_len(boundary + 1);
        }
        assert_eq!(
            boundary, rec.last_seq,
            "{ctx}: the log ends inside an append"
        );
        // A gap-free prefix of exactly the facts written, each whole.
        for fact in facts(last_seq + 1..=rec.last_seq) {
            expected.apply(&fact);
        }
        finished.extend(
            expected
                .take_finished()
                .into_iter()
                .map(|(key, bytes, _)| (key, bytes)),
        );
        assert!(rec.model == expected, "{ctx}: the recovered model differs");
        // Every finished entry is in the archive.
        for (key, bytes) in &finished {
            let got = journal.archived(*key).expect("read the archive");
            assert_eq!(got.as_ref(), Some(bytes), "{ctx}: archive entry {key}");
        }
        journal.close().expect("close");
        incarnation = rec.incarnation;
        last_seq = rec.last_seq;
    }
    println!(
        "crash loop: {KILLS} kills, {kills_with_acks} after acknowledged commits, {last_seq} facts"
    );
    let after_acks = KILLS - KILLS / STARTUP_KILL_EVERY;
    assert!(
        kills_with_acks >= after_acks,
        "{kills_with_acks} kills after acknowledged facts, expected at least {after_acks}"
    );
}
