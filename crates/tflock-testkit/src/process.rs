//! Child processes that cannot outlive the test process, and the signals we send them.
//!
//! Children are started with `PR_SET_PDEATHSIG = SIGKILL`, so a test binary that is
//! killed (a CI timeout, Ctrl-C, a panic in a destructor) takes its Redis processes with
//! it. The kernel sends that signal when the *thread* that forked the child exits, not
//! the process; test threads and tokio's blocking threads come and go, so every spawn is
//! done by one spawner thread that lives as long as the process.

use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant};

struct SpawnJob {
    command: Command,
    reply: Sender<io::Result<Child>>,
}

/// Spawns `command` from the process-lifetime spawner thread, with the parent-death
/// signal set (on Linux).
pub(crate) fn spawn(mut command: Command) -> io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (reply, answer) = mpsc::channel();
    spawner()
        .send(SpawnJob { command, reply })
        .expect("the spawner thread lives as long as the process");
    answer.recv().expect("the spawner thread answers every job")
}

fn spawner() -> &'static Sender<SpawnJob> {
    static SPAWNER: OnceLock<Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (jobs, incoming) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("tflock-testkit-spawner".into())
            .spawn(move || {
                // The sender sits in a static and is never dropped: this loop never ends.
                for mut job in incoming {
                    let _ = job.reply.send(job.command.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        jobs
    })
}

/// Sends `signal` to `pid`. A process that already exited is not an error here: the
/// caller reaps it next.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let _ = unsafe { libc::kill(pid, signal) };
}

/// Waits for `child` to exit, for at most `timeout`.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `child` with SIGKILL and reaps it, so its ports are free on return. False if it
/// is still there after 10 s (SIGKILL also ends a SIGSTOPped process; only a process
/// stuck in uninterruptible I/O survives that long), which callers report.
#[must_use]
pub(crate) fn kill_and_reap(child: &mut Child) -> bool {
    send_signal(child.id(), libc::SIGKILL);
    wait_timeout(child, Duration::from_secs(10)).is_some()
}

/// The program to run: `$env_var` if set, else `name` looked up on `PATH`.
pub(crate) fn program(name: &str, env_var: &str) -> PathBuf {
    std::env::var_os(env_var).map_or_else(|| PathBuf::from(name), PathBuf::from)
}

/// The panic message for a program that could not be started.
pub(crate) fn spawn_failure(program: &OsStr, error: &io::Error) -> String {
    let hint = if error.kind() == io::ErrorKind::NotFound {
        " (not installed? `apt-get install -y redis-server redis-tools redis-sentinel`)"
    } else {
        ""
    };
    format!("cannot run {}: {error}{hint}", program.to_string_lossy())
}
