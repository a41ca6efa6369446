//! The README's examples, run as written, so they cannot go stale.
//!
//! Every ```` ```sh ```` block is a list of commands (lines starting with `$ `, continued by a
//! trailing `\`), each followed by the output it shows. The blocks run in order, in one
//! `bash` session per group, in a temporary directory: `jwt-issuer` on `PATH` is the binary
//! under test (`cargo run [-q] --release --` means it too), no `JWT_ISSUER_*` or `JWT_SECRET*`
//! comes from the caller's environment, and the README's fixed addresses (127.0.0.1:8080 and
//! 127.0.0.1:9090) become free ports. `JWT_ISSUER_BIND` carries the first one, so that a
//! plain `jwt-issuer serve` listens where the README says it does. The ```` ```python ```` and
//! ```` ```js ```` snippets run in the same session (PyJWT from `helpers::python()`, jose from
//! tests/interop/node_modules), with the variables the shell exported.
//!
//! - A command ending in `&` starts a background process, killed when the session ends; the
//!   next command waits until it answers `/healthz` on the address its line names.
//! - A command must exit 0, unless the output it shows starts with `error:`: then it must
//!   fail, and its stderr must hold that line.
//! - Every shown line must match one line the command printed (stdout or stderr), whitespace
//!   collapsed. `…` stands for any text (a kid, a time, more lines): the pieces around it
//!   must appear in that order within the line; a line of just `…` matches any.
//! - A command that changes the client registry or the keys is followed by a pause of
//!   [`RELOAD_PAUSE`]: the README promises a running server sees such changes within a
//!   second, and a reader takes longer than that to type the next command.
//!
//! A block that cannot run here carries `<!-- readme-test: skip (why) -->` on the line
//! before it; `<!-- readme-test: new session -->` starts a fresh directory and shell. A
//! ```` ```sh ```` block with neither commands nor a skip marker fails the test, so no new
//! example goes untested.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::helpers::{interop_dir, python, without_issuer_env};

/// How long a running server may take to see a change to its keys dir (it polls every
/// second), with slack for a loaded machine.
const RELOAD_PAUSE: Duration = Duration::from_millis(1500);

/// How long a background server may take to answer `/healthz`.
const START_LIMIT: Duration = Duration::from_secs(20);

/// How long one command may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// The README's fixed addresses, each replaced by a free port.
const FIXED_ADDRESSES: [&str; 2] = ["127.0.0.1:8080", "127.0.0.1:9090"];

const MARKER: &str = "<!-- readme-test:";

#[test]
fn every_readme_example_runs_or_says_why_not() {
    let blocks = parse(&readme()).unwrap_or_else(|e| panic!("README.md: {e}"));
    let sessions = plan(&blocks).unwrap_or_else(|e| panic!("README.md: {e}"));
    assert!(
        sessions.iter().flatten().any(|b| b.lang == Lang::Sh),
        "no runnable shell example found in README.md"
    );
}

