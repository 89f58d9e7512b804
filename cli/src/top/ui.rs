//! Drawing `drover top` from an [`App`]: a header, the fleet table, the
//! jobs table, the event log (or the pools), a footer, and the dialogs.
//!
//! It reads the app and writes the frame, nothing else. Only the rows that
//! fit are built, so a frame costs the same with 10 nodes or 10,000, and
//! columns are dropped by priority when the terminal is narrow (80x24 over
//! SSH keeps node, state, job, frames, fps, heartbeat, CPU and memory).

use drover_shared::api::{FleetJob, FleetNode, FleetNodeState, JobState};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap,
};
use ratatui::Frame;

use super::app::{clock, job_state_name, node_state_name, App, Conn, Focus, Overlay, View};

/// Marks the selected row of the focused table (plain ASCII: any terminal
/// over any SSH shows it).
const MARK: &str = "> ";

/// A column: its title, width, and how early it goes when space is short
/// (0 never; higher goes first). A flexible column takes what is left.
struct Col {
    title: &'static str,
    width: u16,
    drop: u8,
    flex: bool,
}

const fn col(title: &'static str, width: u16, drop: u8) -> Col {
    Col {
        title,
        width,
        drop,
        flex: false,
    }
}

const fn flex(title: &'static str, width: u16, drop: u8) -> Col {
    Col {
        title,
        width,
        drop,
        flex: true,
    }
}

const NODE_COLS: [Col; 12] = [
    col("NODE", 14, 0),
    col("STATE", 11, 0),
    col("JOB", 5, 1),
    col("FRAMES", 11, 1),
    col("FPS", 5, 1),
    col("HB", 5, 2),
    col("CPU", 4, 2),
    col("MEM", 4, 2),
    col("SPEED", 6, 3),
    col("POOL", 10, 4),
    col("BACKEND", 7, 5),
    flex("ADAPTER", 12, 6),
];

const JOB_COLS: [Col; 9] = [
    col("ID", 5, 0),
    col("PRI", 3, 1),
    col("NAME", 14, 2),
    col("PROJECT", 10, 4),
    col("PROGRESS", 16, 0),
    col("ETA", 6, 1),
    col("NODES", 5, 3),
    col("STATE", 13, 0),
    flex("REASON", 8, 1),
];

/// Which columns fit in `width` (one space between columns): the lowest
/// `drop` first, in table order.
fn fit(cols: &[Col], width: u16) -> Vec<bool> {
    let mut keep = vec![false; cols.len()];
    let mut used = 0u16;
    let mut levels: Vec<u8> = cols.iter().map(|c| c.drop).collect();
    levels.sort_unstable();
    levels.dedup();
    for level in levels {
        for (i, c) in cols.iter().enumerate().filter(|(_, c)| c.drop == level) {
            let need = c.width + u16::from(used > 0);
            if used + need <= width {
                used += need;
                keep[i] = true;
            }
        }
    }
    keep
}

fn widths(cols: &[Col], keep: &[bool]) -> Vec<Constraint> {
    cols.iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(c, _)| match c.flex {
            true => Constraint::Min(c.width),
            false => Constraint::Length(c.width),
        })
        .collect()
}

/// Seconds as `45s`, `3m20s`, `1h02m`, `2d04h`.
pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, (s / 60) % 60),
        _ => format!("{}d{:02}h", s / 86_400, (s / 3_600) % 24),
    }
}

fn age(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else {
        duration(ms / 1_000)
    }
}

/// A text progress bar `width` wide: blocks, then the percentage.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let frac = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let pct = format!("{:>4}", format!("{}%", (frac * 100.0).floor() as u64));
    let cells = width.saturating_sub(pct.len() + 1);
    let full = ((frac * cells as f64).round() as usize).min(cells);
    format!("{}{} {pct}", "█".repeat(full), "░".repeat(cells - full))
}

fn node_color(s: FleetNodeState) -> Color {
    match s {
        FleetNodeState::Idle => Color::Gray,
        FleetNodeState::Busy => Color::Green,
        FleetNodeState::Draining => Color::Yellow,
        FleetNodeState::Lost => Color::Red,
        FleetNodeState::Quarantined => Color::Magenta,
    }
}

