//! `drover top` on ratatui's test backend: whole screens snapshot-tested
//! (insta) at 80x24 (SSH) and 160x48, and the keys and events checked one
//! case per line.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use drover_shared::api::{FleetNodeState, JobState, PoolView, ScaleDecisionView};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::app::{Action, App, Conn, Focus, Overlay, PoolRow, View};
use super::{fixture, ui};
use crate::events::ApiEvent;

/// 2025-11-24 14:00:00 UTC.
const AT_MS: u64 = 1_764_000_000_000 - 1_764_000_000_000 % 86_400_000 + 14 * 3_600_000;

fn event(kind: &str, job: Option<u64>, node: Option<&str>, data: serde_json::Value) -> ApiEvent {
    ApiEvent {
        id: "1.1".into(),
        kind: kind.into(),
        at_ms: AT_MS + 1_000,
        job,
        project: job.map(|_| "film".into()),
        node: node.map(str::to_string),
        data,
    }
}

/// The app with a fleet of 8 nodes (every state) and 7 jobs (every state),
/// and a few events in its log.
fn app() -> App {
    let mut app = App::new("http://10.0.0.5:8270");
    app.apply_snapshot(fixture::fleet(8, 7, AT_MS));
    app.apply(&event(
        "node.drained",
        None,
        Some("gpu-0005"),
        serde_json::json!({}),
    ));
    app.apply(&event(
        "node.quarantined",
        None,
        Some("gpu-0007"),
        serde_json::json!({"reason": "failed 3 jobs in a row"}),
    ));
    app.apply(&event(
        "job.done",
        Some(4),
        None,
        serde_json::to_value(drover_shared::api::JobSummary {
            id: 4,
            name: "shot-040".into(),
            state: JobState::Done,
            paused: false,
            priority: 52,
            project: "film".into(),
            submitter: "ci".into(),
            frames_total: 628,
            frames_done: 628,
            error: None,
            submitted_at_ms: AT_MS,
            finished_at_ms: Some(AT_MS + 1_000),
            url: "/v1/jobs/4".into(),
        })
        .unwrap(),
    ));
    // The driver does this before every frame.
    app.refresh();
    app
}

fn screen(app: &App, width: u16, height: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    t.backend().to_string()
}

fn key(app: &mut App, code: KeyCode) -> Option<Action> {
    app.key(KeyEvent::new(code, KeyModifiers::NONE))
}

/// Types `text`: `\t` is Tab, `\n` Enter, `v` Down, anything else itself.
fn keys(app: &mut App, text: &str) -> Option<Action> {
    let mut last = None;
    for c in text.chars() {
        let code = match c {
            '\t' => KeyCode::Tab,
            '\n' => KeyCode::Enter,
            'v' => KeyCode::Down,
            c => KeyCode::Char(c),
        };
        last = key(app, code);
    }
    last
}

#[test]
fn the_fleet_at_80x24() {
    insta::assert_snapshot!(screen(&app(), 80, 24));
}

#[test]
fn the_fleet_at_160x48() {
    insta::assert_snapshot!(screen(&app(), 160, 48));
}

#[test]
fn the_help_overlay() {
    let mut app = app();
    key(&mut app, KeyCode::Char('?'));
    assert_eq!(app.overlay, Some(Overlay::Help));
    insta::assert_snapshot!(screen(&app, 80, 24));
    key(&mut app, KeyCode::Char('x'));
    assert_eq!(app.overlay, None, "any key closes it");
}

#[test]
fn a_confirmation_dialog() {
    let mut app = app();
    key(&mut app, KeyCode::Down);
    assert_eq!(keys(&mut app, "d"), None, "asks first");
    assert_eq!(
        app.overlay,
        Some(Overlay::Confirm(Action::Drain("gpu-0001".into())))
    );
    insta::assert_snapshot!(screen(&app, 80, 24));
    assert_eq!(keys(&mut app, "x"), None, "only y or n answer");
    assert_eq!(keys(&mut app, "y"), Some(Action::Drain("gpu-0001".into())));
    assert_eq!(app.overlay, None);
}

