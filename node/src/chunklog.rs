//! The executor log of one chunk attempt, kept bounded and cut into pieces
//! for the coordinator (`NodeToCoord::ChunkLog`).
//!
//! The log is a sequence of lines: what the executor process wrote about
//! the chunk (adapter, encoder, frame timings, the failure) and what the
//! supervisor adds (a kill, a dead worker's last stderr lines). It is kept
//! whole up to [`MAX_CHUNK_LOG_BYTES`]; a longer one keeps its head
//! ([`LOG_HEAD_BYTES`]) and its tail ([`LOG_TAIL_BYTES`]) with a marker line
//! saying how many bytes were cut in between, since the start (what ran,
//! where) and the end (how it ended) are what explain a chunk.
//!
//! The head is shipped as it grows ([`ChunkLogBuffer::take_piece`]), so a
//! stuck chunk's log can be read while it runs; lines past the head wait
//! in the tail (which may still lose its oldest lines) and go with the
//! marker when the attempt ends ([`ChunkLogBuffer::finish`]). The offsets
//! of the pieces are positions in the final text, so the coordinator can
//! place a resent piece where it belongs.

use std::collections::VecDeque;

pub use drover_protocol::{MAX_CHUNK_LOG_BYTES, MAX_CHUNK_LOG_PIECE_BYTES};

/// Longest line kept, in bytes; the rest of a longer one is dropped and
/// the line ends with `…`. A line is one event (a frame, a warning);
/// anything longer is a dump nobody reads in a chunk log.
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;

/// Room kept for the marker line between head and tail
/// (`[... N bytes cut ...]`, N at most 20 digits).
const MARKER_RESERVE_BYTES: usize = 64;

/// Bytes of a long log kept from its start: half the bound.
pub const LOG_HEAD_BYTES: usize = MAX_CHUNK_LOG_BYTES as usize / 2;

/// Bytes of a long log kept from its end: the rest of the bound, less the
/// marker's room.
pub const LOG_TAIL_BYTES: usize =
    MAX_CHUNK_LOG_BYTES as usize - LOG_HEAD_BYTES - MARKER_RESERVE_BYTES;

/// One attempt's log; see the module doc.
#[derive(Debug, Default)]
pub struct ChunkLogBuffer {
    /// The first lines, up to [`LOG_HEAD_BYTES`]; shipped as they come.
    head: String,
    /// A line did not fit the head: every later line goes to the tail.
    head_closed: bool,
    /// The last lines after the head, up to [`LOG_TAIL_BYTES`] in all.
    tail: VecDeque<String>,
    tail_bytes: usize,
    /// Bytes of lines dropped from the tail's front.
    cut_bytes: u64,
    /// Bytes of the head handed out as pieces.
    sent: usize,
    finished: bool,
}

impl ChunkLogBuffer {
    /// An empty log.
    pub fn new() -> ChunkLogBuffer {
        ChunkLogBuffer::default()
    }

    /// Appends one line (a newline is added; line breaks and other control
    /// characters inside it become spaces, so one event stays one line).
    /// Ignored once the log is finished.
    pub fn push_line(&mut self, line: &str) {
        if self.finished {
            return;
        }
        let mut clean: String = line
            .trim_end()
            .chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect();
        if clean.len() > MAX_LOG_LINE_BYTES {
            let mut end = MAX_LOG_LINE_BYTES - '…'.len_utf8();
            while !clean.is_char_boundary(end) {
                end -= 1;
            }
            clean.truncate(end);
            clean.push('…');
        }
        clean.push('\n');
        if !self.head_closed && self.head.len() + clean.len() <= LOG_HEAD_BYTES {
            self.head.push_str(&clean);
            return;
        }
        self.head_closed = true;
        self.tail_bytes += clean.len();
        self.tail.push_back(clean);
        while self.tail_bytes > LOG_TAIL_BYTES {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len();
            self.cut_bytes += old.len() as u64;
        }
    }

    /// The next piece of the head not yet handed out, at most `max` bytes
    /// (cut at a character boundary), with its offset.
    pub fn take_piece(&mut self, max: usize) -> Option<(u64, String)> {
        if self.sent >= self.head.len() {
            return None;
        }
        let mut end = (self.sent + max.max(4)).min(self.head.len());
        while !self.head.is_char_boundary(end) {
            end -= 1;
        }
        let piece = self.head[self.sent..end].to_string();
        let offset = self.sent as u64;
        self.sent = end;
        Some((offset, piece))
    }

    /// Ends the log: every piece not yet handed out (the rest of the head,
    /// the marker when lines were cut, the tail), each at most `max` bytes.
    /// The last piece is the attempt's last (an empty one when nothing was
    /// left). Later calls return nothing.
    pub fn finish(&mut self, max: usize) -> Vec<(u64, String)> {
        if self.finished {
            return Vec::new();
        }
        let mut pieces = Vec::new();
        while let Some(p) = self.take_piece(max) {
            pieces.push(p);
        }
        let mut rest = String::new();
        if self.cut_bytes > 0 {
            rest.push_str(&format!("[... {} bytes cut ...]\n", self.cut_bytes));
        }
        for line in self.tail.drain(..) {
            rest.push_str(&line);
        }
        self.tail_bytes = 0;
        self.finished = true;
        // The tail continues the text where the head ends.
        let mut offset = self.head.len() as u64;
        let mut from = 0;
        while from < rest.len() {
            let mut end = (from + max.max(4)).min(rest.len());
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            pieces.push((offset, rest[from..end].to_string()));
            offset += (end - from) as u64;
            from = end;
        }
        if pieces.is_empty() {
            pieces.push((offset, String::new()));
        }
        pieces
    }

