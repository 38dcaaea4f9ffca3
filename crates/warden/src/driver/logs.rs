//! A service's stdout/stderr: appended to `state_dir/logs/NAME.log` (rotated to `NAME.log.1`
//! past [`MAX_FILE`]) and kept as an in-memory tail.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Lines of the current run kept in memory, for start-failure messages and the status.
const TAIL_LINES: usize = 40;

/// A longer line is kept in pieces of this size: a progress bar drawn without line ends (or a
/// service gone wrong) must not grow warden's memory without bound.
const MAX_LINE: usize = 16 * 1024;

/// How far back from the file's end a request for its last lines reads, at most.
const FILE_TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// Past this size the file is moved to `NAME.log.1` (replacing the one before) and begun again:
/// a chatty service running for weeks must not fill the disk. At most twice this is kept.
const MAX_FILE: u64 = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct ServiceLog {
    path: PathBuf,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Held while a line is written: the stdout and stderr pumps append at once, and two
    /// rotating together could move a fresh file over the full one just kept.
    file: Arc<Mutex<()>>,
    /// [`MAX_FILE`], smaller in tests.
    max_file: u64,
}

impl ServiceLog {
    pub fn new(path: PathBuf) -> Self {
        ServiceLog { path, tail: Arc::default(), file: Arc::default(), max_file: MAX_FILE }
    }

    /// The current run's last `n` lines (at most [`TAIL_LINES`]), from memory.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let tail = self.tail.lock().unwrap();
        tail.iter().skip(tail.len().saturating_sub(n)).cloned().collect()
    }

    /// The log file's last `n` lines, earlier runs included (each begins with warden's
    /// `--- warden: starting … ---`), read from at most its last [`FILE_TAIL_BYTES`]; the
    /// memory tail when the file cannot be read (removed by an operator, say). Blocking IO.
    pub fn file_tail(&self, n: usize) -> Vec<String> {
        let read = || -> std::io::Result<Vec<String>> {
            let mut f = std::fs::File::open(&self.path)?;
            let from = f.metadata()?.len().saturating_sub(FILE_TAIL_BYTES);
            f.seek(SeekFrom::Start(from))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            let text = String::from_utf8_lossy(&bytes);
            // Read from the middle of the file, the first line is likely a piece of one.
            let lines: Vec<&str> = text.lines().skip(usize::from(from > 0)).collect();
            Ok(lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect())
        };
        read().unwrap_or_else(|_| self.tail(n))
    }

    /// Marks the start of a new run in the file and drops the old tail.
    pub fn begin_run(&self, what: &str) {
        self.tail.lock().unwrap().clear();
        self.append(&format!("--- warden: {what} ---"), false);
    }

    fn append(&self, line: &str, keep: bool) {
        if keep {
            let mut tail = self.tail.lock().unwrap();
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
        // Small appends to a local file; opened per line so rotation by an operator just works.
        let _writing = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(&self.path);
        let Ok(mut f) = open() else { return };
        if f.metadata().is_ok_and(|m| m.len() >= self.max_file) {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            let Ok(fresh) = open() else { return };
            f = fresh;
        }
        let _ = writeln!(f, "{line}");
    }

    /// A line from warden itself about this service, kept with the service's own output.
    pub fn note(&self, what: &str) {
        self.append(&format!("--- warden: {what} ---"), true);
    }

    /// Copies lines from a pipe until it closes (when the service's processes are gone).
    ///
    /// Whatever the service writes is drained: bytes that are not UTF-8 are kept replaced
    /// (U+FFFD), lines past [`MAX_LINE`] in pieces. Stopping early would close the pipe's read
    /// end, and the service would die of SIGPIPE on its next write (or, were it kept open, block
    /// once the pipe's 64 KiB filled).
    pub async fn pump(self, pipe: impl AsyncRead + Unpin) {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            let buf = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(buf) => buf,
            };
            let room = &buf[..buf.len().min(MAX_LINE - line.len())];
            let (taken, ended) = match memchr::memchr(b'\n', room) {
                Some(i) => (i + 1, true),
                None => (room.len(), line.len() + room.len() == MAX_LINE),
            };
            line.extend_from_slice(&room[..taken]);
            reader.consume(taken);
            if ended {
                self.append(&as_text(&line), true);
                line.clear();
            }
        }
        if !line.is_empty() {
            self.append(&as_text(&line), true);
        }
    }
}

/// A line as read, without its line end, as text.
fn as_text(line: &[u8]) -> std::borrow::Cow<'_, str> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_rotated_past_its_bound_keeping_one_before() {
        let (dir, mut log) = log();
        log.max_file = 1000;
        for i in 0..300 {
            log.note(&format!("line {i}"));
        }
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.len()).unwrap_or(0);
        // 300 lines of 20-odd bytes: rotated several times, each file under its bound plus a line.
        assert!(size("svc.log") < 1030 && size("svc.log.1") >= 1000 && size("svc.log.1") < 1030);
        assert!(!dir.path().join("svc.log.2").exists());
        let last = std::fs::read_to_string(dir.path().join("svc.log")).unwrap();
        assert!(last.ends_with("--- warden: line 299 ---\n"), "{last}");
        let before = std::fs::read_to_string(dir.path().join("svc.log.1")).unwrap();
        let first_now: &str = last.lines().next().unwrap();
        let n = |l: &str| l.trim_start_matches("--- warden: line ").trim_end_matches(" ---").parse::<u32>().unwrap();
        assert_eq!(n(before.lines().last().unwrap()) + 1, n(first_now), "nothing lost between the two");
    }

    fn log() -> (tempfile::TempDir, ServiceLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = ServiceLog::new(dir.path().join("svc.log"));
        (dir, log)
    }

    #[tokio::test]
    async fn every_byte_is_drained_and_lines_are_bounded() {
        let (_dir, log) = log();
        let mut out = b"bad \xff\xfe byte\r\n".to_vec();
        out.extend(std::iter::repeat_n(b'.', 2 * MAX_LINE + 10));
        out.extend_from_slice(b"\nlast without an end");
        log.clone().pump(&out[..]).await;
        let lines = log.tail(10);
        assert_eq!(lines[0], "bad \u{fffd}\u{fffd} byte");
        assert_eq!(lines[1..4].iter().map(String::len).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 10]);
        assert_eq!(lines[4], "last without an end");
        assert_eq!(lines.len(), 5);
        // The file has the same lines, and keeps them past the memory tail.
        assert_eq!(log.file_tail(10), lines);
    }

    #[tokio::test]
    async fn the_file_tail_goes_past_the_memory_tail_and_earlier_runs() {
        let (_dir, log) = log();
        log.begin_run("run 1");
        log.clone().pump(&b"crashed here\n"[..]).await;
        log.begin_run("run 2");
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        log.clone().pump(many.as_bytes()).await;
        assert_eq!(log.tail(1000).len(), TAIL_LINES);
        let file = log.file_tail(1000);
        assert_eq!(file.len(), 103);
        assert_eq!(file[..2], ["--- warden: run 1 ---", "crashed here"]);
        assert_eq!(log.file_tail(2), ["line 98", "line 99"]);
    }
}
