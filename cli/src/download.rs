//! `drover download`: a job's file by its signed link, checked against the
//! artifact list's size and SHA-256 before it takes its name.
//!
//! The bytes go to a temporary file beside the destination, hashed as they
//! arrive; only a file whose size and hash are the list's is renamed to
//! the destination (and synced first), so a reader of that path never
//! sees a partial or corrupt file. A mismatch deletes the temporary file
//! and names both values.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use drover_shared::api::ArtifactView;
use sha2::{Digest, Sha256};

use crate::client::Client;

/// Bytes read per step: large enough that hashing and writing dominate,
/// small enough that the progress bar moves.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// What a download must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

impl From<&ArtifactView> for Expected {
    fn from(a: &ArtifactView) -> Expected {
        Expected {
            bytes: a.bytes,
            sha256: a.sha256.clone(),
        }
    }
}

/// Why a download was refused.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The bytes were not the size the list gave.
    #[error("{path}: received {got} bytes, the artifact list says {want}; the file was deleted")]
    Size {
        /// The destination that was not written.
        path: PathBuf,
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
    /// The bytes were not the ones the list gave a hash of.
    #[error(
        "{path}: SHA-256 {got} does not match the artifact list's {want}; the file was deleted"
    )]
    Checksum {
        /// The destination that was not written.
        path: PathBuf,
        /// Hash of what was received.
        got: String,
        /// Hash expected.
        want: String,
    },
    /// Reading the download or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The temporary file a download to `dest` is written to.
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    dest.with_file_name(format!(".{name}.{}.part", std::process::id()))
}

/// Copies `from` to `dest` by way of [`temp_path`], checking the bytes
/// against `want`; `progress` is told the bytes so far. Returns the size.
pub fn save(
    mut from: impl Read,
    dest: &Path,
    want: &Expected,
    mut progress: impl FnMut(u64),
) -> Result<u64, DownloadError> {
    let tmp = temp_path(dest);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { path, source }
    };
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        let mut got = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(dest)(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io(&tmp))?;
            got += n as u64;
            // More than was announced: stop reading now rather than fill
            // the disk with what will be refused anyway.
            if got > want.bytes {
                break;
            }
            progress(got);
        }
        if got != want.bytes {
            return Err(DownloadError::Size {
                path: dest.to_path_buf(),
                got,
                want: want.bytes,
            });
        }
        let hash = hex::encode(hasher.finalize());
        if !hash.eq_ignore_ascii_case(&want.sha256) {
            return Err(DownloadError::Checksum {
                path: dest.to_path_buf(),
                got: hash,
                want: want.sha256.clone(),
            });
        }
        file.sync_all().map_err(io(&tmp))?;
        Ok(got)
    })();
    match result {
        Ok(got) => {
            std::fs::rename(&tmp, dest).map_err(io(dest))?;
            Ok(got)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The default file name of a job's artifact: `<job name>-<id>.mp4` (or
/// `.png` for the poster), with anything but letters, digits, `-`, `_` and
/// `.` made `_` so that it is one plain file name.
pub fn default_name(job_name: &str, id: u64, artifact: &str) -> String {
    let ext = Path::new(artifact)
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bin".into());
    let stem: String = job_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = stem.trim_start_matches('.');
    let stem = if stem.is_empty() { "job" } else { stem };
    format!("{stem}-{id}.{ext}")
}

/// Downloads `artifact` by its signed link to `dest`, with a progress bar
/// on stderr when `bar` is set. Returns the size.
pub fn fetch(
    client: &Client,
    artifact: &ArtifactView,
    dest: &Path,
    bar: bool,
) -> anyhow::Result<u64> {
    let resp = client.open_link(&artifact.download_url)?;
    let pb = if bar {
        let pb = indicatif::ProgressBar::new(artifact.bytes);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_prefix(artifact.name.clone());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let result = save(resp.into_reader(), dest, &Expected::from(artifact), |n| {
        pb.set_position(n)
    });
    match &result {
        Ok(_) => pb.finish(),
        Err(_) => pb.abandon(),
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(bytes: &[u8]) -> Expected {
        Expected {
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// Saves `sent` into a fresh directory expecting `want`; returns the
    /// outcome and what the directory holds afterwards.
    fn check(sent: &[u8], want: &Expected) -> (Result<u64, String>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.mp4");
        let mut seen = 0;
        let r = save(sent, &dest, want, |n| seen = n).map_err(|e| e.to_string());
        if r.is_ok() {
            assert_eq!(std::fs::read(&dest).unwrap(), sent);
            assert_eq!(seen, sent.len() as u64);
        }
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        (r, files)
    }

    #[test]
    fn a_download_matching_the_list_takes_its_name() {
        let body = vec![7u8; 3 * COPY_BUFFER_BYTES + 5];
        assert_eq!(
            check(&body, &expected(&body)),
            (Ok(body.len() as u64), vec!["out.mp4".to_string()])
        );
        let mut upper = expected(b"x");
        upper.sha256 = upper.sha256.to_uppercase();
        assert_eq!(check(b"x", &upper).0, Ok(1));
    }

    #[test]
    fn a_download_with_another_checksum_is_refused_and_deleted() {
        let mut want = expected(b"the real output");
        want.sha256 = hex::encode(Sha256::digest(b"something else"));
        let (r, files) = check(b"the real output", &want);
        let err = r.unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(err.contains(&want.sha256), "{err}");
        assert!(files.is_empty(), "left behind: {files:?}");
    }

    #[test]
    fn a_download_of_another_size_is_refused_and_deleted() {
        let want = expected(b"twelve bytes");
        for sent in [&b"twelve byte"[..], &b"twelve bytes and more"[..], b""] {
            let (r, files) = check(sent, &want);
            let err = r.unwrap_err();
            assert!(err.contains("the artifact list says 12"), "{err}");
            assert!(files.is_empty(), "left behind: {files:?}");
        }
    }

    #[test]
    fn a_refused_download_leaves_an_existing_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.mp4");
        std::fs::write(&dest, b"older").unwrap();
        let mut want = expected(b"new");
        want.sha256 = "00".repeat(32);
        assert!(save(&b"new"[..], &dest, &want, |_| {}).is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"older");
    }

    #[test]
    fn default_names_are_one_plain_file_name() {
        let check = |job: &str, id: u64, artifact: &str, want: &str| {
            assert_eq!(default_name(job, id, artifact), want)
        };
        check("shot 010", 12, "output.mp4", "shot_010-12.mp4");
        check("shot 010", 12, "poster.png", "shot_010-12.png");
        check("a/b", 1, "output.mp4", "a_b-1.mp4");
        check("..", 3, "output.mp4", "job-3.mp4");
        check("v1.2", 4, "output.mp4", "v1.2-4.mp4");
    }
}
