//! `drover top` as a person runs it: the real binary in a real terminal
//! (tmux, 80x24 as over SSH) against a real coordinator and two nodes. Keys
//! go in with `tmux send-keys` and the screen comes back with
//! `tmux capture-pane`; what the keys did is checked through the API.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use drover_cli::client::NewKey;
use drover_cli::cluster::{wait_for, Cluster};
use drover_shared::api::Role;

const BIN: &str = env!("CARGO_BIN_EXE_drover");
/// Longest wait for something to show on the screen: a snapshot comes
/// every 1.5 s, a reconnect after at most a few seconds more; a loaded CI
/// machine is slower.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A tmux server of its own (`-L`, a unique socket name, no config file),
/// killed with everything in it when dropped, also when the test fails.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        Tmux {
            socket: format!("drover-top-{tag}-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts `drover top` in session `name`, 80x24, with `key`. When it
    /// exits, the pane keeps its last screen and the exit status, so a
    /// failure shows what it printed.
    fn top(&self, name: &str, url: &str, key: &str, home: &Path) {
        let script = format!("'{BIN}' top; echo \"drover top exited with $?\"; sleep 3600");
        self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "80",
            "-y",
            "24",
            "-e",
            &format!("DROVER_URL={url}"),
            "-e",
            &format!("DROVER_API_KEY={key}"),
            "-e",
            &format!("XDG_CONFIG_HOME={}", home.display()),
            "-e",
            "TERM=xterm-256color",
            "sh",
            "-c",
            &script,
        ]);
    }

    /// The pid of `drover top` in session `name`: the one child of the
    /// pane's shell.
    fn top_pid(&self, name: &str) -> i32 {
        let out = self.run(&["display-message", "-p", "-t", name, "#{pane_pid}"]);
        let sh = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children"))
            .expect("the pane's shell runs");
        let mut pids = children.split_whitespace();
        let pid = pids.next().expect("drover top runs").parse().unwrap();
        assert_eq!(pids.next(), None, "one child: {children}");
        pid
    }

    fn screen(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", name]).stdout).into_owned()
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until the screen of `name` satisfies `cond`; the last screen
    /// is in the error.
    fn wait(&self, name: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let r = wait_for(SCREEN_TIMEOUT, what, || {
            last = self.screen(name);
            Ok(cond(&last).then(|| last.clone()))
        });
        match r {
            Ok(s) => s,
            Err(e) => panic!("{e}; the screen:\n{last}"),
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        // tmux leaves its socket file behind; `-L` puts it here.
        let dir = std::env::var_os("TMUX_TMPDIR").unwrap_or_else(|| "/tmp".into());
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let _ = std::fs::remove_file(
            Path::new(&dir)
                .join(format!("tmux-{uid}"))
                .join(&self.socket),
        );
    }
}

/// The screen's first line: the connection's state.
fn header(screen: &str) -> &str {
    screen.lines().next().unwrap_or("")
}

/// The line of the fleet table about `node`.
fn row<'a>(screen: &'a str, node: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == node))
        .unwrap_or("")
}

#[test]
fn drain_a_node_from_top_and_ride_out_a_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut farm = Cluster::start(Path::new(BIN), &dir.path().join("farm"), &[], &[]).unwrap();
    farm.add_node("node-1").unwrap();
    farm.add_node("node-2").unwrap();
    farm.wait_nodes(2).unwrap();
    let admin = farm.admin_key().unwrap();
    let viewer = farm
        .client()
        .create_key(&NewKey {
            name: "watcher".into(),
            role: Role::Viewer,
            project: None,
            rate_per_s: None,
            max_active_jobs: None,
        })
        .unwrap()
        .secret;
    let tmux = Tmux::new("drain");
    tmux.top("admin", &farm.url(), &admin, &home);
    tmux.top("viewer", &farm.url(), &viewer, &home);

    let both = |s: &str| {
        s.contains("live") && row(s, "node-1").contains("idle") && row(s, "node-2").contains("idle")
    };
    tmux.wait("admin", "both nodes idle on the admin's screen", both);
    tmux.wait("viewer", "both nodes on the viewer's screen", both);

    // The viewer selects node-2 and confirms a drain: the API refuses it,
    // and the screen says why.
    tmux.keys("viewer", &["Down"]);
    tmux.wait("viewer", "node-2 selected", |s| {
        row(s, "node-2").starts_with("> ")
    });
    tmux.keys("viewer", &["d"]);
    tmux.wait("viewer", "the confirmation", |s| {
        s.contains("Drain node node-2?")
    });
    tmux.keys("viewer", &["y"]);
    tmux.wait("viewer", "the 403 on the status line", |s| {
        s.contains("(403)")
    });
    assert!(!farm.client().node("node-2").unwrap().drained);

    // The admin does the same, and the node is drained.
    tmux.keys("admin", &["Down"]);
    tmux.wait("admin", "node-2 selected", |s| {
        row(s, "node-2").starts_with("> ")
    });
    tmux.keys("admin", &["d"]);
    tmux.wait("admin", "the confirmation", |s| {
        s.contains("Drain node node-2?")
    });
    tmux.keys("admin", &["y"]);
    wait_for(SCREEN_TIMEOUT, "node-2 drained in the API", || {
        Ok(farm.client().node("node-2")?.drained.then_some(()))
    })
    .unwrap();
    let s = tmux.wait("admin", "node-2 draining on the screen", |s| {
        row(s, "node-2").contains("draining")
    });
    assert!(row(&s, "node-1").contains("idle"), "{s}");
    tmux.wait("viewer", "the drain seen by the viewer too", |s| {
        row(s, "node-2").contains("draining")
    });

    // The coordinator dies: the header says so; it comes back on the same
    // ports and data: the screen follows, the drain still there.
    farm.kill_coordinator().unwrap();
    tmux.wait("admin", "reconnecting in the header", |s| {
        header(s).contains("reconnecting")
    });
    farm.start_coordinator().unwrap();
    let s = tmux.wait("admin", "the nodes back after the restart", |s| {
        header(s).contains("live")
            && row(s, "node-1").contains("idle")
            && row(s, "node-2").contains("draining")
    });
    assert!(!header(&s).contains("reconnecting"), "{s}");
    assert!(row(&s, "node-2").starts_with("> "), "still selected: {s}");

    // SIGTERM (a closed SSH session sends SIGHUP, handled alike): it leaves
    // the alternate screen and exits 0, the terminal given back.
    let pid = tmux.top_pid("admin");
    // SAFETY: kill(2) on the drover top process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let s = tmux.wait("admin", "drover top to exit", |s| {
        s.contains("drover top exited with 0")
    });
    assert!(
        !s.contains("Fleet"),
        "the table is gone with the alternate screen: {s}"
    );
    farm.stop();
}
