//! `file:///path`: a capture file (unidirectional START ... STOP, possibly several streams
//! back to back). Published completely; the input ends at the end of the file.

use std::path::PathBuf;

use super::{Shared, run_logged};
use crate::metrics::InputMetrics;
use crate::session::SessionError;

pub async fn run(
    f: tokio::fs::File,
    path: PathBuf,
    im: InputMetrics,
    shared: Shared,
) -> Result<(), SessionError> {
    let peer = format!("file:{}", path.display());
    run_logged(f, tokio::io::sink(), peer, im, &shared, true)
        .await
        .map(|_| ())
}
