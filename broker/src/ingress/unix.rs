//! `unix:///path`: a unix socket for BIND, unbound, dnsdist, Knot, kresd.
//!
//! A stale socket file left by an earlier run is replaced (any other kind of file at the
//! path is an error, never deleted); the socket gets the configured mode and group so the
//! DNS server's user can connect.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::{Shared, spawn_connection};
use crate::metrics::InputMetrics;

pub fn start(
    path: &Path,
    mode: u32,
    group: Option<&str>,
    im: InputMetrics,
    shared: Shared,
) -> Result<JoinHandle<()>, String> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?,
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            ));
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:o} on {}: {e}", path.display()))?;
    if let Some(g) = group {
        let gid = lookup_group(g)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("cannot give {} to group {g}: {e}", path.display()))?;
    }
    tracing::info!(input = %im.name, "listening on unix://{} (mode {mode:o})", path.display());
    let path: PathBuf = path.to_path_buf();
    Ok(tokio::spawn(async move {
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                r = l.accept() => match r {
                    Ok((s, _)) => {
                        n += 1;
                        let peer = format!("unix:{}#{n}", path.display());
                        spawn_connection(s, peer, &im, &shared);
                    }
                    Err(e) => {
                        tracing::warn!(input = %im.name, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// A group by number or by name (from /etc/group).
/// A group by number or name. Names go through the C library's `getgrnam_r` (nix), so
/// every NSS source (`files`, LDAP, sssd, systemd) answers, as for `chgrp`.
fn lookup_group(g: &str) -> Result<u32, String> {
    if let Ok(n) = g.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("socket_group: no group named {g:?}")),
        Err(e) => Err(format!("socket_group: cannot look up group {g:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups() {
        assert_eq!(super::lookup_group("0"), Ok(0));
        assert_eq!(super::lookup_group("root"), Ok(0));
        let e = super::lookup_group("no-such-group-xyz").expect_err("unknown group");
        assert!(e.contains("\"no-such-group-xyz\""), "{e}");
        // Not a valid C string: no such group, never a panic.
        let e = super::lookup_group("a\0b").expect_err("NUL in the name");
        assert!(e.contains("socket_group"), "{e}");
    }
}
