//! Small helpers to run external commands with a readable failure.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `cmd` with inherited stdio and fails with the command line if it
/// does not exit 0.
pub fn status(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("could not start {line}"))?;
    if !st.success() {
        bail!("{line} failed ({st})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout if it exits 0, `None` otherwise
/// (including when the program does not exist).
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the cargo that runs us, in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

/// [`cargo`] with extra environment variables.
pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    status(&mut cmd)
}
