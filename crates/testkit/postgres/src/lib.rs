//! A throwaway PostgreSQL server for tests.
//!
//! [`TestPostgres::start`] makes a cluster in a temporary directory with
//! the PostgreSQL binaries of this machine (`GATE402_PG_BIN`, else the
//! directory of `initdb` on `PATH`, else `/usr/lib/postgresql/*/bin`),
//! starts it on a free loopback port with trust authentication, and stops
//! it on drop. PostgreSQL refuses to run as root; as root, the server runs
//! as the `postgres` user.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A running server.
pub struct TestPostgres {
    /// `postgres://gate402@127.0.0.1:<port>/postgres`.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    server: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATE402_PG_BIN") {
        return PathBuf::from(dir);
    }
    // The distribution's directory first: PATH may hold symlinks to it
    // without the helper programs next to them.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some(newest) = versions.pop() {
        return newest;
    }
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").exists());
    found.expect(
        "PostgreSQL is needed (initdb and postgres): install it (apt-get install postgresql) or set GATE402_PG_BIN",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root.
fn command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestPostgres {
    /// Makes and starts a cluster; waits until it accepts connections.
    pub async fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let init = command(&bin, "initdb")
            .args(["-A", "trust", "-U", "gate402", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("initdb");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let server = spawn(&bin, &data, dir.path(), port);
        let mut db = Self {
            url: format!("postgres://gate402@127.0.0.1:{port}/postgres"),
            bin,
            data,
            server,
            port,
            dir,
        };
        db.wait_ready().await;
        db
    }

    /// Stops the server at once (as a crash would), keeping its data.
    pub fn stop(&mut self) {
        let _ = command(&self.bin, "pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }

    /// `psql` on the `postgres` database, unaligned, tuples only, quiet.
    fn psql(&self) -> Command {
        let mut psql = command(&self.bin, "psql");
        psql.args([
            "-h",
            "127.0.0.1",
            "-U",
            "gate402",
            "-d",
            "postgres",
            "-XAtq",
        ])
        .arg("-p")
        .arg(self.port.to_string());
        psql
    }

    /// Runs `sql` with `psql` on the `postgres` database; its output.
    ///
    /// # Panics
    ///
    /// When `psql` cannot run or the statement fails.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.psql().arg("-c").arg(sql).output().expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `psql` session of its own, kept open until dropped: for a test
    /// that holds a lock or a transaction open while a gateway works.
    ///
    /// # Panics
    ///
    /// When `psql` cannot start.
    pub fn session(&self) -> SqlSession {
        let mut psql = self
            .psql()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("psql");
        let stdin = psql.stdin.take().expect("psql's stdin");
        let stdout = BufReader::new(psql.stdout.take().expect("psql's stdout"));
        SqlSession {
            psql,
            stdin,
            stdout,
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub async fn restart(&mut self) {
        self.server = spawn(&self.bin, &self.data, self.dir.path(), self.port);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // Accepting TCP comes a moment before accepting logins.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        panic!("postgres did not start on port {}", self.port);
    }
}

fn spawn(bin: &Path, data: &Path, sockets: &Path, port: u16) -> Child {
    command(bin, "postgres")
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(sockets)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres")
}

/// An open `psql` session ([`TestPostgres::session`]); ended when dropped,
/// rolling back what it left open.
pub struct SqlSession {
    psql: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SqlSession {
    /// Runs `sql` (statements ending in `;`) in this session and waits for
    /// it to finish: its output, one line per row (`|` between columns).
    /// A statement that waits for a lock waits here too.
    ///
    /// # Panics
    ///
    /// When the session ended.
    pub fn run(&mut self, sql: &str) -> String {
        const END: &str = "-- end of statements --";
        writeln!(self.stdin, "{sql}\n\\echo '{END}'").expect("psql's stdin");
        self.stdin.flush().expect("psql's stdin");
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let read = self.stdout.read_line(&mut line).expect("psql's stdout");
            assert!(read > 0, "psql ended while running {sql}");
            if line.trim_end() == END {
                return out;
            }
            out += &line;
        }
    }
}

impl Drop for SqlSession {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
