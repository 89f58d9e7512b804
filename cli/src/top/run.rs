//! The driver of `drover top`: the terminal, and four threads feeding one
//! loop through a channel.
//!
//! - **events**: the coordinator's event stream ([`crate::events`]),
//!   resumed with `Last-Event-ID`; each connection and each `reset` asks
//!   for a fresh snapshot.
//! - **snapshots**: `GET /v1/fleet` (and `GET /v1/pools`) every
//!   [`SNAPSHOT_INTERVAL_MS`], at once when asked, and with a growing
//!   pause while the coordinator does not answer (the header then says
//!   "reconnecting").
//! - **input**: terminal keys and resizes.
//! - **actions**: drain, undrain, cancel, retry, pause and resume through
//!   the REST API, one at a time, each answered on the status line.
//!
//! The loop applies what arrives to the [`App`] and redraws when something
//! changed: at once after a key, and at most [`MAX_REDRAWS_PER_S`] times a
//! second for data, so a busy farm cannot turn it into a busy loop. The
//! terminal is restored on exit, on a panic (ratatui's hook) and on SIGTERM
//! or SIGHUP (a closed SSH session).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_shared::api::{FleetView, PoolView};

use super::app::{Action, App, PoolRow};
use crate::client::{ApiError, Client};
use crate::events::{EventQuery, StreamItem};

/// How often the fleet is read while the coordinator answers: heartbeat
/// ages, loads and rates are not events, and a second or two is as fresh
/// as a person reads them.
pub const SNAPSHOT_INTERVAL_MS: u64 = 1_500;
/// Bounds on the pause between attempts while the coordinator does not
/// answer: it doubles from the first to the second.
pub const MIN_RETRY_MS: u64 = 250;
/// See [`MIN_RETRY_MS`].
pub const MAX_RETRY_MS: u64 = 4_000;
/// Redraws for data changes at most this often (keys redraw at once).
pub const MAX_REDRAWS_PER_S: u64 = 4;

enum Msg {
    Fleet(Result<(FleetView, Option<Vec<PoolRow>>), String>),
    Stream(Result<StreamItem, String>),
    StreamEnded(String),
    Term(crossterm::event::Event),
    Done(Action, Result<(), String>),
}

/// The pause before the next snapshot after `failures` failed ones in a
/// row.
pub fn retry_delay_ms(failures: u32) -> u64 {
    if failures == 0 {
        return SNAPSHOT_INTERVAL_MS;
    }
    MIN_RETRY_MS
        .saturating_mul(1 << (failures - 1).min(8))
        .min(MAX_RETRY_MS)
}