fn job_color(s: JobState) -> Color {
    match s {
        JobState::Running | JobState::Muxing => Color::Green,
        JobState::Queued => Color::Gray,
        JobState::Unschedulable => Color::Yellow,
        JobState::Done => Color::Cyan,
        JobState::Failed => Color::Red,
        JobState::Cancelled => Color::DarkGray,
    }
}

fn node_cells(n: &FleetNode) -> [Cell<'static>; 12] {
    let frames = match (n.frame_start, n.frame_end) {
        (Some(s), Some(e)) => format!("{s}-{e}"),
        _ => "-".into(),
    };
    let lost = n.state == FleetNodeState::Lost;
    [
        Cell::from(n.name.clone()),
        Cell::from(node_state_name(n.state)).style(Style::new().fg(node_color(n.state))),
        Cell::from(n.job.map_or("-".into(), |j| format!("#{j}"))),
        Cell::from(frames),
        Cell::from(if n.fps > 0.0 {
            format!("{:.1}", n.fps)
        } else {
            "-".into()
        }),
        Cell::from(age(n.heartbeat_age_ms)),
        Cell::from(if lost {
            "-".into()
        } else {
            format!("{:.0}%", n.cpu_load_pct)
        }),
        Cell::from(if lost {
            "-".into()
        } else {
            format!("{:.0}%", n.memory_load_pct)
        }),
        Cell::from(format!("{:.1}", n.speed_fps)),
        Cell::from(if n.pool.is_empty() {
            "-".to_string()
        } else {
            n.pool.clone()
        }),
        Cell::from(n.backend.clone()),
        Cell::from(n.adapter.clone()),
    ]
}

fn job_cells(j: &FleetJob, progress_width: usize) -> [Cell<'static>; 9] {
    let state = job_state_name(j.state);
    [
        Cell::from(format!("#{}", j.id)),
        Cell::from(j.priority.to_string()),
        Cell::from(j.name.clone()),
        Cell::from(j.project.clone()),
        Cell::from(bar(j.frames_done, j.frames_total, progress_width)),
        Cell::from(j.eta_s.map_or("-".into(), duration)),
        Cell::from(j.nodes.len().to_string()),
        Cell::from(state).style(Style::new().fg(job_color(j.state))),
        Cell::from(j.reason.clone().unwrap_or_default()),
    ]
}

/// The first row to draw so that `selected` is visible in `height` rows,
/// moving the previous offset as little as possible.
fn scroll(offset: usize, selected: Option<usize>, height: usize, len: usize) -> usize {
    let height = height.max(1);
    let mut offset = offset.min(len.saturating_sub(height));
    if let Some(s) = selected {
        if s < offset {
            offset = s;
        } else if s >= offset + height {
            offset = s + 1 - height;
        }
    }
    offset
}

fn kept<const N: usize>(cells: [Cell<'static>; N], keep: &[bool]) -> Vec<Cell<'static>> {
    cells
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(c, _)| c)
        .collect()
}

fn header_row(cols: &[Col], keep: &[bool]) -> Row<'static> {
    Row::new(
        cols.iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(c, _)| Cell::from(c.title)),
    )
    .style(Style::new().add_modifier(Modifier::BOLD))
}

fn pane_block(title: String, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    Block::new()
        .borders(Borders::TOP)
        .title(Span::styled(title, style))
}

