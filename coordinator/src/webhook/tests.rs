//! The webhook engine's tests: the signature scheme, the URL check, the
//! backoff, the sans-IO core on a virtual clock, and the whole engine
//! against real HTTP receivers on loopback (no mocks).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::json;

use super::engine::{delivery_id, retry_delay_ms, Answer, Core, Deliveries, Fact, RetryPolicy};
use super::*;

const SECRET: &[u8] = b"whsec-test-0123456789";

// ---------------------------------------------------------------- signing

/// A known answer, computed with Python's `hmac` as in the module docs:
/// `hmac.new(b"whsec-test-0123456789", b'1700000000.{"job":7,"state":"done"}',
/// hashlib.sha256).hexdigest()`. It pins the scheme byte for byte.
#[test]
fn sign_matches_the_documented_scheme() {
    let body = br#"{"job":7,"state":"done"}"#;
    assert_eq!(
        sign(SECRET, 1_700_000_000, body),
        "t=1700000000,v1=4ede9ab9dd345d0ad6114e2d25d5b9aa67aec5619c22e8f04038525f3a998480"
    );
}

#[test]
fn verify_accepts_what_sign_writes() {
    let body = br#"{"job":1}"#;
    let header = sign(SECRET, 1_000, body);
    assert_eq!(verify(SECRET, &header, body, 1_000, 300), Ok(()));
    // At the tolerance's edges, either way.
    assert_eq!(verify(SECRET, &header, body, 1_300, 300), Ok(()));
    assert_eq!(verify(SECRET, &header, body, 700, 300), Ok(()));
    // Spaces around entries are tolerated.
    let spaced = header.replace(',', " , ");
    assert_eq!(verify(SECRET, &spaced, body, 1_000, 300), Ok(()));
}

