//! `host keys init`: the ed25519 key pair that signs the models the host pushes.
//!
//! The private key (its 32-byte seed, hex) is created with mode 0600 and never
//! overwritten without `--force`; the public key (hex) goes into each device's config
//! (`[api] trusted_keys`, or the file itself in `trusted_key_files`).

use std::fs::OpenOptions;
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;

/// Private key file name in the key folder.
pub const PRIVATE_KEY_FILE: &str = "signing.key";
/// Public key file name in the key folder.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// `host keys ...`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Create the signing key pair (private key with mode 0600) and print the public key.
    Init {
        /// Folder for the key files; default: keys/ in the data folder.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Replace an existing key pair (devices trusting the old key will refuse models).
        #[arg(long)]
        force: bool,
    },
}

/// The default key folder inside the host data folder.
pub fn default_dir(data: &Path) -> PathBuf {
    data.join("keys")
}

/// Runs `host keys ...`.
pub fn run(args: KeysArgs, data: &Path) -> Result<()> {
    match args.command {
        KeysCommand::Init { dir, force } => {
            let dir = dir.unwrap_or_else(|| default_dir(data));
            let public = init(&dir, force)?;
            print_public(&public, &dir);
            Ok(())
        }
    }
}

/// The public key is the command's output: it is what goes into the devices' configs.
#[allow(clippy::print_stdout)]
fn print_public(public: &str, dir: &Path) {
    tracing::info!(dir = %dir.display(), "signing key pair written");
    println!("{public}");
}

/// Creates the key pair in `dir`; returns the public key as hex.
pub fn init(dir: &Path, force: bool) -> Result<String> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the key folder", dir.display()))?;
    let private = dir.join(PRIVATE_KEY_FILE);
    if private.exists() && !force {
        bail!("{}: a signing key exists already; pass --force to replace it", private.display());
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    write_private(&private, &hex::encode(key.to_bytes()))?;
    let public = hex::encode(key.verifying_key().to_bytes());
    let public_path = dir.join(PUBLIC_KEY_FILE);
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("{}: cannot write the public key", public_path.display()))?;
    Ok(public)
}

/// Writes the private key so that no other user can ever read it: created 0600, and the
/// mode set again in case the file existed with wider permissions.
fn write_private(path: &Path, hex: &str) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("{}: cannot create the private key file", path.display()))?;
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).with_context(|| {
        format!("{}: cannot restrict the key file to its owner", path.display())
    })?;
    file.write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}: cannot write the private key", path.display()))
}

/// Reads the signing key, refusing a file others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    #[cfg(unix)]
    {
        let mode = std::fs::metadata(path)
            .with_context(|| format!("{}: no signing key; run `host keys init`", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{}: mode {:o} lets others read the signing key; chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the signing key", path.display()))?;
    shared::bundle::signing_key_from_hex(&text)
        .with_context(|| format!("{}: not a signing key", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_private_key_only_its_owner_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let public = init(tmp.path(), false).unwrap();
        let private = tmp.path().join(PRIVATE_KEY_FILE);
        #[cfg(unix)]
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        let key = load_signing_key(&private).unwrap();
        assert_eq!(hex::encode(key.verifying_key().to_bytes()), public);
        let on_disk = std::fs::read_to_string(tmp.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(shared::bundle::public_key_from_hex(&on_disk).unwrap(), key.verifying_key());

        let again = init(tmp.path(), false).unwrap_err().to_string();
        assert!(again.contains("--force"), "{again}");
        assert_ne!(init(tmp.path(), true).unwrap(), public);
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), false).unwrap();
        let private = tmp.path().join(PRIVATE_KEY_FILE);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_signing_key(&private).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