#[test]
fn the_reconnecting_header() {
    let mut app = app();
    app.connection_lost("Connection refused (os error 111)".into());
    app.connection_lost("Connection refused (os error 111)".into());
    assert!(matches!(app.conn, Conn::Reconnecting { attempts: 2, .. }));
    insta::assert_snapshot!(screen(&app, 80, 24));
    app.apply_snapshot(fixture::fleet(8, 7, AT_MS + 5_000));
    assert_eq!(app.conn, Conn::Live);
}

#[test]
fn the_pools_panel() {
    let mut app = app();
    key(&mut app, KeyCode::Char('2'));
    assert_eq!(app.view, View::Pools);
    let before = screen(&app, 80, 24);
    assert!(before.contains("no pools API"), "{before}");
    let decision =
        |seq, ago_ms, action: &str, count, node: Option<&str>, reason: &str| ScaleDecisionView {
            seq,
            at_ms: AT_MS - ago_ms,
            pool: "spot".into(),
            action: action.into(),
            node: node.map(str::to_string),
            count,
            reason: reason.into(),
            outcome: "ok".into(),
            error: None,
            output: None,
        };
    let pool = |name: &str, provider: &str, min, max, current, decisions| PoolView {
        name: name.into(),
        provider: provider.into(),
        min,
        max,
        requested: current,
        starting: 0,
        nodes: Vec::new(),
        current,
        draining: Vec::new(),
        backlog_frames: 0,
        work_s: 0.0,
        drain_eta_s: None,
        target_drain_s: 600.0,
        idle_cooldown_s: 300.0,
        last_error: None,
        decisions,
    };
    let mut failed = decision(
        1,
        900_000,
        "scale_up",
        Some(1),
        None,
        "queue 12 min > target 10 min",
    );
    failed.outcome = "failed".into();
    failed.error = Some("kubernetes: 403 forbidden".into());
    let views = [
        pool(
            "spot",
            "kubernetes",
            0,
            20,
            6,
            vec![
                decision(
                    3,
                    60_000,
                    "scale_up",
                    Some(2),
                    None,
                    "queue needs 41 min > target 10 min",
                ),
                decision(
                    2,
                    600_000,
                    "drain",
                    None,
                    Some("gpu-0003"),
                    "idle 300 s > cooldown 300 s",
                ),
                failed,
            ],
        ),
        pool("studio-b", "process", 1, 2, 1, Vec::new()),
    ];
    app.apply_pools(Some(views.iter().map(PoolRow::from_view).collect()));
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn a_thousand_nodes_draw_only_the_rows_that_fit() {
    let mut app = App::new("http://x");
    app.apply_snapshot(fixture::fleet(1_000, 200, AT_MS));
    key(&mut app, KeyCode::End);
    assert_eq!(app.selected_node.as_deref(), Some("gpu-0999"));
    let s = screen(&app, 80, 24);
    assert!(
        s.contains("gpu-0999"),
        "the selection scrolled into view: {s}"
    );
    assert!(!s.contains("gpu-0000"), "{s}");
}

#[test]
fn sorting_filtering_and_selection_follow_the_keys() {
    let check = |keys_typed: &str, focus: Focus, want_first: &str| {
        let mut app = app();
        keys(&mut app, keys_typed);
        assert_eq!(app.focus, focus, "after {keys_typed:?}");
        let first = match focus {
            Focus::Nodes => app.nodes[app.node_order[0]].name.clone(),
            Focus::Jobs => format!("#{}", app.jobs[app.job_order[0]].id),
        };
        assert_eq!(first, want_first, "after {keys_typed:?}");
    };
    // By name; by state (lost first); reversed.
    check("", Focus::Nodes, "gpu-0000");
    check("s", Focus::Nodes, "gpu-0006");
    check("S", Focus::Nodes, "gpu-0007");
    // A filter keeps matching rows only, in any column.
    check("/quarantined\n", Focus::Nodes, "gpu-0007");
    // Jobs: running first by priority; by id, newest first.
    check("\t", Focus::Jobs, "#1");
    check("\tssss", Focus::Jobs, "#7");

    let mut app = app();
    keys(&mut app, "/zzz");
    key(&mut app, KeyCode::Enter);
    assert!(app.node_order.is_empty() && app.selected_node.is_none());
    assert!(screen(&app, 80, 24).contains("no node matches the filter"));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.node_order.len(), 8, "Esc clears the filter");
}

