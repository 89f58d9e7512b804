//! A minimal HTTP/1.1 client on tokio over one keep-alive `TcpStream`, and
//! a Server-Sent Events reader on top of it: just what the front-door
//! benchmark needs to hold a thousand connections on a few threads (one
//! task each) instead of a thousand OS threads.
//!
//! Requests carry a request line, `Host`, `Authorization`, and for a body
//! `Content-Type` and `Content-Length`. Responses are read as a status
//! line, headers, and a body framed by `Content-Length` or chunked. No
//! pipelining: one request at a time per connection, so nothing of a next
//! response is ever read early. Parsing is framing first (`check` the
//! buffer holds a whole head, then parse it), with every size bounded.

use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head (status line and headers) accepted: actix's are a
/// few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest response body accepted: a page of 500 jobs is about 200 KB.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Bytes asked of the socket per read.
const READ_BYTES: usize = 16 * 1024;
/// Largest SSE event (its lines up to the blank line) accepted: an event's
/// data is one job summary, under 1 KB.
const MAX_EVENT_BYTES: usize = 256 * 1024;

/// One answer.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The body (chunks joined).
    pub body: Vec<u8>,
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Neither: the body runs to the end of the connection.
    UntilClose,
}

/// The parts of a response head this client uses.
#[derive(Debug)]
struct Head {
    status: u16,
    framing: Framing,
    close: bool,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    stream: TcpStream,
    host: String,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
    /// Where the unconsumed bytes start in `buf`.
    at: usize,
    /// The server said it closes after the last response.
    closed: bool,
}