/// The pools, `None` when this coordinator has no pools API (404).
fn pools(client: &Client) -> anyhow::Result<Option<Vec<PoolRow>>> {
    match client.get_json::<Vec<PoolView>>("/v1/pools") {
        Ok(v) => Ok(Some(v.iter().map(PoolRow::from_view).collect())),
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 404) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn short(e: &anyhow::Error) -> String {
    // The root cause (`Connection refused`) says more on one line than the
    // context chain.
    match e.downcast_ref::<ApiError>() {
        Some(a) => a.to_string(),
        None => e.root_cause().to_string(),
    }
}

fn snapshots(client: Client, tx: mpsc::Sender<Msg>, poke: mpsc::Receiver<()>) {
    let mut failures = 0u32;
    loop {
        let got = client
            .get_json::<FleetView>("/v1/fleet")
            .and_then(|f| Ok((f, pools(&client)?)));
        failures = match &got {
            Ok(_) => 0,
            Err(_) => failures.saturating_add(1),
        };
        if tx.send(Msg::Fleet(got.map_err(|e| short(&e)))).is_err() {
            return;
        }
        match poke.recv_timeout(Duration::from_millis(retry_delay_ms(failures))) {
            Ok(()) => {
                // Several pokes in a row need one snapshot.
                while poke.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn stream(client: Client, tx: mpsc::Sender<Msg>) {
    for item in client.events_with(EventQuery::default()) {
        // The stream's own message says what it does next (reconnecting).
        if tx
            .send(Msg::Stream(item.map_err(|e| e.to_string())))
            .is_err()
        {
            return;
        }
    }
    let _ = tx.send(Msg::StreamEnded(
        "the event stream ended (see the error above); the tables still refresh".into(),
    ));
}

fn act(client: &Client, a: &Action) -> anyhow::Result<()> {
    match a {
        Action::Drain(n) => client.drain(n, Some(false)),
        Action::Undrain(n) => client.drain(n, None),
        Action::Cancel(j) => client.cancel(*j).map(drop),
        Action::Retry(j) => client.retry(*j).map(drop),
        Action::Pause(j) => client.pause(*j).map(drop),
        Action::Resume(j) => client.resume(*j).map(drop),
        Action::Quit => Ok(()),
    }
}

fn actions(
    client: Client,
    tx: mpsc::Sender<Msg>,
    todo: mpsc::Receiver<Action>,
    poke: mpsc::Sender<()>,
) {
    for a in todo {
        let r = act(&client, &a).map_err(|e| short(&e));
        if tx.send(Msg::Done(a, r)).is_err() {
            return;
        }
        // Show the change's figures without waiting for the next tick.
        let _ = poke.send(());
    }
}

fn input(tx: mpsc::Sender<Msg>) {
    while let Ok(e) = crossterm::event::read() {
        if tx.send(Msg::Term(e)).is_err() {
            return;
        }
    }
}

/// Runs `drover top` against `client`'s coordinator until the user quits
/// or a signal asks it to stop.
pub fn run(client: Client) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let (tx, rx) = mpsc::channel();
    let (poke_tx, poke_rx) = mpsc::channel();
    let (todo_tx, todo_rx) = mpsc::channel();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .with_context(|| format!("starting the {name} thread"))
    };
    {
        let (c, tx) = (client.clone(), tx.clone());
        spawn("top-snapshots", Box::new(move || snapshots(c, tx, poke_rx)))?;
    }
    {
        let (c, tx) = (client.clone(), tx.clone());
        spawn("top-events", Box::new(move || stream(c, tx)))?;
    }
    {
        let (c, tx, poke) = (client.clone(), tx.clone(), poke_tx.clone());
        spawn(
            "top-actions",
            Box::new(move || actions(c, tx, todo_rx, poke)),
        )?;
    }
    {
        let tx = tx.clone();
        spawn("top-input", Box::new(move || input(tx)))?;
    }
    drop(tx);

    // Raw mode and the alternate screen, with a panic hook that restores
    // the terminal before the message prints.
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, client.base(), &rx, &poke_tx, &todo_tx, &stop);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    url: &str,
    rx: &mpsc::Receiver<Msg>,
    poke: &mpsc::Sender<()>,
    todo: &mpsc::Sender<Action>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut app = App::new(url);
    let min_frame = Duration::from_millis(1_000 / MAX_REDRAWS_PER_S);
    let mut last_draw: Option<Instant> = None;
    let mut draw_now = true;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let since = last_draw.map_or(min_frame, |t| t.elapsed());
        if draw_now || (app.dirty && since >= min_frame) {
            app.refresh();
            terminal.draw(|f| super::ui::draw(f, &app))?;
            app.dirty = false;
            draw_now = false;
            last_draw = Some(Instant::now());
            continue;
        }
        // Wake for the next allowed redraw, or to look at the stop flag.
        let due = if app.dirty {
            min_frame - since
        } else {
            min_frame
        };
        let msg = match rx.recv_timeout(due) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match msg {
            Msg::Fleet(Ok((fleet, pools))) => {
                app.apply_snapshot(fleet);
                app.apply_pools(pools);
            }
            Msg::Fleet(Err(e)) => app.connection_lost(e),
            Msg::Stream(Ok(StreamItem::Connected { .. })) => {
                // Changes before this connection are not in the stream.
                let _ = poke.send(());
            }
            Msg::Stream(Ok(StreamItem::Reset { detail, .. })) => {
                app.log_line(format!("reset: {detail}"));
                let _ = poke.send(());
            }
            Msg::Stream(Ok(StreamItem::Event { event, .. })) => app.apply(&event),
            Msg::Stream(Err(e)) => app.log_line(format!("event stream: {e}")),
            Msg::StreamEnded(why) => app.log_line(why),
            Msg::Term(crossterm::event::Event::Key(k)) => {
                if let Some(a) = app.key(k) {
                    if a == Action::Quit {
                        return Ok(());
                    }
                    app.status = Some((true, a.doing()));
                    let _ = todo.send(a);
                }
                draw_now = true;
            }
            Msg::Term(crossterm::event::Event::Resize(..)) => draw_now = true,
            Msg::Term(_) => {}
            Msg::Done(a, r) => app.action_done(&a, r),
        }
    }
}
