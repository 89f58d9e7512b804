//! The state of `drover top`, apart from drawing and I/O: what the fleet
//! snapshot and the event stream said, what the user selected, sorted and
//! filtered, and the dialog open. Input goes in ([`App::apply_snapshot`],
//! [`App::apply`], [`App::key`]), actions come out ([`Action`]); the
//! driver ([`super::run`]) carries them out and the drawing
//! ([`super::ui::draw`]) only reads.
//!
//! # Cost
//! Sorting and filtering happen when the data or the order changes (a
//! snapshot, an event, a sort or filter key), never per frame: a frame
//! reads the precomputed order and draws only the rows that fit.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use drover_shared::api::{
    FleetJob, FleetNode, FleetNodeState, FleetView, JobState, JobSummary, PoolView,
    ScaleDecisionView,
};

use crate::events::ApiEvent;

/// Lines the event log keeps: a screen shows a handful, and a busy farm
/// sends many per second; older ones scroll away for good.
pub const MAX_EVENT_LOG: usize = 500;

/// Longest filter, in characters: enough for any name, and a stuck key
/// cannot grow it without bound.
pub const MAX_FILTER_CHARS: usize = 64;

/// Decisions shown per pool (the newest).
pub const MAX_POOL_DECISIONS: usize = 8;

/// Which table keys act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The fleet (nodes).
    Nodes,
    /// The jobs.
    Jobs,
}

/// What the lower part of the screen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Nodes, jobs and the event log.
    Fleet,
    /// The auto-scaling pools and their last decisions.
    Pools,
}

/// The connection to the coordinator, as the header shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// No answer yet.
    Connecting,
    /// The last snapshot came through.
    Live,
    /// The coordinator does not answer; retrying.
    Reconnecting {
        /// Failed attempts in a row.
        attempts: u32,
        /// Why the last one failed.
        error: String,
    },
}

/// Something the user asked for, confirmed, for the driver to do through
/// the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST /v1/nodes/{name}/drain`.
    Drain(String),
    /// `POST /v1/nodes/{name}/undrain`.
    Undrain(String),
    /// `DELETE /v1/jobs/{id}`.
    Cancel(u64),
    /// `POST /v1/jobs/{id}/retry`.
    Retry(u64),
    /// `POST /v1/jobs/{id}/pause`.
    Pause(u64),
    /// `POST /v1/jobs/{id}/resume`.
    Resume(u64),
    /// Leave `drover top`.
    Quit,
}

impl Action {
    /// The question the confirmation dialog asks.
    pub fn question(&self) -> String {
        match self {
            Action::Drain(n) => format!("Drain node {n}? It takes no new work."),
            Action::Undrain(n) => format!("Undrain node {n}? It takes work again."),
            Action::Cancel(j) => format!("Cancel job {j}? Stored frames are kept."),
            Action::Retry(j) => format!("Retry job {j}? Only missing frames render."),
            Action::Pause(j) => format!("Pause job {j}? Running chunks finish."),
            Action::Resume(j) => format!("Resume job {j}?"),
            Action::Quit => "Quit?".into(),
        }
    }

    /// What the status line says while it is under way.
    pub fn doing(&self) -> String {
        match self {
            Action::Drain(n) => format!("draining node {n}..."),
            Action::Undrain(n) => format!("undraining node {n}..."),
            Action::Cancel(j) => format!("cancelling job {j}..."),
            Action::Retry(j) => format!("retrying job {j}..."),
            Action::Pause(j) => format!("pausing job {j}..."),
            Action::Resume(j) => format!("resuming job {j}..."),
            Action::Quit => String::new(),
        }
    }

    /// What the status line says when it worked.
    pub fn done(&self) -> String {
        match self {
            Action::Drain(n) => format!("node {n} drained"),
            Action::Undrain(n) => format!("node {n} undrained"),
            Action::Cancel(j) => format!("job {j} cancelled"),
            Action::Retry(j) => format!("job {j} retried"),
            Action::Pause(j) => format!("job {j} paused"),
            Action::Resume(j) => format!("job {j} resumed"),
            Action::Quit => String::new(),
        }
    }
}

