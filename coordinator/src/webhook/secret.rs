//! The signing secret: made on first start in `DATA_DIR/webhook-secret`,
//! or read from the file `DROVER_WEBHOOK_SECRET_FILE` names. The secret is
//! the file's text, trimmed, as bytes; it is never logged.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use rand::RngCore as _;
use tracing::{info, warn};

/// The file under the data dir holding the generated secret.
pub const SECRET_FILE: &str = "webhook-secret";

/// The environment variable naming a file to read the secret from instead
/// (a secret shared by several coordinators, or kept by a secret manager).
pub const SECRET_FILE_ENV: &str = "DROVER_WEBHOOK_SECRET_FILE";

/// The shortest secret accepted: 16 bytes (128 bits of a random key) keep
/// HMAC out of reach of guessing; a shorter one is a typo or a placeholder.
pub const MIN_SECRET_BYTES: usize = 16;

/// The longest secret file read: a secret is a line of text, so a larger
/// file is the wrong file.
pub const MAX_SECRET_BYTES: usize = 4_096;

/// Random bytes in a generated secret (written as twice as many hex
/// digits).
pub const GENERATED_SECRET_BYTES: usize = 32;

/// The webhook signing secret. With `DROVER_WEBHOOK_SECRET_FILE` set (and
/// not empty), its file's trimmed text; otherwise `DATA_DIR/webhook-secret`,
/// created on the first start with 32 random bytes as 64 hex digits and
/// mode 0600. Either way the secret is the text (the hex digits, not the
/// bytes they spell), so a receiver's admin copies the file's line as it
/// is. At least [`MIN_SECRET_BYTES`] bytes, else an error naming the file.
pub fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let from_env = std::env::var_os(SECRET_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    secret_from(data_dir, from_env.as_deref())
}

/// [`load_or_create_secret`] with the environment read by the caller (the
/// tests set no process-wide variable).
pub(crate) fn secret_from(data_dir: &Path, from_env: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(file) = from_env {
        let secret =
            read_secret(file).with_context(|| format!("{SECRET_FILE_ENV}={}", file.display()))?;
        info!(file = %file.display(), "webhook secret read from {SECRET_FILE_ENV}");
        return Ok(secret);
    }
    let file = data_dir.join(SECRET_FILE);
    if file.exists() {
        warn_if_readable_by_others(&file);
        return read_secret(&file);
    }
    create_secret(&file)?;
    info!(file = %file.display(), "webhook signing secret created");
    read_secret(&file)
}

/// The trimmed text of a secret file, checked.
fn read_secret(file: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(file)
        .with_context(|| format!("reading the webhook secret {}", file.display()))?;
    if meta.len() > MAX_SECRET_BYTES as u64 {
        bail!(
            "the webhook secret file {} is {} bytes, more than the {MAX_SECRET_BYTES} bytes a \
             secret may take: is it the right file?",
            file.display(),
            meta.len()
        );
    }
    let text = std::fs::read(file)
        .with_context(|| format!("reading the webhook secret {}", file.display()))?;
    let secret = text.trim_ascii();
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "the webhook secret in {} is {} bytes long once trimmed; at least {MIN_SECRET_BYTES} \
             are needed (e.g. `openssl rand -hex 32 > {}`)",
            file.display(),
            secret.len(),
            file.display()
        );
    }
    Ok(secret.to_vec())
}

/// Writes a new random secret to `file` with mode 0600: to a temporary
/// file first, fsynced, then renamed into place and the directory fsynced,
/// so a crash leaves either no secret or a whole one.
fn create_secret(file: &Path) -> anyhow::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let text = format!("{}\n", hex::encode(bytes));
    let tmp = file.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut out = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    #[cfg(unix)]
    {
        // A leftover of a crashed start keeps its old mode: `mode` only
        // applies to a new file.
        use std::os::unix::fs::PermissionsExt as _;
        out.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(out);
    std::fs::rename(&tmp, file)
        .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// A warning (naming the file, never its content) when others may read it.
fn warn_if_readable_by_others(file: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(file) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(
                    file = %file.display(),
                    mode = format!("{mode:o}"),
                    "the webhook secret is readable by other users; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = file;
}
