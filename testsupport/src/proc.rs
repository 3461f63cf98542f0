//! [`Proc`]: a child process this test started, killed (SIGKILL, by its own PID) and reaped
//! when the guard drops. Signals only ever go to the PID of a child that has not been
//! reaped yet, so a recycled PID of someone else's process is never signalled.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc {
    /// The child (for `try_wait`, its pipes, ...). Do not `kill` it by hand: use
    /// [`Proc::kill`].
    pub child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Guards an already spawned child.
    pub fn new(child: Child) -> Proc {
        Proc {
            child,
            status: None,
        }
    }

    /// Spawns `cmd`; panics with the program's name when it cannot be started.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Proc::new(child)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `limit` for the child to exit by itself.
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if t0.elapsed() >= limit {
                return None;
            }
            crate::pause(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (a `kill -s` name: TERM, KILL, INT, STOP, CONT, ...) to the child's
    /// PID, unless it has already exited.
    pub fn signal(&mut self, signal: &str) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status();
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; `None` if it did not exit (the
    /// child is left running: drop, [`Proc::terminate`] or [`Proc::kill`] end it).
    pub fn terminate_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        self.wait_within(limit)
    }

    /// Stops the process the way `kill PID` does (SIGTERM) and waits for it to exit; after
    /// 10 s it is killed.
    pub fn terminate(&mut self) -> ExitStatus {
        match self.terminate_within(Duration::from_secs(10)) {
            Some(st) => st,
            None => self.kill(),
        }
    }

    /// SIGKILL by PID (a crash, as far as the child can tell), and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        // std's Child::kill is SIGKILL to this child's PID.
        let _ = self.child.kill();
        let st = self.child.wait().expect("wait for a killed child");
        self.status = Some(st);
        st
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Proc {
        Proc::spawn(Command::new("sleep").arg("30"))
    }

    #[test]
    fn terminate_ends_the_child_with_sigterm() {
        use std::os::unix::process::ExitStatusExt;
        let mut p = sleeper();
        assert!(p.is_running());
        let st = p.terminate_within(Duration::from_secs(5)).expect("exits");
        assert_eq!(st.signal(), Some(15), "{st}");
        assert!(!p.is_running());
    }

    #[test]
    fn kill_is_sigkill() {
        use std::os::unix::process::ExitStatusExt;
        let mut p = sleeper();
        let st = p.kill();
        assert_eq!(st.signal(), Some(9), "{st}");
        // Idempotent: the reaped child is not signalled again.
        assert_eq!(p.kill().signal(), Some(9));
        p.terminate();
    }

    #[test]
    fn drop_kills() {
        let p = sleeper();
        let pid = p.pid();
        drop(p);
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep"));
        assert!(!alive, "the child {pid} outlived its guard");
    }

    #[test]
    fn a_child_that_exits_by_itself_is_reported() {
        let mut p = Proc::spawn(&mut Command::new("true"));
        let st = p.wait_within(Duration::from_secs(5)).expect("exits");
        assert!(st.success());
        assert!(p.terminate_within(Duration::from_millis(10)).is_some());
    }
}