    /// Bytes of the log as it stands (head, marker, tail).
    pub fn len(&self) -> usize {
        let marker = if self.cut_bytes > 0 {
            format!("[... {} bytes cut ...]\n", self.cut_bytes).len()
        } else {
            0
        };
        self.head.len() + marker + self.tail_bytes
    }

    /// Nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `line` without terminal escape sequences (colours of a log formatter
/// writing to what it took for a terminal): a CSI sequence (`ESC [`,
/// parameters, one final byte in `@..=~`) or an escape and one character.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // Dropped: an escape and the character after it (a lone escape
        // at the end too), or a CSI sequence up to its final byte.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Least time between two lines of frame timings in a chunk log, in
/// milliseconds: fast frames are summed up once a second (a 60 fps chunk
/// would otherwise write 60 lines a second), slow ones get a line each.
pub const FRAME_LINE_INTERVAL_MS: u64 = 1_000;

/// Turns frame timings into log lines at most every
/// [`FRAME_LINE_INTERVAL_MS`]; the first frame of a chunk (which pays for
/// warming up) always has a line of its own, and so does a frame slower
/// than the interval. Time is an argument.
#[derive(Debug, Default)]
pub struct FrameLines {
    /// When the last line was written; `None` before the first frame.
    last_line_ms: Option<u64>,
    /// The frames since the last line.
    batch: Option<Batch>,
}

#[derive(Debug)]
struct Batch {
    first: u64,
    last: u64,
    frames: u64,
    total_ms: f64,
    /// The slowest frame and its time.
    slowest: (u64, f64),
}

impl FrameLines {
    /// Frame timings, none yet.
    pub fn new() -> FrameLines {
        FrameLines::default()
    }

    /// `frame` was done at `now_ms` and took `took_ms`; a line when one is
    /// due.
    pub fn frame(&mut self, now_ms: u64, frame: u64, took_ms: f64) -> Option<String> {
        let Some(last_line_ms) = self.last_line_ms else {
            self.last_line_ms = Some(now_ms);
            return Some(format!(
                "frame {frame}: {took_ms:.1} ms (the chunk's first)"
            ));
        };
        let b = self.batch.get_or_insert(Batch {
            first: frame,
            last: frame,
            frames: 0,
            total_ms: 0.0,
            slowest: (frame, took_ms),
        });
        b.last = frame;
        b.frames += 1;
        b.total_ms += took_ms;
        if took_ms > b.slowest.1 {
            b.slowest = (frame, took_ms);
        }
        if now_ms.saturating_sub(last_line_ms) >= FRAME_LINE_INTERVAL_MS {
            self.last_line_ms = Some(now_ms);
            return self.flush();
        }
        None
    }