impl Conn {
    /// Connects to `addr` (TCP only; requests go out later).
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // Requests are written whole in one call; Nagle would only delay
        // the next one behind an unacknowledged segment.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(READ_BYTES),
            at: 0,
            closed: false,
        })
    }

    /// Sends one request and reads its whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<Response> {
        if self.closed {
            bail!("the server closed this connection after its last response");
        }
        self.send_head(method, path, key, body, None).await?;
        let head = self.read_head().await?;
        let body = match head.framing {
            Framing::Length(n) => self.read_exact_body(n).await?,
            Framing::Chunked => self.read_chunked_body().await?,
            Framing::UntilClose => self.read_to_close().await?,
        };
        if head.close || head.framing == Framing::UntilClose {
            self.closed = true;
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }

    /// Opens an event stream (`GET path` with `Accept: text/event-stream`)
    /// and reads its head; events are read with [`Events::next_batch`].
    pub async fn events(mut self, path: &str, key: &str) -> anyhow::Result<Events> {
        self.send_head("GET", path, key, None, Some("text/event-stream"))
            .await?;
        let head = self.read_head().await?;
        if head.status != 200 {
            let body = match head.framing {
                Framing::Length(n) => self.read_exact_body(n).await.unwrap_or_default(),
                _ => Vec::new(),
            };
            bail!(
                "GET {path}: status {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            );
        }
        let chunked = match head.framing {
            Framing::Chunked => true,
            Framing::UntilClose => false,
            Framing::Length(_) => bail!("GET {path}: an event stream with a Content-Length"),
        };
        Ok(Events {
            conn: self,
            chunked,
            chunk_left: None,
            text: Vec::new(),
            ended: false,
        })
    }

    async fn send_head(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<(&str, &[u8])>,
        accept: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n",
            self.host
        );
        if let Some(a) = accept {
            req.push_str(&format!("Accept: {a}\r\n"));
        }
        let bytes = match body {
            Some((content_type, b)) => {
                req.push_str(&format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                ));
                let mut bytes = req.into_bytes();
                bytes.extend_from_slice(b);
                bytes
            }
            None => {
                req.push_str("\r\n");
                req.into_bytes()
            }
        };
        self.stream
            .write_all(&bytes)
            .await
            .with_context(|| format!("sending {method} {path}"))?;
        Ok(())
    }

    /// Reads more bytes into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > READ_BYTES {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_BYTES, 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e).context("reading the response");
            }
        };
        self.buf.truncate(len + n);
        Ok(n > 0)
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.at..]
    }

    async fn read_head(&mut self) -> anyhow::Result<Head> {
        loop {
            if let Some(end) = find(self.pending(), b"\r\n\r\n") {
                let head = parse_head(&self.pending()[..end])?;
                self.at += end + 4;
                return Ok(head);
            }
            if self.pending().len() > MAX_HEAD_BYTES {
                bail!("a response head over {MAX_HEAD_BYTES} bytes");
            }
            if !self.fill().await? {
                bail!("the server closed the connection before a response");
            }
        }
    }

    async fn read_exact_body(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        if n > MAX_BODY_BYTES {
            bail!("a response body of {n} bytes, over the {MAX_BODY_BYTES}-byte limit");
        }
        while self.pending().len() < n {
            if !self.fill().await? {
                bail!("the server closed the connection inside a body");
            }
        }
        let body = self.pending()[..n].to_vec();
        self.at += n;
        Ok(body)
    }

    async fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(self.pending(), b"\r\n") {
                let line = self.pending()[..end].to_vec();
                self.at += end + 2;
                return Ok(line);
            }
            if self.pending().len() > MAX_HEAD_BYTES {
                bail!("a chunk-size line over {MAX_HEAD_BYTES} bytes");
            }
            if !self.fill().await? {
                bail!("the server closed the connection inside a chunked body");
            }
        }
    }

    async fn read_chunked_body(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size = chunk_size(&self.read_line().await?)?;
            if size == 0 {
                // Trailers (none expected) up to the blank line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                bail!("a chunked body over the {MAX_BODY_BYTES}-byte limit");
            }
            body.extend(self.read_exact_body(size).await?);
            if !self.read_line().await?.is_empty() {
                bail!("a chunk not followed by CRLF");
            }
        }
    }

    async fn read_to_close(&mut self) -> anyhow::Result<Vec<u8>> {
        while self.fill().await? {
            if self.pending().len() > MAX_BODY_BYTES {
                bail!("a body over the {MAX_BODY_BYTES}-byte limit");
            }
        }
        let body = self.pending().to_vec();
        self.at = self.buf.len();
        Ok(body)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn chunk_size(line: &[u8]) -> anyhow::Result<usize> {
    let text = std::str::from_utf8(line).context("a chunk-size line that is not text")?;
    let hex = text.split(';').next().unwrap_or_default().trim();
    usize::from_str_radix(hex, 16).with_context(|| format!("chunk size {hex:?}"))
}

/// Parses a response head (without its final blank line).
fn parse_head(head: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(head).context("a response head that is not text")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("status line {status_line:?}"))?;
    let mut framing = Framing::UntilClose;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("a header line without a colon: {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            framing = Framing::Length(
                value
                    .parse()
                    .with_context(|| format!("Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            } else {
                bail!("Transfer-Encoding {value:?} is not supported");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    // A status without a body.
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Head {
        status,
        framing,
        close,
    })
}

/// One Server-Sent Event, or a block of comments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// `id:`.
    pub id: Option<String>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` lines joined by newlines.
    pub data: Option<String>,
    /// Comment lines (after the `:`), trimmed.
    pub comments: Vec<String>,
}

/// An open event stream.
pub struct Events {
    conn: Conn,
    chunked: bool,
    /// Bytes left in the current chunk; `None` before a chunk-size line.
    chunk_left: Option<usize>,
    /// Event text decoded but not yet split into events.
    text: Vec<u8>,
    ended: bool,
}

impl Events {
    /// Waits for bytes, then returns every whole event they complete and
    /// the wall-clock time the bytes arrived (ms since the Unix epoch, with
    /// a fraction). An empty batch with `ended` set means the stream is
    /// over.
    pub async fn next_batch(&mut self, out: &mut Vec<SseEvent>) -> anyhow::Result<f64> {
        out.clear();
        loop {
            self.decode()?;
            split_events(&mut self.text, out)?;
            if !out.is_empty() || self.ended {
                return Ok(wall_ms());
            }
            if !self.conn.fill().await? {
                self.ended = true;
            }
        }
    }

    /// Whether the server ended the stream.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Moves whatever body bytes are buffered into `text`, undoing the
    /// chunked framing.
    fn decode(&mut self) -> anyhow::Result<()> {
        if !self.chunked {
            let pending = self.conn.pending().to_vec();
            self.conn.at = self.conn.buf.len();
            self.text.extend(pending);
            return Ok(());
        }
        loop {
            match self.chunk_left {
                None => {
                    let Some(end) = find(self.conn.pending(), b"\r\n") else {
                        if self.conn.pending().len() > MAX_HEAD_BYTES {
                            bail!("a chunk-size line over {MAX_HEAD_BYTES} bytes");
                        }
                        return Ok(());
                    };
                    let size = chunk_size(&self.conn.pending()[..end])?;
                    self.conn.at += end + 2;
                    if size == 0 {
                        self.ended = true;
                        return Ok(());
                    }
                    self.chunk_left = Some(size);
                }
                Some(0) => {
                    // The CRLF after a chunk's data.
                    if self.conn.pending().len() < 2 {
                        return Ok(());
                    }
                    if &self.conn.pending()[..2] != b"\r\n" {
                        bail!("a chunk not followed by CRLF");
                    }
                    self.conn.at += 2;
                    self.chunk_left = None;
                }
                Some(left) => {
                    let take = left.min(self.conn.pending().len());
                    if take == 0 {
                        return Ok(());
                    }
                    let at = self.conn.at;
                    self.text.extend_from_slice(&self.conn.buf[at..at + take]);
                    self.conn.at += take;
                    self.chunk_left = Some(left - take);
                }
            }
        }
    }
}

/// Takes every whole event (up to a blank line) off the front of `text`.
fn split_events(text: &mut Vec<u8>, out: &mut Vec<SseEvent>) -> anyhow::Result<()> {
    let mut start = 0;
    while let Some(end) = find(&text[start..], b"\n\n") {
        let block =
            std::str::from_utf8(&text[start..start + end]).context("an event that is not UTF-8")?;
        out.push(parse_event(block));
        start += end + 2;
    }
    text.drain(..start);
    if text.len() > MAX_EVENT_BYTES {
        bail!("an event over {MAX_EVENT_BYTES} bytes");
    }
    Ok(())
}

fn parse_event(block: &str) -> SseEvent {
    let mut e = SseEvent::default();
    for line in block.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(comment) = line.strip_prefix(':') {
            e.comments.push(comment.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => e.id = Some(value.to_string()),
            "event" => e.event = Some(value.to_string()),
            "data" => match &mut e.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => e.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    e
}

/// Now, in ms since the Unix epoch, with a fraction.
pub fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_framed_by_length_chunks_or_close() {
        let check = |head: &str, status: u16, framing: Framing, close: bool| {
            let h = parse_head(head.as_bytes()).unwrap();
            assert_eq!(
                (h.status, h.framing, h.close),
                (status, framing, close),
                "{head}"
            );
        };
        check(
            "HTTP/1.1 201 Created\r\ncontent-length: 42\r\nlocation: /v1/jobs/1",
            201,
            Framing::Length(42),
            false,
        );
        check(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream",
            200,
            Framing::Chunked,
            false,
        );
        check(
            "HTTP/1.1 200 OK\r\nconnection: close",
            200,
            Framing::UntilClose,
            true,
        );
        check("HTTP/1.1 204 No Content", 204, Framing::Length(0), false);
        assert!(parse_head(b"SSH-2.0 hello").is_err());
    }

    #[test]
    fn events_split_at_blank_lines_and_keep_the_rest() {
        let mut text = b"retry: 2000\n: stream open\n\nid: 1.1\nevent: job.submitted\ndata: {\"a\":1}\n\nid: 1.2\nev".to_vec();
        let mut out = Vec::new();
        split_events(&mut text, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].comments, vec!["stream open".to_string()]);
        assert_eq!(out[1].event.as_deref(), Some("job.submitted"));
        assert_eq!(out[1].data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(text, b"id: 1.2\nev");
    }
}