/// A dialog over the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// The keys (`?`).
    Help,
    /// An action waiting for `y` or `n`.
    Confirm(Action),
}

/// Orders of the node table, cycled with `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSort {
    /// By name.
    Name,
    /// By state (lost and quarantined first: what needs a look).
    State,
    /// Fastest rendering first.
    Fps,
    /// Stalest heartbeat first.
    Heartbeat,
    /// Busiest CPU first.
    Cpu,
    /// By pool, then name.
    Pool,
}

impl NodeSort {
    const ALL: [NodeSort; 6] = [
        NodeSort::Name,
        NodeSort::State,
        NodeSort::Fps,
        NodeSort::Heartbeat,
        NodeSort::Cpu,
        NodeSort::Pool,
    ];

    /// Its name in the table's title.
    pub fn label(self) -> &'static str {
        match self {
            NodeSort::Name => "name",
            NodeSort::State => "state",
            NodeSort::Fps => "fps",
            NodeSort::Heartbeat => "heartbeat",
            NodeSort::Cpu => "cpu",
            NodeSort::Pool => "pool",
        }
    }
}

/// Orders of the job table, cycled with `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSort {
    /// Running first, then by priority and age (the coordinator's order).
    Activity,
    /// Highest priority first.
    Priority,
    /// Soonest ETA first.
    Eta,
    /// Least done first.
    Progress,
    /// Newest first.
    Id,
}

impl JobSort {
    const ALL: [JobSort; 5] = [
        JobSort::Activity,
        JobSort::Priority,
        JobSort::Eta,
        JobSort::Progress,
        JobSort::Id,
    ];

    /// Its name in the table's title.
    pub fn label(self) -> &'static str {
        match self {
            JobSort::Activity => "activity",
            JobSort::Priority => "priority",
            JobSort::Eta => "eta",
            JobSort::Progress => "progress",
            JobSort::Id => "id",
        }
    }
}

/// One auto-scaling pool as the pools panel shows it (from the API's
/// [`PoolView`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolRow {
    /// Pool name.
    pub name: String,
    /// `process`, `kubernetes` or `command`.
    pub provider: String,
    /// Fewest nodes.
    pub min: u32,
    /// Most nodes.
    pub max: u32,
    /// Nodes connected now.
    pub current: u32,
    /// Nodes the provider was asked for and not removed.
    pub requested: u32,
    /// The provider's last error, until a call succeeds.
    pub error: Option<String>,
    /// The last decisions, newest first, one line each with its reason.
    pub decisions: Vec<String>,
}

/// One decision as a line: when, what, and why.
fn decision_line(d: &ScaleDecisionView) -> String {
    let mut line = format!("{} {}", clock(d.at_ms), d.action);
    if let Some(c) = d.count {
        line.push_str(&format!(" +{c}"));
    }
    if let Some(n) = &d.node {
        line.push_str(&format!(" {n}"));
    }
    line.push_str(&format!(" ({})", d.reason));
    if d.outcome != "ok" {
        line.push_str(&format!(
            " {}: {}",
            d.outcome,
            d.error.as_deref().unwrap_or("no detail")
        ));
    }
    line
}

impl PoolRow {
    /// The panel's row of a pool (its newest [`MAX_POOL_DECISIONS`]
    /// decisions).
    pub fn from_view(p: &PoolView) -> PoolRow {
        PoolRow {
            name: p.name.clone(),
            provider: p.provider.clone(),
            min: p.min,
            max: p.max,
            current: p.current,
            requested: p.requested,
            error: p.last_error.clone(),
            decisions: p
                .decisions
                .iter()
                .take(MAX_POOL_DECISIONS)
                .map(decision_line)
                .collect(),
        }
    }
}