#[test]
fn verify_refuses_a_tampered_body() {
    let header = sign(SECRET, 1_000, br#"{"job":1}"#);
    assert_eq!(
        verify(SECRET, &header, br#"{"job":2}"#, 1_000, 300),
        Err(VerifyError::Mismatch)
    );
    // A body re-serialized with other whitespace is other bytes.
    assert_eq!(
        verify(SECRET, &header, br#"{"job": 1}"#, 1_000, 300),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn verify_refuses_a_wrong_secret() {
    let header = sign(SECRET, 1_000, b"{}");
    assert_eq!(
        verify(b"another-secret-0123456789", &header, b"{}", 1_000, 300),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn verify_refuses_a_changed_timestamp() {
    // Moving t (to pass the freshness check) breaks the signature.
    let header = sign(SECRET, 1_000, b"{}").replace("t=1000", "t=5000");
    assert_eq!(
        verify(SECRET, &header, b"{}", 5_000, 300),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn verify_refuses_a_stale_or_future_timestamp() {
    let header = sign(SECRET, 1_000, b"{}");
    let stale = verify(SECRET, &header, b"{}", 1_301, 300).unwrap_err();
    assert_eq!(
        stale,
        VerifyError::Stale {
            t: 1_000,
            now_s: 1_301,
            tolerance_s: 300
        }
    );
    assert_eq!(
        stale.to_string(),
        "the Drover-Signature timestamp t=1000 is 301 s away from now (1301), outside the \
         tolerance of 300 s: a replayed or long-delayed delivery, or a clock out of sync"
    );
    assert!(matches!(
        verify(SECRET, &header, b"{}", 699, 300),
        Err(VerifyError::Stale { .. })
    ));
}

#[test]
fn verify_accepts_any_matching_v1_during_rotation() {
    let old = b"old-secret-0123456789";
    let new = b"new-secret-0123456789";
    let body = b"{\"job\":3}";
    let v1 = |secret: &[u8]| {
        sign(secret, 2_000, body)
            .split_once(",v1=")
            .unwrap()
            .1
            .to_owned()
    };
    let both = format!("t=2000,v1={},v1={}", v1(old), v1(new));
    assert_eq!(verify(old, &both, body, 2_000, 300), Ok(()));
    assert_eq!(verify(new, &both, body, 2_000, 300), Ok(()));
    assert_eq!(
        verify(b"third-secret-0123456789", &both, body, 2_000, 300),
        Err(VerifyError::Mismatch)
    );
    // An entry of a scheme this code does not know is ignored.
    let with_v2 = format!("t=2000,v2=zzz,v1={}", v1(new));
    assert_eq!(verify(new, &with_v2, body, 2_000, 300), Ok(()));
}

/// One garbled header: `verify`'s error, as text.
fn check_header(header: &str, expect: &str) {
    let got = match verify(SECRET, header, b"{}", 1_000, 300) {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    assert_eq!(got, expect, "header {header:?}");
}

#[test]
fn verify_refuses_missing_and_garbled_headers() {
    let good = "0".repeat(64);
    check_header(
        "",
        "no Drover-Signature header (or it is empty): the request is not signed",
    );
    check_header(
        "   ",
        "no Drover-Signature header (or it is empty): the request is not signed",
    );
    check_header(
        "garbage",
        "the Drover-Signature header is malformed: `garbage` is not key=value",
    );
    check_header(
        &format!("v1={good}"),
        "the Drover-Signature header is malformed: it has no t= entry",
    );
    check_header(
        "t=1000",
        "the Drover-Signature header is malformed: it has no v1= entry",
    );
    check_header(
        &format!("t=soon,v1={good}"),
        "the Drover-Signature header is malformed: t=`soon` is not a number of seconds",
    );
    check_header(
        &format!("t=1,t=2,v1={good}"),
        "the Drover-Signature header is malformed: it has two t= entries",
    );
    check_header(
        "t=1000,v1=abc",
        "the Drover-Signature header is malformed: v1=`abc` is not 64 hex digits",
    );
    check_header(
        &format!("t=1000,v1={}", "x".repeat(64)),
        "the Drover-Signature header is malformed: v1=`xxxxxxxxxxxxxxxx` is not 64 hex digits",
    );
    check_header(
        &format!("t=1000,{}", "v1=00,".repeat(300)),
        "the Drover-Signature header is malformed: it is 1807 bytes long, more than the 1024 \
         bytes read",
    );
    // Well formed but not signed with this secret.
    check_header(
        &format!("t=1000,v1={good}"),
        "the Drover-Signature header does not match the body: no v1 signature verifies with \
         this secret (a wrong or rotated secret, or a body changed on the way)",
    );
}

proptest! {
    #[test]
    fn sign_then_verify_round_trips(
        secret in proptest::collection::vec(any::<u8>(), 16..64),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        t in 0u64..4_000_000_000,
        skew in 0u64..=300,
    ) {
        let header = sign(&secret, t, &body);
        prop_assert_eq!(verify(&secret, &header, &body, t + skew, 300), Ok(()));
        prop_assert_eq!(verify(&secret, &header, &body, t.saturating_sub(skew), 300), Ok(()));
    }
}

// ---------------------------------------------------------------- URLs

fn check_url_case(url: &str, expect: &str) {
    let got = match check_url(url) {
        Ok(()) => "ok".to_owned(),
        Err(e) => e,
    };
    assert_eq!(got, expect, "url {url:?}");
}

#[test]
fn check_url_accepts_http_with_a_host() {
    for url in [
        "http://example.com",
        "http://example.com/",
        "http://example.com:8080/hooks/drover?token=abc#x",
        "HTTP://Example.COM/x",
        "http://127.0.0.1:9/",
        "http://[::1]:8080/hook",
        "http://[fe80::1]/",
        "http://render-farm_hooks.internal/a@b",
        "http://bücher.example/",
        "https://example.com/",
    ] {
        check_url_case(url, "ok");
    }
}

#[test]
fn check_url_refuses_with_a_reason() {
    check_url_case(
        "ftp://example.com/",
        "the scheme `ftp` is not supported: use http:// or https://",
    );
    check_url_case(
        "example.com/hook",
        "it is not an absolute URL: it must start with http://",
    );
    check_url_case("http:///hook", "it has no host");
    check_url_case("http://:80/", "it has no host");
    check_url_case(
        "http://user:pw@example.com/",
        "user:password@ is not allowed in a webhook URL (the signature authenticates \
         deliveries; put any token of the receiver's in the path or query)",
    );
    check_url_case(
        "http://example.com:0/",
        "its port `0` is not a number from 1 to 65535",
    );
    check_url_case(
        "http://example.com:99999/",
        "its port `99999` is not a number from 1 to 65535",
    );
    check_url_case(
        "http://example.com:/",
        "its port `` is not a number from 1 to 65535",
    );
    check_url_case(
        "http://exa mple.com/",
        "it contains whitespace or a control character",
    );
    check_url_case(
        "http://example.com/\r\nX-Injected: 1",
        "it contains whitespace or a control character",
    );
    check_url_case(
        "http://exa%mple.com/",
        "its host `exa%mple.com` has characters a host name cannot have",
    );
    check_url_case("http://[::1/", "its IPv6 host has no closing `]`");
    check_url_case("http://[::1]x/", "text follows its IPv6 host");
    check_url_case("http://[zz]/", "`[zz]` is not an IPv6 address");
    let long = format!("http://example.com/{}", "a".repeat(MAX_URL_BYTES));
    check_url_case(&long, "it is 2067 bytes long, more than the 2048 allowed");
    let just = format!(
        "http://example.com/{}",
        "a".repeat(MAX_URL_BYTES - "http://example.com/".len())
    );
    check_url_case(&just, "ok");
}

// ---------------------------------------------------------------- backoff

#[test]
fn backoff_doubles_up_to_the_cap() {
    // (attempt, draw) -> delay, base 1000, cap 600_000.
    let cases: [(u32, u64, u64); 11] = [
        (1, 0, 500),                  // the floor: half the base
        (1, 250, 750),                // within [500, 1000]
        (1, u64::MAX, 548),           // u64::MAX % 501 = 48
        (1, 500, 1_000),              // the ceiling is reachable
        (2, 1_500, 2_000),            // ceiling 2000
        (3, 3_500, 4_000),            // ceiling 4000
        (10, 511_500, 512_000),       // ceiling 512_000
        (11, 599_500, 600_000),       // 1_024_000 capped
        (40, 599_500, 600_000),       // far past the cap
        (u32::MAX, 599_500, 600_000), // no overflow
        (0, 500, 1_000),              // attempt 0 reads as 1
    ];
    for (attempt, draw, expect) in cases {
        assert_eq!(
            retry_delay_ms(attempt, 1_000, 600_000, draw),
            expect,
            "attempt {attempt}, draw {draw}"
        );
    }
    // The whole u64 range as the span: every draw is in it.
    assert_eq!(retry_delay_ms(64, 1, u64::MAX, 12345), 12345);
}

proptest! {
    #[test]
    fn backoff_stays_within_bounds(
        attempt in 1u32..200,
        base in 1u64..10_000_000,
        extra in 0u64..100_000_000,
        draw in any::<u64>(),
    ) {
        let max = base + extra;
        let delay = retry_delay_ms(attempt, base, max, draw);
        let ceiling = if attempt > 63 {
            max
        } else {
            base.saturating_mul(1u64 << (attempt - 1)).min(max)
        };
        prop_assert!(delay <= ceiling, "delay {} over ceiling {}", delay, ceiling);
        prop_assert!(delay <= max);
        prop_assert!(delay >= base / 2, "delay {} under half the base {}", delay, base);
        // The ceiling never shrinks from one attempt to the next.
        let next_ceiling = retry_delay_ms(attempt + 1, base, max, u64::MAX - (u64::MAX % 2));
        prop_assert!(next_ceiling >= base / 2);
    }
}

// ---------------------------------------------------------------- the core

const POLICY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_backoff_ms: 1_000,
    max_backoff_ms: 10_000,
};
const DAY_MS: u64 = 24 * 3600 * 1000;

fn urls(list: &[&str]) -> Vec<String> {
    list.iter().map(|u| u.to_string()).collect()
}

fn core_at(now_ms: u64) -> Core {
    Core::new(Deliveries::default(), POLICY, 7 * DAY_MS, now_ms)
}

/// The model after folding `facts` into a fresh one, as a replay would.
fn replay(facts: &[Fact]) -> Deliveries {
    let mut model = Deliveries::default();
    for f in facts {
        model.apply(f);
    }
    model
}

#[test]
fn core_enqueue_is_idempotent_per_job_event_and_url() {
    let mut core = core_at(0);
    let a = "http://a.example/";
    let facts = core.enqueue(10, 1, "job.done", &urls(&[a, a, "http://b.example/"]), "{}");
    assert_eq!(facts.len(), 2, "a URL repeated in one call is one delivery");
    assert!(core
        .enqueue(20, 1, "job.done", &urls(&[a]), "{\"other\":1}")
        .is_empty());
    // Another event or job is another delivery.
    assert_eq!(
        core.enqueue(30, 1, "job.failed", &urls(&[a]), "{}").len(),
        1
    );
    assert_eq!(core.enqueue(30, 2, "job.done", &urls(&[a]), "{}").len(), 1);
    assert_eq!(core.pending(), 4);
    assert_eq!(delivery_id(1, "job.done", a), delivery_id(1, "job.done", a));
    assert_ne!(delivery_id(1, "job.done", a), delivery_id(2, "job.done", a));
    assert_ne!(
        delivery_id(1, "job.done", a),
        delivery_id(1, "job.failed", a)
    );
    assert_eq!(delivery_id(1, "job.done", a).len(), 32);
    // An Enqueued fact for a known id changes nothing, even replayed.
    let mut all = facts.clone();
    all.push(Fact::Enqueued {
        id: delivery_id(1, "job.done", a),
        job: 1,
        event: "job.done".into(),
        url: a.into(),
        body: "{\"other\":1}".into(),
        created_ms: 99,
    });
    assert_eq!(replay(&all), replay(&facts));
}

#[test]
fn core_sends_in_due_order_and_never_twice_at_once() {
    let mut core = core_at(0);
    core.enqueue(10, 1, "job.done", &urls(&["http://a/"]), "{\"n\":1}");
    core.enqueue(20, 2, "job.done", &urls(&["http://b/"]), "{\"n\":2}");
    assert_eq!(core.poll_send(9), None, "not due before it was created");
    let first = core.poll_send(20).unwrap();
    assert_eq!((first.url.as_str(), first.attempt), ("http://a/", 1));
    assert_eq!(first.body, "{\"n\":1}");
    assert_eq!(first.event, "job.done");
    let second = core.poll_send(20).unwrap();
    assert_eq!(second.url, "http://b/");
    assert_eq!(core.poll_send(1_000_000), None, "both are in flight");
    assert!(core.views(2)[0].sending);
    assert_eq!(core.views(1)[0].state, DeliveryState::Pending);
    assert!(core.views(1)[0].sending);
}

#[test]
fn core_retries_with_backoff_then_gives_up() {
    let mut core = core_at(0);
    let mut log = core.enqueue(0, 1, "job.done", &urls(&["http://a/"]), "{}");
    // Attempt 1 refused: the retry is within [500, 1000] ms.
    let send = core.poll_send(0).unwrap();
    let facts = core.on_answer(&send, 100, Answer::Status(500), 0);
    assert_eq!(
        facts,
        vec![Fact::Attempted {
            id: send.id.clone(),
            attempt: 1,
            at_ms: 100,
            status: Some(500),
            error: None,
            next_at_ms: Some(600),
        }]
    );
    log.extend(facts);
    assert_eq!(
        core.next_deadline_ms(),
        0,
        "the first prune is due at start"
    );
    assert_eq!(core.poll_prune(0), None, "nothing finished to prune");
    assert_eq!(core.next_deadline_ms(), 600);
    assert_eq!(core.poll_send(599), None);
    // Attempt 2: no answer; the error text is clipped.
    let send = core.poll_send(600).unwrap();
    assert_eq!(send.attempt, 2);
    let long = "connection refused ".repeat(50);
    let facts = core.on_answer(&send, 700, Answer::Error(long), 1_500);
    let Fact::Attempted {
        error: Some(error),
        next_at_ms,
        ..
    } = &facts[0]
    else {
        panic!("{facts:?}")
    };
    assert_eq!(error.chars().count(), 200);
    assert_eq!(*next_at_ms, Some(700 + 2_000));
    log.extend(facts);
    // Attempt 3 is the last: it gives up.
    let send = core.poll_send(2_700).unwrap();
    let facts = core.on_answer(&send, 2_800, Answer::Status(302), 0);
    assert_eq!(
        facts[1],
        Fact::GaveUp {
            id: send.id.clone(),
            at_ms: 2_800
        }
    );
    log.extend(facts);
    assert_eq!(core.pending(), 0);
    let view = &core.views(1)[0];
    assert_eq!(view.state, DeliveryState::Failed);
    assert_eq!(view.finished_at_ms, Some(2_800));
    assert_eq!(view.next_attempt_at_ms, None);
    let statuses: Vec<_> = view.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), None, Some(302)]);
    assert_eq!(view.attempts[2].next_at_ms, None);
    // The journal's replay agrees with the core, and the body is dropped.
    assert_eq!(&replay(&log), core.model());
    assert_eq!(core.model().get(&send.id).unwrap().body, "");
}

#[test]
fn core_delivers_on_any_2xx() {
    for (status, delivered) in [
        (200, true),
        (204, true),
        (299, true),
        (300, false),
        (199, false),
    ] {
        let mut core = core_at(0);
        core.enqueue(0, 1, "job.done", &urls(&["http://a/"]), "{}");
        let send = core.poll_send(0).unwrap();
        core.on_answer(&send, 5, Answer::Status(status), 0);
        let state = core.views(1)[0].state;
        let expect = if delivered {
            DeliveryState::Delivered
        } else {
            DeliveryState::Pending
        };
        assert_eq!(state, expect, "status {status}");
    }
}

#[test]
fn core_resumes_pending_deliveries_with_their_attempts_and_due_time() {
    let mut core = core_at(0);
    let mut log = core.enqueue(0, 1, "job.done", &urls(&["http://a/"]), "{\"x\":1}");
    let send = core.poll_send(0).unwrap();
    log.extend(core.on_answer(&send, 10, Answer::Status(503), 0));
    // A restart: the model through the snapshot codec, into a new core.
    let json = serde_json::to_vec(&replay(&log)).unwrap();
    let model: Deliveries = serde_json::from_slice(&json).unwrap();
    assert_eq!(&model, core.model());
    let mut again = Core::new(model, POLICY, 7 * DAY_MS, 20);
    assert_eq!(again.pending(), 1);
    assert_eq!(again.poll_send(509), None, "still waiting for its retry");
    let send = again.poll_send(510).unwrap();
    assert_eq!(send.attempt, 2);
    assert_eq!(send.body, "{\"x\":1}");
}

#[test]
fn core_prunes_finished_deliveries_after_the_retention_hourly() {
    let mut core = Core::new(Deliveries::default(), POLICY, DAY_MS, 0);
    assert_eq!(core.poll_prune(0), None);
    core.enqueue(0, 1, "job.done", &urls(&["http://a/"]), "{}");
    core.enqueue(0, 2, "job.done", &urls(&["http://b/"]), "{}");
    let send = core.poll_send(0).unwrap();
    core.on_answer(&send, 1_000, Answer::Status(200), 0);
    // Job 2's delivery stays pending, and pending ones are never pruned.
    let hour = engine::PRUNE_EVERY_MS;
    assert_eq!(core.next_deadline_ms(), 0);
    assert_eq!(
        core.poll_prune(hour - 1),
        None,
        "the next prune is an hour after start"
    );
    assert_eq!(
        core.poll_prune(DAY_MS),
        None,
        "finished less than a day ago"
    );
    assert_eq!(
        core.poll_prune(DAY_MS + hour / 2),
        None,
        "not an hour since the last"
    );
    let fact = core.poll_prune(DAY_MS + hour).unwrap();
    assert_eq!(fact, Fact::Pruned { before_ms: hour });
    assert!(core.views(1).is_empty());
    assert_eq!(core.views(2).len(), 1);
    assert_eq!(core.pending(), 1);
}

// ---------------------------------------------------------------- secret

#[test]
fn a_secret_is_made_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let first = secret::secret_from(dir.path(), None).unwrap();
    assert_eq!(first.len(), 64);
    assert!(first.iter().all(|b| b.is_ascii_hexdigit()));
    let second = secret::secret_from(dir.path(), None).unwrap();
    assert_eq!(first, second);
    let file = dir.path().join(SECRET_FILE);
    assert_eq!(std::fs::read(&file).unwrap(), [&first[..], b"\n"].concat());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let other = tempfile::tempdir().unwrap();
    assert_ne!(secret::secret_from(other.path(), None).unwrap(), first);
}

#[test]
fn a_secret_file_from_the_environment_is_trimmed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared-secret");
    std::fs::write(&file, "  correct-horse-battery-staple\n").unwrap();
    assert_eq!(
        secret::secret_from(dir.path(), Some(&file)).unwrap(),
        b"correct-horse-battery-staple"
    );
    assert!(!dir.path().join(SECRET_FILE).exists(), "nothing generated");
    std::fs::write(&file, "short\n").unwrap();
    let err = format!(
        "{:#}",
        secret::secret_from(dir.path(), Some(&file)).unwrap_err()
    );
    assert!(
        err.contains("is 5 bytes long once trimmed; at least 16 are needed"),
        "{err}"
    );
    assert!(err.starts_with("DROVER_WEBHOOK_SECRET_FILE="), "{err}");
    let missing = dir.path().join("nope");
    let err = format!(
        "{:#}",
        secret::secret_from(dir.path(), Some(&missing)).unwrap_err()
    );
    assert!(err.contains("nope"), "{err}");
}

// ---------------------------------------------------------------- config

#[test]
fn config_is_checked_and_its_debug_hides_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WebhookConfig::new(dir.path(), b"super-secret-value-123".to_vec());
    assert!(!format!("{cfg:?}").contains("super-secret"));
    type Change = fn(&mut WebhookConfig);
    let cases: [(Change, &str); 4] = [
        (
            |c| c.secret = b"short".to_vec(),
            "webhook config: secret (bytes) = 5: must be at least 16",
        ),
        (
            |c| c.max_attempts = 0,
            "webhook config: max_attempts = 0: must be 1 to 100",
        ),
        (
            |c| c.max_backoff_ms = 10,
            "webhook config: max_backoff_ms = 10: must be at least base_backoff_ms (1000)",
        ),
        (
            |c| c.concurrency = 0,
            "webhook config: concurrency = 0: must be 1 to 64",
        ),
    ];
    for (change, expect) in cases {
        let mut bad = cfg.clone();
        change(&mut bad);
        let err = Webhooks::start(bad).unwrap_err();
        assert_eq!(err.to_string(), expect);
    }
}

// ---------------------------------------------------------------- end to end

/// How long any condition may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it yields, failing after [`DEADLINE`].
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn test_config(dir: &Path) -> WebhookConfig {
    let mut cfg = WebhookConfig::new(dir, SECRET.to_vec());
    cfg.base_backoff_ms = 20;
    cfg.max_backoff_ms = 50;
    cfg.timeout_ms = 5_000;
    cfg.concurrency = 4;
    cfg
}

/// Starts the engine, waiting out the file lock of a journal just closed
/// on the same dir (sled's flusher lets go of it shortly after).
fn start(cfg: &WebhookConfig) -> Webhooks {
    wait_for("the webhook journal's lock", || {
        match Webhooks::start(cfg.clone()) {
            Ok(w) => Some(w),
            Err(e) if format!("{e:#}").contains("lock") => None,
            Err(e) => panic!("starting webhooks: {e:#}"),
        }
    })
}

/// A request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    event: Option<String>,
    delivery: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
    /// `verify`'s verdict on the signature.
    verified: Result<(), VerifyError>,
}

#[derive(Default)]
struct ReceiverState {
    /// Statuses for the next requests, in order; then `then`.
    script: VecDeque<u16>,
    then: u16,
    /// Requests wait for this before they are answered.
    held: bool,
    received: Vec<Received>,
}

/// A small HTTP/1.1 server on 127.0.0.1: verifies each request's signature
/// (400 when it fails), records it, and answers as scripted.
struct Receiver {
    addr: SocketAddr,
    state: Arc<(Mutex<ReceiverState>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn new(script: &[u16], then: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((
            Mutex::new(ReceiverState {
                script: script.iter().copied().collect(),
                then,
                ..ReceiverState::default()
            }),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stopping) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || serve(stream, &st));
            }
        });
        Receiver { addr, state, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.state.0.lock().unwrap().received.clone()
    }

    fn set(&self, change: impl FnOnce(&mut ReceiverState)) {
        change(&mut self.state.0.lock().unwrap());
        self.state.1.notify_all();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.set(|s| s.held = false);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request, verifies it, answers it.
fn serve(stream: TcpStream, state: &(Mutex<ReceiverState>, Condvar)) {
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // the Drop's wake-up connection
    }
    assert!(line.starts_with("POST "), "request line {line:?}");
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').unwrap();
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let len: usize = header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let verified = verify(
        SECRET,
        &header("drover-signature").unwrap_or_default(),
        &body,
        now_s,
        sign::DEFAULT_TOLERANCE_S,
    );
    let status = {
        let (lock, cv) = state;
        let mut s = lock.lock().unwrap();
        s.received.push(Received {
            event: header("drover-event"),
            delivery: header("drover-delivery"),
            content_type: header("content-type"),
            body,
            verified: verified.clone(),
        });
        let scripted = s.script.pop_front().unwrap_or(s.then);
        let until = Instant::now() + DEADLINE;
        while s.held && Instant::now() < until {
            s = cv.wait_timeout(s, Duration::from_millis(100)).unwrap().0;
        }
        if verified.is_ok() {
            scripted
        } else {
            400
        }
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.flush();
}

fn outcome(job: u64) -> serde_json::Value {
    json!({ "job": job, "state": "done", "note": "ünïcödé \"quoted\" \\ kept" })
}

#[test]
fn a_delivery_refused_twice_is_delivered_on_the_third_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new(&[500, 500], 200);
    let hooks = start(&test_config(dir.path()));
    let url = receiver.url("/hook");
    hooks
        .enqueue(7, "job.done", std::slice::from_ref(&url), &outcome(7))
        .unwrap();
    let view = wait_for("the delivery", || {
        let v = hooks.deliveries(7).pop()?;
        (v.state == DeliveryState::Delivered).then_some(v)
    });
    assert_eq!(view.url, url);
    assert_eq!(view.event, "job.done");
    assert_eq!(view.id, delivery_id(7, "job.done", &url));
    let statuses: Vec<_> = view.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
    assert!(view.attempts.iter().all(|a| a.error.is_none()));
    let nexts: Vec<_> = view
        .attempts
        .iter()
        .map(|a| a.next_at_ms.is_some())
        .collect();
    assert_eq!(nexts, [true, true, false]);
    // Each retry waited at least half the base after the failure before it.
    for pair in view.attempts.windows(2) {
        let next = pair[0].next_at_ms.unwrap();
        assert!(next >= pair[0].at_ms + 10, "{pair:?}");
        assert!(next <= pair[0].at_ms + 50, "{pair:?}");
        assert!(pair[1].at_ms >= next, "{pair:?}");
    }
    assert_eq!(view.finished_at_ms, Some(view.attempts[2].at_ms));
    // What the receiver saw: three signed, identical requests.
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    let body = serde_json::to_vec(&outcome(7)).unwrap();
    for r in &got {
        assert_eq!(r.verified, Ok(()));
        assert_eq!(r.body, body);
        assert_eq!(r.event.as_deref(), Some("job.done"));
        assert_eq!(r.delivery.as_deref(), Some(view.id.as_str()));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
    }
    hooks.close();
}

#[test]
fn enqueue_is_idempotent_per_job_event_and_url() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new(&[], 200);
    let hooks = start(&test_config(dir.path()));
    let url = receiver.url("/once");
    let twice = vec![url.clone(), url.clone()];
    hooks.enqueue(1, "job.done", &twice, &outcome(1)).unwrap();
    hooks.enqueue(1, "job.done", &twice, &outcome(1)).unwrap();
    wait_for("the delivery", || {
        let v = hooks.deliveries(1);
        (v.len() == 1 && v[0].state == DeliveryState::Delivered).then_some(())
    });
    // Again once delivered: nothing new is pending or recorded.
    hooks
        .enqueue(1, "job.done", std::slice::from_ref(&url), &outcome(1))
        .unwrap();
    assert_eq!(hooks.pending(), 0);
    let views = hooks.deliveries(1);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].attempts.len(), 1);
    assert_eq!(receiver.received().len(), 1);
    // A restart does not undo it either.
    hooks.close();
    let hooks = start(&test_config(dir.path()));
    hooks
        .enqueue(1, "job.done", std::slice::from_ref(&url), &outcome(1))
        .unwrap();
    assert_eq!(hooks.pending(), 0);
    assert_eq!(hooks.deliveries(1), views);
    // Another event of the same job is its own delivery.
    hooks.enqueue(1, "job.failed", &[url], &outcome(1)).unwrap();
    wait_for("the second event", || {
        let v = hooks.deliveries(1);
        (v.len() == 2 && v.iter().all(|d| d.state == DeliveryState::Delivered)).then_some(())
    });
    assert_eq!(receiver.received().len(), 2);
    hooks.close();
}