#[test]
fn readme_examples_run_and_show_their_output() {
    let blocks = parse(&readme()).unwrap_or_else(|e| panic!("README.md: {e}"));
    let sessions = plan(&blocks).unwrap_or_else(|e| panic!("README.md: {e}"));
    for block in blocks.iter().filter(|b| b.skip.is_some()) {
        eprintln!(
            "README.md:{}: skipped ```{}: {}",
            block.line,
            block.lang.name(),
            block.skip.as_deref().unwrap_or_default()
        );
    }
    let mut failures = Vec::new();
    for group in sessions {
        let mut session = Session::start();
        for block in group {
            session.run_block(block, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{} README example(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn readme_parser_reads_commands_output_and_markers() {
    let text = "\
# Title

<!-- readme-test: skip (needs a cluster) -->
```sh
kubectl apply -f deploy.yaml
```

```sh
$ jwt-issuer serve &     # listens on http://127.0.0.1:8080
$ curl -s http://127.0.0.1:8080/a \\
    -d x=1
{\"ok\":true}

second line
$ true
```

<!-- readme-test: new session -->
```python
print(1)
```

```toml
a = 1
```
";
    let blocks = parse(text).unwrap();
    assert_eq!(blocks.len(), 3, "{blocks:#?}");
    assert_eq!(blocks[0].skip.as_deref(), Some("needs a cluster"));
    assert_eq!(blocks[1].line, 8);
    let examples = commands(&blocks[1]).unwrap();
    assert_eq!(examples.len(), 3);
    assert!(examples[0].background());
    assert_eq!(
        examples[1].command,
        "curl -s http://127.0.0.1:8080/a \\\n    -d x=1"
    );
    assert_eq!(examples[1].shown, ["{\"ok\":true}", "second line"]);
    assert!(examples[2].shown.is_empty());
    assert!(blocks[2].new_session && blocks[2].lang == Lang::Python);
    let sessions = plan(&blocks).unwrap();
    assert_eq!(sessions.len(), 2);

    // A shell block with no commands and no marker is an error, as are unknown markers
    // and markers that do not stand right before a block.
    assert!(plan(&parse("```sh\nls\n```\n").unwrap()).is_err());
    assert!(parse("<!-- readme-test: skp (x) -->\n```sh\n$ ls\n```\n").is_err());
    assert!(parse("<!-- readme-test: skip () -->\n```sh\n$ ls\n```\n").is_err());
    assert!(parse("<!-- readme-test: skip (x) -->\ntext\n```sh\n$ ls\n```\n").is_err());
}

#[test]
fn readme_output_lines_match_with_ellipses() {
    let printed = r#"{"keys":[{"kty":"EC","x":"abc","kid":"k1","alg":"ES256"}]}
KID   ALG    STATE
k2    ES256  next     2026-11-26T05:51:21Z  signs from 2026-11-26T05:57:21Z"#;
    for shown in [
        r#"{"keys":[{"kty":"EC","x":"…","kid":"…","alg":"ES256"}]}"#,
        "… ES256 next … signs from …",
        "KID ALG STATE",
        "…",
        r#""kid":"k1""#,
    ] {
        assert!(shown_in(shown, printed), "{shown}");
    }
    for shown in [
        r#"{"keys":[{"kty":"RSA","x":"…"#,
        "… next … ES256",
        "KID ALG STATE WHEN",
    ] {
        assert!(!shown_in(shown, printed), "{shown}");
    }
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The languages whose blocks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Sh,
    Python,
    Js,
}

impl Lang {
    fn from_fence(info: &str) -> Option<Self> {
        match info {
            "sh" => Some(Self::Sh),
            "python" => Some(Self::Python),
            "js" => Some(Self::Js),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sh => "sh",
            Self::Python => "python",
            Self::Js => "js",
        }
    }
}

/// A fenced block in a language that runs.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    lang: Lang,
    body: Vec<String>,
    /// Why it does not run, from its marker.
    skip: Option<String>,
    /// Its marker starts a fresh session.
    new_session: bool,
}

/// One `$ ` command of a shell block and the output shown after it.
#[derive(Debug)]
struct Example {
    /// 1-based README line of the `$ `.
    line: usize,
    command: String,
    shown: Vec<String>,
}

impl Example {
    /// `cmd &`, possibly followed by a comment.
    fn background(&self) -> bool {
        let code = match self.command.split_once(" #") {
            Some((code, _)) => code,
            None => &self.command,
        };
        code.trim_end().ends_with('&')
    }

    fn expects_error(&self) -> bool {
        self.shown.first().is_some_and(|l| l.starts_with("error:"))
    }

    /// A command after which a running server must reload before the next one.
    fn changes_store(&self) -> bool {
        let words: Vec<&str> = self.command.split_whitespace().collect();
        words.windows(2).any(|w| {
            matches!(
                w,
                ["clients", "add" | "remove" | "rotate-secret"]
                    | ["keys", "generate" | "import" | "rotate" | "revoke"]
            )
        })
    }
}

enum Marker {
    Skip(String),
    NewSession,
}

/// The blocks of `text` in the languages that run, with their markers.
fn parse(text: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut marker: Option<(usize, Marker)> = None;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((n, line)) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix(MARKER) {
            if let Some((at, _)) = marker {
                return Err(format!("line {at}: marker not followed by a code block"));
            }
            marker = Some((n, parse_marker(rest).map_err(|e| format!("line {n}: {e}"))?));
            continue;
        }
        let Some(info) = line.strip_prefix("```") else {
            if let (Some((at, _)), false) = (&marker, line.trim().is_empty()) {
                return Err(format!("line {at}: marker not right before a code block"));
            }
            continue;
        };
        let mut body = Vec::new();
        loop {
            match lines.next() {
                Some((_, "```")) => break,
                Some((_, l)) => body.push(l.to_owned()),
                None => return Err(format!("line {n}: code block never closed")),
            }
        }
        let taken = marker.take();
        let Some(lang) = Lang::from_fence(info.trim()) else {
            if let Some((at, _)) = taken {
                return Err(format!(
                    "line {at}: marker on a ```{info} block, which never runs"
                ));
            }
            continue;
        };
        let (skip, new_session) = match taken {
            Some((_, Marker::Skip(why))) => (Some(why), false),
            Some((_, Marker::NewSession)) => (None, true),
            None => (None, false),
        };
        blocks.push(Block {
            line: n,
            lang,
            body,
            skip,
            new_session,
        });
    }
    match marker {
        Some((at, _)) => Err(format!("line {at}: marker not followed by a code block")),
        None => Ok(blocks),
    }
}

/// What follows `<!-- readme-test:`: `skip (why) -->` or `new session -->`.
fn parse_marker(rest: &str) -> Result<Marker, String> {
    let inner = rest
        .trim()
        .strip_suffix("-->")
        .ok_or("marker does not end with -->")?
        .trim();
    if inner == "new session" {
        return Ok(Marker::NewSession);
    }
    let why = inner
        .strip_prefix("skip (")
        .and_then(|w| w.strip_suffix(')'))
        .map(str::trim)
        .ok_or_else(|| format!("unknown marker {inner:?}: write `skip (why)` or `new session`"))?;
    if why.is_empty() {
        return Err("a skip marker says why".to_owned());
    }
    Ok(Marker::Skip(why.to_owned()))
}

/// The commands of a shell block and their shown output; an error for text before the
/// first command.
fn commands(block: &Block) -> Result<Vec<Example>, String> {
    let mut examples: Vec<Example> = Vec::new();
    let mut lines = block
        .body
        .iter()
        .enumerate()
        .map(|(i, l)| (block.line + 1 + i, l.as_str()));
    while let Some((n, line)) = lines.next() {
        if let Some(first) = line.strip_prefix("$ ") {
            let mut command = first.to_owned();
            while command.ends_with('\\') {
                let Some((_, more)) = lines.next() else {
                    return Err(format!("line {n}: continued command ends the block"));
                };
                command.push('\n');
                command.push_str(more);
            }
            examples.push(Example {
                line: n,
                command,
                shown: Vec::new(),
            });
        } else if !line.trim().is_empty() {
            let Some(example) = examples.last_mut() else {
                return Err(format!(
                    "line {n}: text before the block's first `$ ` command"
                ));
            };
            example.shown.push(line.trim().to_owned());
        }
    }
    Ok(examples)
}

/// The runnable blocks in sessions; an error names every shell block that neither runs
/// nor says why not.
fn plan(blocks: &[Block]) -> Result<Vec<Vec<&Block>>, String> {
    let mut sessions: Vec<Vec<&Block>> = Vec::new();
    let mut problems = Vec::new();
    for block in blocks {
        if block.skip.is_some() {
            continue;
        }
        if block.lang == Lang::Sh {
            match commands(block) {
                Ok(examples) if examples.is_empty() => problems.push(format!(
                    "line {}: ```sh block without `$ ` commands; mark it with \
                     `<!-- readme-test: skip (why) -->` if it cannot run in the tests",
                    block.line
                )),
                Ok(_) => {}
                Err(e) => problems.push(e),
            }
        }
        match sessions.last_mut() {
            Some(session) if !block.new_session => session.push(block),
            _ => sessions.push(vec![block]),
        }
    }
    if problems.is_empty() {
        Ok(sessions)
    } else {
        Err(problems.join("\n"))
    }
}

/// Whether the shown line matches a line of `printed` (see the module doc).
fn shown_in(shown: &str, printed: &str) -> bool {
    let pieces: Vec<String> = shown.split('…').map(collapse).collect();
    printed.lines().map(collapse).any(|line| {
        let mut rest = line.as_str();
        pieces.iter().all(|piece| match rest.find(piece.as_str()) {
            Some(at) => {
                rest = &rest[at + piece.len()..];
                true
            }
            None => false,
        })
    })
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A free port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A background process the session started.
struct Background {
    pid: u32,
    /// `http://127.0.0.1:PORT`, where it serves `/healthz`.
    url: String,
    readme_line: usize,
    stderr: PathBuf,
}

/// One `bash` fed commands over stdin, in a temporary working directory.
struct Session {
    bash: Child,
    stdin: Option<ChildStdin>,
    /// The lines bash prints itself: one `__readme_done N RC PID` per command.
    done: mpsc::Receiver<String>,
    /// Command outputs, bash's own stderr, the `jwt-issuer` link.
    control: TempDir,
    /// The README's fixed addresses and the ones used instead.
    addresses: Vec<(&'static str, String)>,
    background: Vec<Background>,
    /// A background process the next command waits for.
    starting: Option<usize>,
    count: usize,
    _work: TempDir,
}

impl Session {
    fn start() -> Self {
        let work = TempDir::new().expect("temp dir");
        let control = TempDir::new().expect("temp dir");
        let bin = control.path().join("bin");
        fs::create_dir(&bin).expect("bin dir");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_jwt-issuer"), bin.join("jwt-issuer"))
            .expect("link jwt-issuer");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
            .expect("PATH");
        let addresses: Vec<(&'static str, String)> = FIXED_ADDRESSES
            .iter()
            .map(|&fixed| (fixed, format!("127.0.0.1:{}", free_port())))
            .collect();
        let mut cmd = Command::new("bash");
        without_issuer_env(&mut cmd)
            .env_remove("BASH_ENV")
            .env_remove("ENV")
            .env("PATH", path)
            .env("JWT_ISSUER_BIND", &addresses[0].1)
            .current_dir(work.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(control.path().join("bash.err")).expect("bash.err"));
        let mut bash = cmd.spawn().expect("start bash");
        let stdin = bash.stdin.take();
        let stdout = bash.stdout.take().expect("bash stdout");
        let (tx, done) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            bash,
            stdin,
            done,
            control,
            addresses,
            background: Vec::new(),
            starting: None,
            count: 0,
            _work: work,
        }
    }

    /// The README text with this session's addresses (and `jwt-issuer` for `cargo run`).
    fn localize(&self, text: &str) -> String {
        let mut text = text
            .replace("cargo run -q --release -- ", "jwt-issuer ")
            .replace("cargo run --release -- ", "jwt-issuer ");
        for (fixed, free) in &self.addresses {
            text = text.replace(fixed, free);
        }
        text
    }

    fn run_block(&mut self, block: &Block, failures: &mut Vec<String>) {
        match block.lang {
            Lang::Sh => {
                let examples = commands(block).expect("checked by plan");
                for example in examples {
                    self.run_example(&example, failures);
                }
            }
            Lang::Python | Lang::Js => {
                let snippet = self.localize(&block.body.join("\n"));
                let command = match block.lang {
                    Lang::Python => {
                        format!("{} - <<'__README_SNIPPET__'", quote(&python()))
                    }
                    _ => format!(
                        "(cd {} && node --input-type=module - <<'__README_SNIPPET__'",
                        quote(&interop_dir())
                    ),
                };
                let close = if block.lang == Lang::Js { "\n)" } else { "" };
                let example = Example {
                    line: block.line,
                    command: format!("{command}\n{snippet}\n__README_SNIPPET__{close}"),
                    shown: Vec::new(),
                };
                self.run_example(&example, failures);
            }
        }
    }

    /// Runs one command and adds what went wrong, if anything, to `failures`.
    fn run_example(&mut self, example: &Example, failures: &mut Vec<String>) {
        if let Err(e) = self.wait_for_start() {
            failures.push(e);
        }
        let command = self.localize(&example.command);
        let n = self.count;
        self.count += 1;
        let out = self.control.path().join(format!("{n}.out"));
        let err = self.control.path().join(format!("{n}.err"));
        // The group runs in this shell, so assignments and `export` stay for the next
        // command; stdin is /dev/null so that nothing reads the rest of this script.
        let script = format!(
            "{{ {command}\n}} >{} 2>{} </dev/null\n__rc=$?\necho \"__readme_done {n} $__rc $!\"\n",
            quote(&out),
            quote(&err)
        );
        let stdin = self.stdin.as_mut().expect("bash stdin");
        stdin
            .write_all(script.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to bash");
        let (rc, pid) = self.wait_done(n, example.line);
        let stdout = fs::read_to_string(&out).unwrap_or_default();
        let stderr = fs::read_to_string(&err).unwrap_or_default();
        if example.background() {
            let pid: u32 = pid
                .parse()
                .unwrap_or_else(|_| panic!("README.md:{}: no pid for `{command}`", example.line));
            let address = self
                .addresses
                .iter()
                .map(|(_, free)| free)
                .find(|free| command.contains(free.as_str()))
                .unwrap_or(&self.addresses[0].1);
            self.background.push(Background {
                pid,
                url: format!("http://{address}"),
                readme_line: example.line,
                stderr: err,
            });
            self.starting = Some(self.background.len() - 1);
        }
        if let Some(problem) = check(example, rc, &stdout, &stderr) {
            failures.push(format!(
                "README.md:{}: $ {command}\n  {problem}\n  exit status: {rc}\n  stdout: {}\n  stderr: {}",
                example.line,
                indent(&stdout),
                indent(&stderr)
            ));
        }
        if example.changes_store() && !self.background.is_empty() {
            thread::sleep(RELOAD_PAUSE);
        }
    }

    /// The exit status and `$!` that bash reports for command `n`.
    fn wait_done(&mut self, n: usize, readme_line: usize) -> (i32, String) {
        let start = Instant::now();
        loop {
            let left = COMMAND_LIMIT.saturating_sub(start.elapsed());
            let line = match self.done.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "README.md:{readme_line}: no result from bash within {COMMAND_LIMIT:?} ({e}); bash said: {}",
                    fs::read_to_string(self.control.path().join("bash.err")).unwrap_or_default()
                ),
            };
            let mut words = line.split(' ');
            if words.next() != Some("__readme_done") || words.next() != Some(&n.to_string()) {
                continue;
            }
            let rc = words.next().and_then(|w| w.parse().ok()).unwrap_or(-1);
            return (rc, words.next().unwrap_or_default().to_owned());
        }
    }

    /// Waits until the background process started last answers `/healthz`.
    fn wait_for_start(&mut self) -> Result<(), String> {
        let Some(index) = self.starting.take() else {
            return Ok(());
        };
        let process = &self.background[index];
        let url = format!("{}/healthz", process.url);
        let start = Instant::now();
        loop {
            let answer = ureq::get(&url).timeout(Duration::from_secs(2)).call();
            if matches!(answer, Ok(ref res) if res.status() == 200) {
                return Ok(());
            }
            let log = || fs::read_to_string(&process.stderr).unwrap_or_default();
            if !alive(process.pid) {
                return Err(format!(
                    "README.md:{}: the background process ended before answering {url}\n  stderr: {}",
                    process.readme_line,
                    indent(&log())
                ));
            }
            if start.elapsed() > START_LIMIT {
                return Err(format!(
                    "README.md:{}: no answer from {url} within {START_LIMIT:?}\n  stderr: {}",
                    process.readme_line,
                    indent(&log())
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for process in &self.background {
            signal(process.pid, "TERM");
        }
        for process in &self.background {
            let start = Instant::now();
            while alive(process.pid) && start.elapsed() < Duration::from_secs(5) {
                thread::sleep(Duration::from_millis(50));
            }
            if alive(process.pid) {
                signal(process.pid, "KILL");
            }
        }
        // Closing stdin ends bash, which reaps its children.
        drop(self.stdin.take());
        let _ = self.bash.kill();
        let _ = self.bash.wait();
    }
}

/// Whether the command's status and output match what the README shows; why not if not.
fn check(example: &Example, rc: i32, stdout: &str, stderr: &str) -> Option<String> {
    if example.expects_error() {
        if rc == 0 {
            return Some("the README shows an error, but the command exited 0".to_owned());
        }
        let line = &example.shown[0];
        if !shown_in(line, stderr) {
            return Some(format!("stderr lacks the shown line `{line}`"));
        }
    } else if rc != 0 {
        return Some("the command failed; the README shows no error".to_owned());
    }
    let printed = format!("{stdout}\n{stderr}");
    let missing: Vec<&String> = example
        .shown
        .iter()
        .filter(|line| !shown_in(line, &printed))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut problem = String::from("output lacks the shown line(s):");
    for line in missing {
        let _ = write!(problem, "\n    {line}");
    }
    Some(problem)
}

/// Whether a process the session started still runs (bash reaps its children as they end).
fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends a signal to one process we started.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A path as one single-quoted shell word.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "(empty)".to_owned();
    }
    text.trim_end().replace('\n', "\n    ")
}