fn draw_nodes(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Focus::Nodes;
    let count = |s| app.nodes.iter().filter(|n| n.state == s).count();
    let mut title = format!(
        " Fleet {} nodes: {} busy {} idle",
        app.nodes.len(),
        count(FleetNodeState::Busy),
        count(FleetNodeState::Idle)
    );
    for (s, name) in [
        (FleetNodeState::Draining, "draining"),
        (FleetNodeState::Lost, "lost"),
        (FleetNodeState::Quarantined, "quarantined"),
    ] {
        let n = count(s);
        if n > 0 {
            title.push_str(&format!(" {n} {name}"));
        }
    }
    title.push_str(&format!(
        " | sort {}{} ",
        app.node_sort.label(),
        if app.reversed && focused { " rev" } else { "" }
    ));
    let block = pane_block(title, focused);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let keep = fit(&NODE_COLS, inner.width.saturating_sub(MARK.len() as u16));
    let height = inner.height.saturating_sub(1) as usize;
    let selected = app.selected_node_row();
    let offset = scroll(
        app.node_offset.get(),
        selected,
        height,
        app.node_order.len(),
    );
    app.node_offset.set(offset);
    let rows = app
        .node_order
        .iter()
        .skip(offset)
        .take(height)
        .map(|&i| Row::new(kept(node_cells(&app.nodes[i]), &keep)));
    let empty = app
        .node_order
        .is_empty()
        .then_some(if app.nodes.is_empty() {
            "no nodes"
        } else {
            "no node matches the filter"
        });
    let table = Selectable {
        cols: &NODE_COLS,
        keep: &keep,
        selected: selected.filter(|_| focused).map(|s| s - offset),
        empty,
    };
    table.render(f, inner, rows);
}

fn render_note(f: &mut Frame, inner: Rect, text: &str) {
    if inner.height > 1 {
        let r = Rect {
            y: inner.y + 1,
            height: 1,
            ..inner
        };
        f.render_widget(
            Paragraph::new(text).style(Style::new().fg(Color::DarkGray)),
            r,
        );
    }
}

fn draw_jobs(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Focus::Jobs;
    let active = app.jobs.iter().filter(|j| !j.state.is_terminal()).count();
    let shown = if app.jobs_total > app.jobs.len() as u64 {
        format!(" (of {})", app.jobs_total)
    } else {
        String::new()
    };
    let title = format!(
        " Jobs {} active, {} listed{shown} | sort {}{} ",
        active,
        app.jobs.len(),
        app.job_sort.label(),
        if app.reversed && focused { " rev" } else { "" }
    );
    let block = pane_block(title, focused);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let keep = fit(&JOB_COLS, inner.width.saturating_sub(MARK.len() as u16));
    let height = inner.height.saturating_sub(1) as usize;
    let selected = app.selected_job_row();
    let offset = scroll(app.job_offset.get(), selected, height, app.job_order.len());
    app.job_offset.set(offset);
    let progress_width = JOB_COLS[4].width as usize;
    let rows = app
        .job_order
        .iter()
        .skip(offset)
        .take(height)
        .map(|&i| Row::new(kept(job_cells(&app.jobs[i], progress_width), &keep)));
    let empty = app.job_order.is_empty().then_some(if app.jobs.is_empty() {
        "no jobs"
    } else {
        "no job matches the filter"
    });
    let table = Selectable {
        cols: &JOB_COLS,
        keep: &keep,
        selected: selected.filter(|_| focused).map(|s| s - offset),
        empty,
    };
    table.render(f, inner, rows);
}

/// The fleet or jobs table as drawn: its visible rows, the selection mark
/// and, when no row is listed, a note saying why.
struct Selectable<'a> {
    cols: &'a [Col],
    keep: &'a [bool],
    /// The selected row among the visible ones, when the table has focus.
    selected: Option<usize>,
    empty: Option<&'static str>,
}

impl Selectable<'_> {
    fn render<'r>(self, f: &mut Frame, inner: Rect, rows: impl IntoIterator<Item = Row<'r>>) {
        let table = Table::new(rows, widths(self.cols, self.keep))
            .header(header_row(self.cols, self.keep))
            .column_spacing(1)
            .highlight_symbol(MARK)
            .highlight_spacing(HighlightSpacing::Always)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        let mut state = TableState::new().with_selected(self.selected);
        f.render_stateful_widget(table, inner, &mut state);
        if let Some(text) = self.empty {
            render_note(f, inner, text);
        }
    }
}