#[test]
fn a_pending_delivery_resumes_after_a_restart_with_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    // Refuses everything until told otherwise, so the delivery is still
    // pending when the engine closes.
    let receiver = Receiver::new(&[], 503);
    let mut cfg = test_config(dir.path());
    cfg.max_attempts = 50;
    let hooks = start(&cfg);
    let url = receiver.url("/later");
    hooks.enqueue(9, "job.done", &[url], &outcome(9)).unwrap();
    let before = wait_for("two failed attempts", || {
        let v = hooks.deliveries(9).pop()?;
        (v.attempts.len() >= 2).then_some(v.attempts)
    });
    hooks.close();
    receiver.set(|s| s.then = 200);
    let hooks = start(&cfg);
    let view = wait_for("the delivery after the restart", || {
        let v = hooks.deliveries(9).pop()?;
        (v.state == DeliveryState::Delivered).then_some(v)
    });
    // The attempts before the restart are kept (one more may have ended
    // while the engine closed), then the one that delivered.
    assert_eq!(view.attempts[..before.len()], before[..]);
    let (last, failed) = view.attempts.split_last().unwrap();
    assert_eq!(last.status, Some(200));
    assert!(failed.iter().all(|a| a.status == Some(503)));
    let numbers: Vec<u32> = view.attempts.iter().map(|a| a.attempt).collect();
    let expect: Vec<u32> = (1..=view.attempts.len() as u32).collect();
    assert_eq!(numbers, expect, "the attempt count carried on");
    assert!(receiver.received().iter().all(|r| r.verified.is_ok()));
    hooks.close();
}