/// What `drover top` knows and shows.
#[derive(Debug)]
pub struct App {
    /// The coordinator's URL, for the header.
    pub url: String,
    /// The connection.
    pub conn: Conn,
    /// Nodes by the last snapshot and the events since.
    pub nodes: Vec<FleetNode>,
    /// Jobs likewise.
    pub jobs: Vec<FleetJob>,
    /// Jobs the coordinator holds (the list may be cut).
    pub jobs_total: u64,
    /// When the last snapshot was taken, ms since the Unix epoch.
    pub snapshot_at_ms: Option<u64>,
    /// Pools; `None` while the coordinator has no pools API (404).
    pub pools: Option<Vec<PoolRow>>,
    /// The event log, newest last.
    pub log: VecDeque<String>,
    /// Which table keys act on.
    pub focus: Focus,
    /// What the lower part shows.
    pub view: View,
    /// Node order.
    pub node_sort: NodeSort,
    /// Job order.
    pub job_sort: JobSort,
    /// Reverse the order of the focused table.
    pub reversed: bool,
    /// Rows must contain this (any column), case-insensitive.
    pub filter: String,
    /// Typing a filter (`/` until Enter or Esc).
    pub editing_filter: bool,
    /// A dialog.
    pub overlay: Option<Overlay>,
    /// The last action's outcome or an error, one line.
    pub status: Option<(bool, String)>,
    /// Node rows to show, in order: indexes into `nodes`.
    pub node_order: Vec<usize>,
    /// Job rows likewise.
    pub job_order: Vec<usize>,
    /// Selected node, by name (stays on the node when rows move).
    pub selected_node: Option<String>,
    /// Selected job, by id.
    pub selected_job: Option<u64>,
    /// First node row drawn (kept by the drawing, which knows the height).
    pub node_offset: Cell<usize>,
    /// First job row drawn.
    pub job_offset: Cell<usize>,
    /// Something changed since the last draw.
    pub dirty: bool,
    /// Events changed rows since the last [`App::reindex`]: the order is
    /// redone once before the next frame or key ([`App::refresh`]), not per
    /// event.
    stale: bool,
    node_index: HashMap<String, usize>,
    job_index: HashMap<u64, usize>,
}

/// UTC `HH:MM:SS` of ms since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A node state as the table spells it.
pub fn node_state_name(s: FleetNodeState) -> &'static str {
    match s {
        FleetNodeState::Idle => "idle",
        FleetNodeState::Busy => "busy",
        FleetNodeState::Draining => "draining",
        FleetNodeState::Lost => "lost",
        FleetNodeState::Quarantined => "quarantined",
    }
}

