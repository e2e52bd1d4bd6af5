//! systemd credentials: `$CREDENTIALS_DIRECTORY/<provider>-api-key`.
//!
//! For servers without a desktop keyring, `LoadCredential=` / `LoadCredentialEncrypted=`
//! place the key in a private, read-only directory that only this service can read. The file
//! is read on demand into a zeroizing buffer; a trailing newline (as `echo` writes) is dropped.

use std::io::Read;
use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Largest key file accepted (keys are a few hundred bytes; a bigger file is a mistake).
const MAX_KEY_BYTES: u64 = 16 * 1024;

/// The key of `provider`, `None` if the file does not exist.
pub fn read(dir: &Path, provider: &str) -> std::io::Result<Option<SecretString>> {
    let path = dir.join(format!("{provider}-api-key"));
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_KEY_BYTES {
        return Err(std::io::Error::other(format!(
            "{} is larger than {MAX_KEY_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| std::io::Error::other(format!("{} is not UTF-8", path.display())))?;
    let key = text.trim();
    Ok((!key.is_empty()).then(|| SecretString::from(key.to_owned())))
}