#[test]
fn a_delivery_gives_up_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new(&[], 500);
    // A port nothing listens on: bound, then let go.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/nobody", l.local_addr().unwrap())
    };
    let mut cfg = test_config(dir.path());
    cfg.max_attempts = 3;
    let hooks = start(&cfg);
    hooks
        .enqueue(
            4,
            "job.failed",
            &[receiver.url("/x"), closed.clone()],
            &outcome(4),
        )
        .unwrap();
    let views = wait_for("both to give up", || {
        let v = hooks.deliveries(4);
        (v.len() == 2 && v.iter().all(|d| d.state == DeliveryState::Failed)).then_some(v)
    });
    for v in &views {
        assert_eq!(v.attempts.len(), 3, "{v:?}");
        assert_eq!(v.attempts[2].next_at_ms, None);
        assert!(v.attempts[..2].iter().all(|a| a.next_at_ms.is_some()));
        assert_eq!(v.next_attempt_at_ms, None);
        if v.url == closed {
            for a in &v.attempts {
                assert_eq!(a.status, None);
                let error = a.error.as_deref().unwrap();
                assert!(error.chars().count() <= 200);
                assert!(error.to_lowercase().contains("connect"), "{error}");
            }
        } else {
            assert!(v.attempts.iter().all(|a| a.status == Some(500)));
        }
    }
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(hooks.pending(), 0);
    hooks.close();
}

