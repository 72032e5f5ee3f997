//! Running the real `ferric-agent` binary: locate or build it, spawn it with stderr captured
//! to a file, wait for its API, and make sure it is gone when the test ends.
//!
//! CLI contract (owned by the agent crate):
//! `ferric-agent [--cmdline-file FILE] [--api-url URL[,URL…]] [--listen HOST:PORT]
//! [--advertise HOST:PORT] [--standalone] [--agent-token TOKEN] [--install-device PATH]
//! [--allow-device PATH]… [--power-action poweroff|reboot|exit] [--log-file PATH]`.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the agent binary: `$FERRIC_AGENT_BIN` if set; otherwise builds it once per process
/// with `$CARGO build -p ferric-agent --bin ferric-agent` and returns
/// `$CARGO_TARGET_DIR/debug/ferric-agent` (or `<workspace>/target/debug/ferric-agent`).
/// Panics with cargo's output when the build fails.
pub fn agent_binary() -> PathBuf {
    // The outcome (failure too) is computed once, so a broken build is reported by every test
    // without rebuilding for each one.
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate_or_build) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FERRIC_AGENT_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("FERRIC_AGENT_BIN={} is not a file", p.display()));
        }
        return Ok(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let out = Command::new(&cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-p", "ferric-agent", "--bin", "ferric-agent"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cargo:?} to build ferric-agent: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building ferric-agent failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("ferric-agent");
    if !bin.is_file() {
        return Err(format!(
            "built ferric-agent but {} is missing",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A running agent process. Killed (SIGKILL) when dropped; when dropped during a panic its
/// stderr is printed so the failing test shows what the agent said.
pub struct AgentProcess {
    child: Child,
    exit: Option<ExitStatus>,
    log_path: PathBuf,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl AgentProcess {
    /// Spawns the agent binary with `args`; stderr (and stdout) go to a file in a temp dir.
    pub fn spawn<I, S>(args: I) -> io::Result<AgentProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = tempfile::Builder::new().prefix("ferric-agent-").tempdir()?;
        Self::spawn_in(dir, args)
    }

    /// Writes `cmdline` (kernel command line text) to a file and spawns the agent with
    /// `--cmdline-file FILE` followed by `args`.
    pub fn spawn_with_cmdline<I, S>(cmdline: &str, args: I) -> io::Result<AgentProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = tempfile::Builder::new().prefix("ferric-agent-").tempdir()?;
        let file = dir.path().join("cmdline");
        std::fs::write(&file, format!("{cmdline}\n"))?;
        let mut all: Vec<std::ffi::OsString> = vec!["--cmdline-file".into(), file.into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        Self::spawn_in(dir, all)
    }

    fn spawn_in<I, S>(dir: tempfile::TempDir, args: I) -> io::Result<AgentProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = agent_binary();
        let log_path = dir.path().join("agent.stderr");
        let log = std::fs::File::create(&log_path)?;
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            .spawn()?;
        Ok(AgentProcess {
            child,
            exit: None,
            log_path,
            dir,
            args,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A scratch directory that lives as long as the process handle.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the agent wrote to stderr/stdout so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("(cannot read agent log: {e})"))
    }

    /// Exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::util::poll_until(timeout, Duration::from_millis(50), || self.try_exit())
    }

    /// Polls `GET {base_url}/v1/status` until it answers 200 with JSON, the process exits, or
    /// `timeout` passes. Returns the status document.
    pub fn wait_ready(&mut self, base_url: &str, timeout: Duration) -> Result<Value, String> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{}/v1/status", base_url.trim_end_matches('/'));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Err(format!(
                    "agent exited ({st}) before {url} answered\n{}",
                    self.report()
                ));
            }
            let last = match client.get(&url).send() {
                Ok(r) if r.status().is_success() => {
                    let text = r.text().unwrap_or_default();
                    return serde_json::from_str(&text)
                        .map_err(|e| format!("{url} answered non-JSON ({e}): {text}"));
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "agent API {url} not ready after {timeout:?} (last: {last})\n{}",
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Command line and stderr, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "---- ferric-agent {} (pid {}) stderr ----\n{}\n---- end of agent stderr ----",
            self.args.join(" "),
            self.child.id(),
            self.stderr()
        )
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}