/// A job state as the table spells it.
pub fn job_state_name(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Unschedulable => "unschedulable",
        JobState::Running => "running",
        JobState::Muxing => "muxing",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn node_state_rank(s: FleetNodeState) -> u8 {
    match s {
        FleetNodeState::Lost => 0,
        FleetNodeState::Quarantined => 1,
        FleetNodeState::Draining => 2,
        FleetNodeState::Busy => 3,
        FleetNodeState::Idle => 4,
    }
}

fn job_activity_rank(s: JobState) -> u8 {
    match s {
        JobState::Running | JobState::Muxing => 0,
        JobState::Queued | JobState::Unschedulable => 1,
        _ => 2,
    }
}

impl App {
    /// An empty screen for the coordinator at `url`.
    pub fn new(url: &str) -> App {
        App {
            url: url.to_string(),
            conn: Conn::Connecting,
            nodes: Vec::new(),
            jobs: Vec::new(),
            jobs_total: 0,
            snapshot_at_ms: None,
            pools: None,
            log: VecDeque::new(),
            focus: Focus::Nodes,
            view: View::Fleet,
            node_sort: NodeSort::Name,
            job_sort: JobSort::Activity,
            reversed: false,
            filter: String::new(),
            editing_filter: false,
            overlay: None,
            status: None,
            node_order: Vec::new(),
            job_order: Vec::new(),
            selected_node: None,
            selected_job: None,
            node_offset: Cell::new(0),
            job_offset: Cell::new(0),
            dirty: true,
            stale: false,
            node_index: HashMap::new(),
            job_index: HashMap::new(),
        }
    }

    /// Takes a fresh snapshot: it replaces what the events built up.
    pub fn apply_snapshot(&mut self, fleet: FleetView) {
        self.nodes = fleet.nodes;
        self.jobs = fleet.jobs;
        self.jobs_total = fleet.jobs_total;
        self.snapshot_at_ms = Some(fleet.at_ms);
        self.conn = Conn::Live;
        self.reindex();
        self.dirty = true;
    }

    /// Takes the pools (`None`: the coordinator has no pools API).
    pub fn apply_pools(&mut self, pools: Option<Vec<PoolRow>>) {
        if self.pools != pools {
            self.pools = pools;
            self.dirty = true;
        }
    }

    /// The coordinator did not answer.
    pub fn connection_lost(&mut self, error: String) {
        let attempts = match &self.conn {
            Conn::Reconnecting { attempts, .. } => attempts + 1,
            _ => 1,
        };
        self.conn = Conn::Reconnecting { attempts, error };
        self.dirty = true;
    }

    /// Adds a line to the event log.
    pub fn log_line(&mut self, line: String) {
        if self.log.len() == MAX_EVENT_LOG {
            self.log.pop_front();
        }
        self.log.push_back(line);
        self.dirty = true;
    }

    /// Applies one event of the stream: the job or node row changes at
    /// once (the next snapshot brings the figures events do not carry),
    /// and the event log gets a line.
    pub fn apply(&mut self, e: &ApiEvent) {
        let what = match (e.job, &e.node) {
            (Some(j), Some(n)) => format!("job {j} on {n}"),
            (Some(j), None) => format!("job {j}"),
            (None, Some(n)) => format!("node {n}"),
            (None, None) => String::new(),
        };
        let mut line = format!("{} {:<16} {what}", clock(e.at_ms), e.kind);
        if let Some(job) = e.job {
            if let Ok(s) = serde_json::from_value::<JobSummary>(e.data.clone()) {
                if !s.name.is_empty() {
                    line.push_str(&format!(" ({})", s.name));
                }
                if let Some(err) = s.error.as_deref().filter(|_| s.state != JobState::Running) {
                    line.push_str(&format!(": {err}"));
                }
                self.job_changed(job, s);
            }
        }
        if let Some(name) = e.node.as_deref().filter(|_| e.kind.starts_with("node.")) {
            let reason = e
                .data
                .get("reason")
                .and_then(|r| r.as_str())
                .map(str::to_string);
            if let Some(r) = &reason {
                line.push_str(&format!(": {r}"));
            }
            self.node_changed(name, &e.kind, reason);
        }
        self.log_line(line);
    }

    fn job_changed(&mut self, id: u64, s: JobSummary) {
        match self.job_index.get(&id) {
            Some(&i) => {
                let j = &mut self.jobs[i];
                j.state = s.state;
                j.paused = s.paused;
                j.priority = s.priority;
                j.frames_total = s.frames_total;
                j.frames_done = s.frames_done;
                j.reason = if s.paused && s.error.is_none() {
                    Some("paused".into())
                } else {
                    s.error
                };
                if s.state.is_terminal() {
                    j.fps = 0.0;
                    j.eta_s = None;
                    j.nodes.clear();
                }
            }
            None => {
                self.jobs.push(FleetJob {
                    id,
                    name: s.name,
                    state: s.state,
                    paused: s.paused,
                    priority: s.priority,
                    project: s.project,
                    frames_total: s.frames_total,
                    frames_done: s.frames_done,
                    fps: 0.0,
                    eta_s: None,
                    nodes: Vec::new(),
                    reason: s.error,
                    submitted_at_ms: s.submitted_at_ms,
                });
                self.job_index.insert(id, self.jobs.len() - 1);
                self.jobs_total += 1;
            }
        }
        self.stale = true;
    }

    fn node_changed(&mut self, name: &str, kind: &str, reason: Option<String>) {
        let Some(&i) = self.node_index.get(name) else {
            // A node the snapshot did not have: the next one brings it
            // whole; until then a row with what the event says.
            if kind == "node.connected" {
                self.nodes.push(FleetNode {
                    name: name.to_string(),
                    pool: String::new(),
                    adapter: String::new(),
                    backend: String::new(),
                    state: FleetNodeState::Idle,
                    reason: None,
                    job: None,
                    frame_start: None,
                    frame_end: None,
                    frames_done: 0,
                    chunks: 0,
                    speed_fps: 0.0,
                    fps: 0.0,
                    heartbeat_age_ms: 0,
                    cpu_load_pct: 0.0,
                    memory_load_pct: 0.0,
                    frames_rendered: 0,
                });
                self.node_index
                    .insert(name.to_string(), self.nodes.len() - 1);
                self.stale = true;
            }
            return;
        };
        let n = &mut self.nodes[i];
        let working = if n.chunks > 0 {
            FleetNodeState::Busy
        } else {
            FleetNodeState::Idle
        };
        match kind {
            "node.drained" => n.state = FleetNodeState::Draining,
            "node.undrained" | "node.cleared" => {
                n.state = working;
                n.reason = None;
            }
            "node.disconnected" => {
                n.state = FleetNodeState::Lost;
                n.job = None;
                n.frame_start = None;
                n.frame_end = None;
                n.fps = 0.0;
                n.chunks = 0;
            }
            "node.connected" => n.state = working,
            "node.quarantined" => {
                n.state = FleetNodeState::Quarantined;
                n.reason = reason;
            }
            _ => return,
        }
        self.stale = true;
    }

    fn matches_node(&self, n: &FleetNode) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let f = self.filter.to_lowercase();
        [
            n.name.as_str(),
            n.pool.as_str(),
            n.adapter.as_str(),
            node_state_name(n.state),
        ]
        .iter()
        .any(|t| t.to_lowercase().contains(&f))
            || n.job
                .is_some_and(|j| format!("#{j}") == f || j.to_string() == f)
    }

    fn matches_job(&self, j: &FleetJob) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let f = self.filter.to_lowercase();
        j.id.to_string() == f
            || [
                j.name.as_str(),
                j.project.as_str(),
                job_state_name(j.state),
                j.reason.as_deref().unwrap_or(""),
            ]
            .iter()
            .any(|t| t.to_lowercase().contains(&f))
            || j.nodes.iter().any(|n| n.to_lowercase().contains(&f))
    }

    /// Recomputes the lookups, the filtered and sorted row orders, and the
    /// selection (`O(n log n)`; only when something changed).
    pub fn reindex(&mut self) {
        self.stale = false;
        self.node_index = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        self.job_index = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id, i))
            .collect();
        let mut order: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.matches_node(&self.nodes[i]))
            .collect();
        let nodes = &self.nodes;
        match self.node_sort {
            NodeSort::Name => order.sort_by(|&a, &b| nodes[a].name.cmp(&nodes[b].name)),
            NodeSort::State => order.sort_by(|&a, &b| {
                (node_state_rank(nodes[a].state), &nodes[a].name)
                    .cmp(&(node_state_rank(nodes[b].state), &nodes[b].name))
            }),
            NodeSort::Fps => order.sort_by(|&a, &b| {
                nodes[b]
                    .fps
                    .total_cmp(&nodes[a].fps)
                    .then_with(|| nodes[a].name.cmp(&nodes[b].name))
            }),
            NodeSort::Heartbeat => order.sort_by(|&a, &b| {
                nodes[b]
                    .heartbeat_age_ms
                    .cmp(&nodes[a].heartbeat_age_ms)
                    .then_with(|| nodes[a].name.cmp(&nodes[b].name))
            }),
            NodeSort::Cpu => order.sort_by(|&a, &b| {
                nodes[b]
                    .cpu_load_pct
                    .total_cmp(&nodes[a].cpu_load_pct)
                    .then_with(|| nodes[a].name.cmp(&nodes[b].name))
            }),
            NodeSort::Pool => order.sort_by(|&a, &b| {
                (&nodes[a].pool, &nodes[a].name).cmp(&(&nodes[b].pool, &nodes[b].name))
            }),
        }
        if self.reversed && self.focus == Focus::Nodes {
            order.reverse();
        }
        self.node_order = order;

        let mut order: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.matches_job(&self.jobs[i]))
            .collect();
        let jobs = &self.jobs;
        match self.job_sort {
            JobSort::Activity => order.sort_by_key(|&i| {
                let j = &jobs[i];
                (
                    job_activity_rank(j.state),
                    std::cmp::Reverse(j.priority),
                    if j.state.is_terminal() {
                        u64::MAX - j.id
                    } else {
                        j.id
                    },
                )
            }),
            JobSort::Priority => {
                order.sort_by_key(|&i| (std::cmp::Reverse(jobs[i].priority), jobs[i].id))
            }
            JobSort::Eta => order.sort_by_key(|&i| (jobs[i].eta_s.unwrap_or(u64::MAX), jobs[i].id)),
            JobSort::Progress => order.sort_by(|&a, &b| {
                let p = |j: &FleetJob| j.frames_done as f64 / j.frames_total.max(1) as f64;
                p(&jobs[a])
                    .total_cmp(&p(&jobs[b]))
                    .then(jobs[a].id.cmp(&jobs[b].id))
            }),
            JobSort::Id => order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].id)),
        }
        if self.reversed && self.focus == Focus::Jobs {
            order.reverse();
        }
        self.job_order = order;

        // The selection stays on its row; it goes to the first row when
        // there was none or the filter hides it. A row that is gone keeps
        // the selection (a restarted coordinator lists its nodes again as
        // they reconnect), but nothing acts on it meanwhile.
        let node_hidden = |s: &String| {
            self.node_index.contains_key(s)
                && !self.node_order.iter().any(|&i| &self.nodes[i].name == s)
        };
        if self.selected_node.as_ref().is_none_or(node_hidden) {
            self.selected_node = self.node_order.first().map(|&i| self.nodes[i].name.clone());
        }
        let job_hidden = |s: u64| {
            self.job_index.contains_key(&s) && !self.job_order.iter().any(|&i| self.jobs[i].id == s)
        };
        if self.selected_job.is_none_or(job_hidden) {
            self.selected_job = self.job_order.first().map(|&i| self.jobs[i].id);
        }
        self.dirty = true;
    }

    /// Redoes the order if events changed rows since it was made: before
    /// drawing (the driver) and before a key acts on a row.
    pub fn refresh(&mut self) {
        if self.stale {
            self.reindex();
        }
    }

    /// Row of the selected node in `node_order`.
    pub fn selected_node_row(&self) -> Option<usize> {
        let name = self.selected_node.as_ref()?;
        self.node_order
            .iter()
            .position(|&i| &self.nodes[i].name == name)
    }

    /// Row of the selected job in `job_order`.
    pub fn selected_job_row(&self) -> Option<usize> {
        let id = self.selected_job?;
        self.job_order.iter().position(|&i| self.jobs[i].id == id)
    }

    /// The selected node.
    pub fn node(&self) -> Option<&FleetNode> {
        let name = self.selected_node.as_ref()?;
        self.node_index.get(name).map(|&i| &self.nodes[i])
    }

    /// The selected job.
    pub fn job(&self) -> Option<&FleetJob> {
        self.job_index
            .get(&self.selected_job?)
            .map(|&i| &self.jobs[i])
    }

    fn move_selection(&mut self, delta: isize) {
        match self.focus {
            Focus::Nodes => {
                let len = self.node_order.len();
                if len == 0 {
                    return;
                }
                let row = self.selected_node_row().unwrap_or(0) as isize;
                let row = (row + delta).clamp(0, len as isize - 1) as usize;
                self.selected_node = Some(self.nodes[self.node_order[row]].name.clone());
            }
            Focus::Jobs => {
                let len = self.job_order.len();
                if len == 0 {
                    return;
                }
                let row = self.selected_job_row().unwrap_or(0) as isize;
                let row = (row + delta).clamp(0, len as isize - 1) as usize;
                self.selected_job = Some(self.jobs[self.job_order[row]].id);
            }
        }
        self.dirty = true;
    }

    /// The outcome of an action the driver carried out.
    pub fn action_done(&mut self, action: &Action, result: Result<(), String>) {
        self.status = Some(match result {
            Ok(()) => (true, action.done()),
            Err(e) => (false, e),
        });
        self.dirty = true;
    }

    /// A key: moves, sorts, filters, opens dialogs; returns an action once
    /// the user confirmed it (or `Quit`).
    pub fn key(&mut self, k: KeyEvent) -> Option<Action> {
        if k.kind == KeyEventKind::Release {
            return None;
        }
        self.refresh();
        self.dirty = true;
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        match self.overlay.take() {
            Some(Overlay::Help) => return None,
            Some(Overlay::Confirm(action)) => {
                return match k.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') => Some(action),
                    KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                        self.status = Some((true, "cancelled".into()));
                        None
                    }
                    _ => {
                        // Only y or n answer; anything else leaves it open.
                        self.overlay = Some(Overlay::Confirm(action));
                        None
                    }
                };
            }
            None => {}
        }
        if self.editing_filter {
            match k.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if self.filter.chars().count() < MAX_FILTER_CHARS => {
                    self.filter.push(c)
                }
                _ => return None,
            }
            self.reindex();
            return None;
        }
        let confirm = |app: &mut App, a: Option<Action>| {
            match a {
                Some(a) => app.overlay = Some(Overlay::Confirm(a)),
                None => app.status = Some((false, "nothing selected for that key here".into())),
            }
            None
        };
        match k.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Char('?') => self.overlay = Some(Overlay::Help),
            KeyCode::Esc => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                    self.reindex();
                }
                self.status = None;
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::Nodes => Focus::Jobs,
                    Focus::Jobs => Focus::Nodes,
                };
                self.reversed = false;
                self.reindex();
            }
            KeyCode::Char('1') => self.view = View::Fleet,
            KeyCode::Char('2') => self.view = View::Pools,
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            KeyCode::Char('/') => self.editing_filter = true,
            KeyCode::Char('s') => {
                match self.focus {
                    Focus::Nodes => {
                        let i = NodeSort::ALL.iter().position(|s| *s == self.node_sort);
                        self.node_sort = NodeSort::ALL[(i.unwrap_or(0) + 1) % NodeSort::ALL.len()];
                    }
                    Focus::Jobs => {
                        let i = JobSort::ALL.iter().position(|s| *s == self.job_sort);
                        self.job_sort = JobSort::ALL[(i.unwrap_or(0) + 1) % JobSort::ALL.len()];
                    }
                }
                self.reindex();
            }
            KeyCode::Char('S') => {
                self.reversed = !self.reversed;
                self.reindex();
            }
            KeyCode::Char('d') if self.focus == Focus::Nodes => {
                let a = self.node().map(|n| Action::Drain(n.name.clone()));
                return confirm(self, a);
            }
            KeyCode::Char('u') if self.focus == Focus::Nodes => {
                let a = self.node().map(|n| Action::Undrain(n.name.clone()));
                return confirm(self, a);
            }
            KeyCode::Char('c') if self.focus == Focus::Jobs => {
                let a = self.job().map(|j| Action::Cancel(j.id));
                return confirm(self, a);
            }
            KeyCode::Char('r') if self.focus == Focus::Jobs => {
                let a = self.job().map(|j| Action::Retry(j.id));
                return confirm(self, a);
            }
            KeyCode::Char('p') if self.focus == Focus::Jobs => {
                let a = self.job().map(|j| match j.paused {
                    true => Action::Resume(j.id),
                    false => Action::Pause(j.id),
                });
                return confirm(self, a);
            }
            KeyCode::Char('d' | 'u') => {
                self.status = Some((
                    false,
                    "drain and undrain act on nodes: Tab to the fleet".into(),
                ))
            }
            KeyCode::Char('c' | 'r' | 'p') => {
                self.status = Some((
                    false,
                    "cancel, retry and pause act on jobs: Tab to the jobs".into(),
                ))
            }
            _ => self.dirty = false,
        }
        None
    }
}