fn draw_log(f: &mut Frame, app: &App, area: Rect) {
    let block = pane_block(format!(" Events {} ", app.log.len()), false);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let n = inner.height as usize;
    let lines: Vec<Line> = app
        .log
        .iter()
        .skip(app.log.len().saturating_sub(n))
        .map(|l| Line::from(l.as_str()))
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_pools(f: &mut Frame, app: &App, area: Rect) {
    let block = pane_block(" Pools (auto-scaling) ".into(), false);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(pools) = &app.pools else {
        render_note(
            f,
            Rect {
                y: inner.y.saturating_sub(1),
                ..inner
            },
            "this coordinator has no pools API (GET /v1/pools answered 404)",
        );
        return;
    };
    if pools.is_empty() {
        render_note(
            f,
            Rect {
                y: inner.y.saturating_sub(1),
                ..inner
            },
            "no pools configured (drover coordinator --pools FILE)",
        );
        return;
    }
    let mut lines = vec![Line::from(Span::styled(
        format!(
            "{:<16} {:<11} {:>4} {:>4} {:>5} {:>5}  LAST DECISION",
            "POOL", "PROVIDER", "MIN", "MAX", "NODES", "ASKED"
        ),
        Style::new().add_modifier(Modifier::BOLD),
    ))];
    for p in pools {
        lines.push(Line::from(format!(
            "{:<16} {:<11} {:>4} {:>4} {:>5} {:>5}  {}",
            p.name,
            p.provider,
            p.min,
            p.max,
            p.current,
            p.requested,
            p.decisions.first().map(String::as_str).unwrap_or("-")
        )));
        if let Some(e) = &p.error {
            lines.push(Line::from(Span::styled(
                format!("  {}: provider error: {e}", p.name),
                Style::new().fg(Color::Red),
            )));
        }
    }
    lines.push(Line::from(Span::styled(
        "Decisions, newest first",
        Style::new().add_modifier(Modifier::BOLD),
    )));
    for p in pools {
        for d in &p.decisions {
            lines.push(Line::from(format!("{}: {d}", p.name)));
        }
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_header(f: &mut Frame, app: &App, area: Rect) {
    let (text, style) = match &app.conn {
        Conn::Connecting => ("connecting".to_string(), Style::new().fg(Color::Yellow)),
        Conn::Live => ("live".to_string(), Style::new().fg(Color::Green)),
        Conn::Reconnecting { attempts, error } => (
            format!("reconnecting (try {attempts}: {error})"),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ),
    };
    let snap = app
        .snapshot_at_ms
        .map_or(String::new(), |t| format!(" {} UTC", clock(t)));
    // The connection first: on a narrow screen the URL is what gets cut.
    let line = Line::from(vec![
        Span::styled("drover top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::styled(text, style),
        Span::raw(format!("  {}{snap}", app.url)),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

fn draw_footer(f: &mut Frame, app: &App, area: Rect) {
    let line = if app.editing_filter {
        Line::from(vec![
            Span::styled("filter: ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{}_", app.filter)),
            Span::styled("  Enter keep  Esc clear", Style::new().fg(Color::DarkGray)),
        ])
    } else if let Some((ok, msg)) = &app.status {
        let style = if *ok {
            Style::new().fg(Color::Green)
        } else {
            Style::new().fg(Color::Red)
        };
        Line::from(Span::styled(msg.clone(), style))
    } else {
        let filter = if app.filter.is_empty() {
            String::new()
        } else {
            format!("[/{}] ", app.filter)
        };
        let keys = match app.focus {
            Focus::Nodes => "d drain u undrain",
            Focus::Jobs => "c cancel r retry p pause",
        };
        Line::from(Span::styled(
            format!("{filter}Tab switch  {keys}  s sort  / filter  2 pools  ? keys  q quit"),
            Style::new().fg(Color::DarkGray),
        ))
    };
    f.render_widget(Paragraph::new(line), area);
}

const HELP: &[(&str, &str)] = &[
    ("Tab", "switch between the fleet and the jobs"),
    ("Up/Down j/k", "select a row (PgUp/PgDn, g/G: jump)"),
    ("s / S", "next sort order / reverse it"),
    ("/", "filter rows (Enter keep, Esc clear)"),
    ("d / u", "drain / undrain the selected node"),
    ("c / r / p", "cancel / retry / pause-resume the job"),
    ("1 / 2", "fleet and events / auto-scaling pools"),
    ("y / n", "confirm / refuse an action"),
    ("?", "this help (any key closes it)"),
    ("q, Ctrl-C", "quit"),
];

fn dialog(f: &mut Frame, area: Rect, title: &str, lines: Vec<Line<'static>>, width: u16) {
    let height = lines.len() as u16 + 2;
    let r = area.centered(
        Constraint::Length(width.min(area.width)),
        Constraint::Length(height.min(area.height)),
    );
    f.render_widget(Clear, r);
    let block = Block::bordered().title(Span::styled(
        format!(" {title} "),
        Style::new().add_modifier(Modifier::BOLD),
    ));
    f.render_widget(
        Paragraph::new(lines).block(block).wrap(Wrap { trim: true }),
        r,
    );
}

fn draw_overlay(f: &mut Frame, app: &App, area: Rect) {
    match &app.overlay {
        None => {}
        Some(Overlay::Help) => {
            let lines = HELP
                .iter()
                .map(|(k, what)| {
                    Line::from(vec![
                        Span::styled(format!("{k:<12}"), Style::new().fg(Color::Cyan)),
                        Span::raw(*what),
                    ])
                })
                .collect();
            dialog(f, area, "keys", lines, 56);
        }
        Some(Overlay::Confirm(action)) => {
            let lines = vec![
                Line::from(action.question()),
                Line::from(""),
                Line::from(vec![
                    Span::styled(
                        "y",
                        Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
                    ),
                    Span::raw(" yes   "),
                    Span::styled(
                        "n",
                        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                    ),
                    Span::raw(" no"),
                ]),
            ];
            dialog(f, area, "confirm", lines, 48);
        }
    }
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, app, header);
    draw_footer(f, app, footer);
    // The event log gets a quarter of the height, at least four lines (the
    // pools half); the nodes a little more than the jobs.
    let lower = match app.view {
        View::Fleet => (body.height / 4).max(5).min(body.height / 2),
        View::Pools => body.height / 2,
    };
    let tables = body.height - lower;
    let nodes_h = tables.div_ceil(2) + u16::from(tables >= 8);
    let [nodes, jobs, rest] = Layout::vertical([
        Constraint::Length(nodes_h.min(tables)),
        Constraint::Length(tables.saturating_sub(nodes_h)),
        Constraint::Length(lower),
    ])
    .areas(body);
    draw_nodes(f, app, nodes);
    draw_jobs(f, app, jobs);
    match app.view {
        View::Fleet => draw_log(f, app, rest),
        View::Pools => draw_pools(f, app, rest),
    }
    draw_overlay(f, app, area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_drop_by_priority_at_narrow_widths() {
        let names = |w| {
            let keep = fit(&NODE_COLS, w);
            NODE_COLS
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(c, _)| c.title)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(80),
            ["NODE", "STATE", "JOB", "FRAMES", "FPS", "HB", "CPU", "MEM", "SPEED"]
        );
        assert_eq!(names(30), ["NODE", "STATE"]);
        assert_eq!(names(200).len(), NODE_COLS.len());
    }

    #[test]
    fn bars_durations_and_scrolling() {
        assert_eq!(bar(0, 100, 12), "░░░░░░░   0%");
        assert_eq!(bar(50, 100, 12), "████░░░  50%");
        assert_eq!(bar(100, 100, 12), "███████ 100%");
        assert_eq!(bar(5, 0, 12), "░░░░░░░   0%");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(200), "3m20s");
        assert_eq!(duration(3_720), "1h02m");
        assert_eq!(duration(190_000), "2d04h");
        assert_eq!(scroll(0, Some(3), 5, 100), 0);
        assert_eq!(scroll(0, Some(7), 5, 100), 3);
        assert_eq!(scroll(3, Some(1), 5, 100), 1);
        assert_eq!(scroll(90, Some(2), 5, 4), 0, "the list shrank");
    }
}