    /// The line of the frames not yet written, if any (at the chunk's end).
    pub fn flush(&mut self) -> Option<String> {
        let b = self.batch.take()?;
        Some(if b.frames == 1 {
            format!("frame {}: {:.1} ms", b.first, b.total_ms)
        } else {
            format!(
                "frames {}-{}: {} frames, {:.1} ms each on average, the slowest frame {} at {:.1} ms",
                b.first,
                b.last,
                b.frames,
                b.total_ms / b.frames as f64,
                b.slowest.0,
                b.slowest.1
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces put back together by offset, as the coordinator does.
    fn assemble(pieces: &[(u64, String)]) -> String {
        let mut text = String::new();
        for (offset, piece) in pieces {
            assert_eq!(*offset as usize, text.len(), "pieces follow each other");
            text.push_str(piece);
        }
        text
    }

    #[test]
    fn a_short_log_is_kept_whole_and_shipped_as_it_grows() {
        let mut log = ChunkLogBuffer::new();
        log.push_line("adapter: llvmpipe");
        log.push_line("frame 0: 3.1 ms\n");
        let first = log.take_piece(MAX_CHUNK_LOG_PIECE_BYTES).unwrap();
        assert_eq!(first, (0, "adapter: llvmpipe\nframe 0: 3.1 ms\n".into()));
        assert_eq!(log.take_piece(MAX_CHUNK_LOG_PIECE_BYTES), None);
        log.push_line("a\r\nb\x1b[31m");
        let rest = log.finish(MAX_CHUNK_LOG_PIECE_BYTES);
        assert_eq!(rest, [(34, "a  b [31m\n".to_string())]);
        assert_eq!(log.finish(MAX_CHUNK_LOG_PIECE_BYTES), []);
        log.push_line("after the end");
        assert_eq!(log.take_piece(MAX_CHUNK_LOG_PIECE_BYTES), None);
    }

    #[test]
    fn an_empty_log_still_ends_with_a_last_piece() {
        let mut log = ChunkLogBuffer::new();
        assert!(log.is_empty());
        assert_eq!(log.finish(16), [(0, String::new())]);
        let mut log = ChunkLogBuffer::new();
        log.push_line("x");
        assert!(log.take_piece(16).is_some());
        assert_eq!(log.finish(16), [(2, String::new())]);
    }

    #[test]
    fn pieces_are_bounded_and_keep_characters_whole() {
        let mut log = ChunkLogBuffer::new();
        log.push_line(&"é".repeat(10));
        let pieces = log.finish(5);
        assert!(pieces.iter().all(|(_, p)| p.len() <= 5), "{pieces:?}");
        assert_eq!(assemble(&pieces), format!("{}\n", "é".repeat(10)));
    }

    #[test]
    fn a_long_line_is_cut() {
        let mut log = ChunkLogBuffer::new();
        log.push_line(&"x".repeat(MAX_LOG_LINE_BYTES * 3));
        let text = assemble(&log.finish(MAX_CHUNK_LOG_PIECE_BYTES));
        assert_eq!(text.len(), MAX_LOG_LINE_BYTES + 1);
        assert!(text.ends_with("x…\n"));
    }

    /// A log past the bound keeps its head and its tail, with the bytes
    /// cut in between named; it never passes the bound.
    #[test]
    fn a_long_log_keeps_head_and_tail_within_the_bound() {
        let mut log = ChunkLogBuffer::new();
        let mut streamed = Vec::new();
        let lines = 100_000;
        let mut total = 0;
        for i in 0..lines {
            let line = format!("frame {i}: 4.2 ms");
            total += line.len() + 1;
            log.push_line(&line);
            if i % 100 == 0 {
                streamed.extend(log.take_piece(MAX_CHUNK_LOG_PIECE_BYTES));
            }
            assert!(log.len() <= MAX_CHUNK_LOG_BYTES as usize);
        }
        streamed.extend(log.finish(MAX_CHUNK_LOG_PIECE_BYTES));
        let text = assemble(&streamed);
        assert!(text.len() <= MAX_CHUNK_LOG_BYTES as usize, "{}", text.len());
        assert!(text.len() > MAX_CHUNK_LOG_BYTES as usize - 200);
        assert!(text.starts_with("frame 0: 4.2 ms\nframe 1: "));
        assert!(text.ends_with(&format!("frame {}: 4.2 ms\n", lines - 1)));
        let marker = text
            .lines()
            .find(|l| l.starts_with("[... "))
            .expect("a marker");
        let cut: usize = marker
            .trim_start_matches("[... ")
            .trim_end_matches(" bytes cut ...]")
            .parse()
            .unwrap();
        assert_eq!(text.len() - marker.len() - 1 + cut, total, "{marker}");
        assert!(streamed
            .iter()
            .all(|(_, p)| p.len() <= MAX_CHUNK_LOG_PIECE_BYTES));
    }
}

#[cfg(test)]
mod frame_line_tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_stripped() {
        let check = |input: &str, want: &str| assert_eq!(strip_ansi(input), want, "{input:?}");
        check("plain", "plain");
        check(
            "\x1b[2m2026-11-24\x1b[0m \x1b[33m WARN\x1b[0m x",
            "2026-11-24  WARN x",
        );
        check("\x1b[38;5;208mé\x1b[m", "é");
        check("a\x1bcb", "ab");
        check("cut \x1b[3", "cut ");
        check("end \x1b", "end ");
    }

    /// (time done, frame, ms taken) in, the lines out.
    fn check(frames: &[(u64, u64, f64)], want: &[&str]) {
        let mut f = FrameLines::new();
        let mut got: Vec<String> = frames
            .iter()
            .filter_map(|&(at, frame, took)| f.frame(at, frame, took))
            .collect();
        got.extend(f.flush());
        assert_eq!(got, want);
    }

    #[test]
    fn frame_lines() {
        check(&[], &[]);
        check(
            &[(40, 10, 40.0)],
            &["frame 10: 40.0 ms (the chunk's first)"],
        );
        check(
            &[(40, 10, 40.0), (45, 11, 5.0)],
            &["frame 10: 40.0 ms (the chunk's first)", "frame 11: 5.0 ms"],
        );
        // Fast frames: one line a second.
        check(
            &[
                (40, 0, 40.0),
                (50, 1, 10.0),
                (70, 2, 20.0),
                (1_050, 3, 10.0),
                (1_060, 4, 10.0),
            ],
            &[
                "frame 0: 40.0 ms (the chunk's first)",
                "frames 1-3: 3 frames, 13.3 ms each on average, the slowest frame 2 at 20.0 ms",
                "frame 4: 10.0 ms",
            ],
        );
        // Slow frames: a line each.
        check(
            &[
                (2_000, 5, 2_000.0),
                (4_000, 6, 2_000.0),
                (6_500, 7, 2_500.0),
            ],
            &[
                "frame 5: 2000.0 ms (the chunk's first)",
                "frame 6: 2000.0 ms",
                "frame 7: 2500.0 ms",
            ],
        );
    }
}
