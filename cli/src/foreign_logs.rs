//! With `--log-format json`, every line on stderr is a JSON object, even
//! the lines drover does not write itself:
//! - FFmpeg's log (a codec that cannot load its driver while a node probes
//!   encoders, a muxer's warning) goes through `tracing`;
//! - anything else a library prints straight to stderr (an encoder's
//!   banner, a graphics driver's warning) is caught at the file descriptor:
//!   fd 2 becomes a pipe whose lines are passed on as they are when they
//!   are JSON objects already, and wrapped in one otherwise. `tracing`
//!   itself writes to the original stderr, so nothing of drover's own goes
//!   through the pipe.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::io::{BufRead as _, Write as _};
use std::os::fd::FromRawFd as _;

use ffmpeg_next::ffi;

/// Longest FFmpeg log line kept, in bytes; the rest is cut (libav's own
/// default callback uses a buffer of this size).
const MAX_LINE_BYTES: usize = 1024;

thread_local! {
    /// libav's "start of a new line" state, which `av_log_format_line2`
    /// carries from one call to the next (per thread, as messages of two
    /// threads interleave).
    static PRINT_PREFIX: Cell<c_int> = const { Cell::new(1) };
}

/// Sends every FFmpeg log line at or above FFmpeg's log level to
/// `tracing` (target `ffmpeg`) instead of stderr.
pub fn to_tracing() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: installs a callback with the signature libav declares; it
    // is called from any thread, and `callback` is thread-safe.
    unsafe {
        ffi::av_log_set_callback(Some(callback));
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Where `va_list` has another shape than the one `callback` is
        // written for, FFmpeg stays quiet rather than break JSON logs.
        // SAFETY: sets a global integer.
        unsafe { ffi::av_log_set_level(ffi::AV_LOG_QUIET) };
    }
}

#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn callback(
    avcl: *mut c_void,
    level: c_int,
    fmt: *const c_char,
    args: *mut ffi::__va_list_tag,
) {
    // SAFETY: reads a global integer.
    if level > unsafe { ffi::av_log_get_level() } {
        return;
    }
    let mut line = [0 as c_char; MAX_LINE_BYTES];
    let mut prefix = PRINT_PREFIX.with(Cell::get);
    // SAFETY: the arguments are libav's own, passed on unchanged; `line`
    // is as long as said, and libav NUL-terminates what it writes.
    let written = unsafe {
        ffi::av_log_format_line2(
            avcl,
            level,
            fmt,
            args,
            line.as_mut_ptr(),
            MAX_LINE_BYTES as c_int,
            &mut prefix,
        )
    };
    PRINT_PREFIX.with(|p| p.set(prefix));
    if written < 0 {
        return;
    }
    // SAFETY: NUL-terminated within `line` (above).
    let text = unsafe { CStr::from_ptr(line.as_ptr()) }.to_string_lossy();
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    match level {
        l if l <= ffi::AV_LOG_ERROR => tracing::error!(target: "ffmpeg", "{text}"),
        l if l <= ffi::AV_LOG_WARNING => tracing::warn!(target: "ffmpeg", "{text}"),
        l if l <= ffi::AV_LOG_INFO => tracing::info!(target: "ffmpeg", "{text}"),
        _ => tracing::debug!(target: "ffmpeg", "{text}"),
    }
}

/// Longest line kept from a library writing to stderr, in bytes; the rest
/// of a longer one is cut (a runaway line must not grow memory).
const MAX_STDERR_LINE_BYTES: usize = 16 * 1024;

/// Points fd 2 at a pipe whose lines go to the original stderr as JSON
/// objects (see the module doc), and returns the original stderr for
/// `tracing` to write to. Call once, at start, before any thread.
pub fn capture_stderr() -> std::io::Result<std::fs::File> {
    // SAFETY: plain descriptor calls on descriptors this function owns;
    // each result is checked before use.
    unsafe {
        let original = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
        if original < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fds = [0 as c_int; 2];
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(original);
            return Err(e);
        }
        // dup2 clears close-on-exec on fd 2: children inherit the pipe, and
        // their lines get the same treatment.
        if libc::dup2(fds[1], 2) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fds[0]);
            libc::close(fds[1]);
            libc::close(original);
            return Err(e);
        }
        libc::close(fds[1]);
        let read = std::fs::File::from_raw_fd(fds[0]);
        let out = std::fs::File::from_raw_fd(original);
        let relay_out = out.try_clone()?;
        std::thread::Builder::new()
            .name("drover-stderr".into())
            .spawn(move || relay(read, relay_out))?;
        Ok(out)
    }
}

/// Passes JSON lines on, wraps the others, until every writer of the pipe
/// is gone.
fn relay(read: std::fs::File, mut out: std::fs::File) {
    let mut r = std::io::BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match std::io::Read::take(&mut r, MAX_STDERR_LINE_BYTES as u64).read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') && r.skip_until(b'\n').is_err() {
            return;
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end();
        if line.is_empty() {
            continue;
        }
        let _ = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => writeln!(out, "{line}"),
            _ => writeln!(out, "{}", wrap(line)),
        };
    }
}

/// A foreign stderr line as a log record shaped like `tracing`'s own.
fn wrap(line: &str) -> serde_json::Value {
    use tracing_subscriber::fmt::time::FormatTime as _;
    let mut timestamp = String::new();
    let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
        &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
    );
    serde_json::json!({
        "timestamp": timestamp,
        "level": "INFO",
        "message": line,
        "target": "stderr",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_lines_become_records_shaped_like_tracing_ones() {
        let v = wrap("Svt[info]: banner");
        assert_eq!(v["message"], "Svt[info]: banner");
        assert_eq!(v["target"], "stderr");
        assert_eq!(v["level"], "INFO");
        assert!(v["timestamp"].as_str().unwrap().contains('T'), "{v}");
    }
}