#[test]
fn a_slow_receiver_holds_up_only_its_own_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Receiver::new(&[], 200);
    slow.set(|s| s.held = true);
    let fast = Receiver::new(&[], 200);
    let hooks = start(&test_config(dir.path()));
    hooks
        .enqueue(5, "job.done", &[slow.url("/slow")], &outcome(5))
        .unwrap();
    wait_for("the slow receiver to be called", || {
        (slow.received().len() == 1).then_some(())
    });
    hooks
        .enqueue(6, "job.done", &[fast.url("/fast")], &outcome(6))
        .unwrap();
    wait_for("the fast delivery", || {
        let v = hooks.deliveries(6).pop()?;
        (v.state == DeliveryState::Delivered).then_some(())
    });
    let slow_view = hooks.deliveries(5).pop().unwrap();
    assert_eq!(slow_view.state, DeliveryState::Pending);
    assert!(slow_view.sending);
    assert!(slow_view.attempts.is_empty());
    slow.set(|s| s.held = false);
    wait_for("the slow delivery", || {
        let v = hooks.deliveries(5).pop()?;
        (v.state == DeliveryState::Delivered).then_some(())
    });
    hooks.close();
}

#[test]
fn enqueue_refuses_bad_input_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = start(&test_config(dir.path()));
    let ok = "http://127.0.0.1:9/".to_owned();
    let cases: Vec<(&str, Vec<String>, serde_json::Value, &str)> = vec![
        (
            "job.done",
            vec![ok.clone(), "gopher://example.com/".into()],
            json!({}),
            "webhook URL `gopher://example.com/`: the scheme `gopher` is not supported",
        ),
        (
            "Job Done",
            vec![ok.clone()],
            json!({}),
            "webhook event `Job Done`: an event name is made of a-z, 0-9, `.`, `_` and `-`",
        ),
        (
            "",
            vec![ok.clone()],
            json!({}),
            "webhook event ``: an event name is 1 to 64 bytes, this one is 0",
        ),
        (
            "job.done",
            vec![ok.clone(); MAX_URLS + 1],
            json!({}),
            "job 3: 33 webhook URLs, more than the 32 allowed",
        ),
        (
            "job.done",
            vec![ok.clone()],
            json!({ "big": "x".repeat(MAX_BODY_BYTES) }),
            "job 3: the job.done webhook body is 262154 bytes, more than the 262144 allowed",
        ),
    ];
    for (event, urls, body, expect) in cases {
        let err = hooks
            .enqueue(3, event, &urls, &body)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(expect), "{err}");
    }
    assert!(hooks.deliveries(3).is_empty());
    assert_eq!(hooks.pending(), 0);
    // An empty list is fine and does nothing.
    hooks.enqueue(3, "job.done", &[], &json!({})).unwrap();
    let clone = hooks.clone();
    hooks.close();
    let err = clone.enqueue(3, "job.done", &[ok], &json!({})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "webhook deliveries are stopped (closed, or their journal failed)"
    );
}