#[test]
fn actions_need_a_confirmation_and_act_on_the_focused_table() {
    let check = |typed: &str, want: Option<Action>| {
        let mut app = app();
        keys(&mut app, typed);
        let got = match app.overlay {
            Some(Overlay::Confirm(a)) => Some(a),
            _ => None,
        };
        assert_eq!(got, want, "{typed:?}");
    };
    check("d", Some(Action::Drain("gpu-0000".into())));
    check("vvu", Some(Action::Undrain("gpu-0002".into())));
    check("\tc", Some(Action::Cancel(1)));
    check("\tr", Some(Action::Retry(1)));
    check("\tp", Some(Action::Pause(1)));
    check("\tsgvp", Some(Action::Pause(3)));
    // A paused job resumes.
    check("\t/paused\np", Some(Action::Resume(2)));
    // Job keys on the fleet, node keys on the jobs: a hint, no dialog.
    check("c", None);
    check("\td", None);
    let mut app = app();
    keys(&mut app, "d");
    assert_eq!(key(&mut app, KeyCode::Char('n')), None);
    assert_eq!(app.overlay, None);
    assert_eq!(keys(&mut app, "q"), Some(Action::Quit));
}

#[test]
fn events_change_rows_until_the_next_snapshot() {
    let mut app = app();
    let state = |app: &App, name: &str| app.nodes.iter().find(|n| n.name == name).map(|n| n.state);
    // From the fixture's events.
    assert_eq!(state(&app, "gpu-0005"), Some(FleetNodeState::Draining));
    app.apply(&event(
        "node.undrained",
        None,
        Some("gpu-0005"),
        serde_json::json!({}),
    ));
    assert_eq!(state(&app, "gpu-0005"), Some(FleetNodeState::Busy));
    app.apply(&event(
        "node.disconnected",
        None,
        Some("gpu-0000"),
        serde_json::json!({}),
    ));
    assert_eq!(state(&app, "gpu-0000"), Some(FleetNodeState::Lost));
    app.apply(&event(
        "node.connected",
        None,
        Some("gpu-0100"),
        serde_json::json!({}),
    ));
    assert_eq!(state(&app, "gpu-0100"), Some(FleetNodeState::Idle));
    let job4 = app.jobs.iter().find(|j| j.id == 4).unwrap();
    assert_eq!((job4.state, job4.eta_s), (JobState::Done, None));
    // A new job's summary adds a row.
    let mut data = serde_json::to_value(&app.jobs[0]).unwrap();
    data["id"] = 99.into();
    data["state"] = "queued".into();
    data["submitter"] = "ci".into();
    data["url"] = "/v1/jobs/99".into();
    app.apply(&event("job.submitted", Some(99), None, data));
    assert!(app.jobs.iter().any(|j| j.id == 99));
    assert_eq!(app.log.len(), 7);
    assert!(app.log.back().unwrap().contains("job.submitted"));
    // The selection stays on its node when a snapshot reorders the rows.
    keys(&mut app, "jjj");
    let selected = app.selected_node.clone();
    app.apply_snapshot(fixture::fleet(8, 7, AT_MS + 2_000));
    assert_eq!(app.selected_node, selected);
    // ... and when a restarted coordinator lists no node until they
    // reconnect; nothing acts on it meanwhile.
    app.apply_snapshot(fixture::fleet(0, 7, AT_MS + 3_000));
    assert_eq!(keys(&mut app, "d"), None);
    assert_eq!(app.overlay, None, "no dialog for a node that is gone");
    app.apply_snapshot(fixture::fleet(8, 7, AT_MS + 4_000));
    assert_eq!(app.selected_node, selected);
}
