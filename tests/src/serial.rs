//! A running QEMU whose serial console is read line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Running {
    child: Child,
    console: Arc<(Mutex<String>, Condvar)>,
    started: Instant,
}

impl Running {
    /// Starts `cmd` with stdout (the serial port) captured.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let console = Arc::new((Mutex::new(String::new()), Condvar::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut line = Vec::new();
                while r
                    .read_until(b'\n', &mut line)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    let text = String::from_utf8_lossy(&line).replace('\r', "");
                    let (log, cv) = &*console;
                    log.lock().unwrap().push_str(&text);
                    cv.notify_all();
                    line.clear();
                }
            });
        }
        Ok(Running {
            child,
            console,
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the machine printed so far.
    pub fn output(&self) -> String {
        self.console.0.lock().unwrap().clone()
    }

    /// Waits until the console contains `needle`; returns the time since start.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        let (log, cv) = &*self.console;
        let mut guard = log.lock().unwrap();
        loop {
            if guard.contains(needle) {
                return Ok(self.started.elapsed());
            }
            let now = Instant::now();
            if now >= deadline {
                drop(guard);
                return Err(self.failure(&format!("`{needle}` not seen within {timeout:?}")));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader threads a moment to drain the pipes.
                drop(guard);
                std::thread::sleep(Duration::from_millis(200));
                if self.output().contains(needle) {
                    return Ok(self.started.elapsed());
                }
                return Err(self.failure(&format!("QEMU exited ({status}) before `{needle}`")));
            }
            guard = cv
                .wait_timeout(guard, (deadline - now).min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    /// Waits for QEMU to exit and returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    std::thread::sleep(Duration::from_millis(100));
                    return Ok(status.code().unwrap_or(-1));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    return Err(self.failure(&format!("QEMU still running after {timeout:?}")));
                }
                Err(e) => return Err(format!("waiting for QEMU: {e}")),
            }
        }
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what}\n----- console -----\n{}\n-------------------",
            self.output()
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}
