//! The Debian package for real (docs/deploy.md, "Install from the package"):
//! `scripts/package.sh` builds it (once, from the dev profile's binaries the deploy tests
//! build anyway), `dpkg -i` installs it on this machine, `systemd-analyze verify` checks
//! every unit, every installed binary passes `--check` with its installed configuration,
//! the installed broker runs the way `tapbus-broker.service` runs it (its `User=`,
//! `Group=`, `SupplementaryGroups=`, `RuntimeDirectory=` and `ExecStart=`/`ExecStartPost=`
//! read from the installed unit; there is no systemd as PID 1 here) and receives dnstap
//! from Debian's unbound, which drops to its own user and writes into the socket through
//! the group `dnstap`. Then `dpkg -r` removes the package (the conffiles stay) and
//! `dpkg -P` purges it.
//!
//! It installs into /usr/bin, /etc and /lib/systemd, so it runs as root (as CI does) and
//! refuses to start while a `tapbus` package is installed (it would remove it). The other
//! tests never take a `tapbus-*` binary from `PATH`. Whatever the test changed on the
//! machine is undone when it ends, failed or not ([`Machine`]): the package purged, the
//! user `tapbus` and the group `dnstap` deleted if the package created them, unbound's
//! user taken out of `dnstap`, `/run/tapbus` removed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tapbus_testsupport::jetstream::{stream_info_messages, stream_messages};
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_ports, need, wait_until};

use crate::{read, root};

const PACKAGE: &str = "tapbus";
/// The binaries and their installed configurations.
const BINARIES: [&str; 7] = [
    "broker",
    "aggregate",
    "reduce",
    "loki",
    "mimir",
    "tail",
    "top",
];
/// The consumers `tapbus@.service` runs (docs/deploy.md).
const INSTANCES: [&str; 4] = ["aggregate", "reduce", "loki", "mimir"];

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let o = run(cmd);
    assert!(o.status.success(), "{what}: {}\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `dpkg-query`'s status of the package: "installed", "config-files", "not-installed".
fn package_status() -> String {
    let o = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", PACKAGE]));
    if o.status.success() {
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    } else {
        "not-installed".to_string()
    }
}

/// A `getent` entry's fields, if it exists.
fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let o = run(Command::new("getent").args([db, key]));
    o.status.success().then(|| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .split(':')
            .map(str::to_string)
            .collect()
    })
}

fn id_of(db: &str, key: &str) -> u32 {
    getent(db, key)
        .and_then(|f| f.get(2).and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no {db} entry {key}"))
}

fn group_members(group: &str) -> Vec<String> {
    getent("group", group)
        .and_then(|f| f.get(3).cloned())
        .map(|m| {
            m.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `Uid:`/`Gid:`/`Groups:` of a running process (the real ids, the first field).
fn proc_ids(pid: u32) -> (u32, u32, Vec<u32>) {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    (field("Uid:")[0], field("Gid:")[0], field("Groups:"))
}

/// What the test changed on the machine, undone on drop (also when the test fails).
struct Machine {
    user_existed: bool,
    group_existed: bool,
    unbound_added: bool,
    runtime_dir: Option<PathBuf>,
}

impl Drop for Machine {
    fn drop(&mut self) {
        if package_status() != "not-installed" {
            let o = run(Command::new("dpkg").args(["-P", PACKAGE]));
            if !o.status.success() {
                eprintln!("cleanup: dpkg -P {PACKAGE}: {}", text(&o));
            }
        }
        if self.unbound_added {
            let _ = run(Command::new("gpasswd").args(["-d", "unbound", "dnstap"]));
        }
        if let Some(d) = &self.runtime_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        if !self.user_existed && getent("passwd", "tapbus").is_some() {
            let _ = run(Command::new("deluser").args(["--system", "--quiet", "tapbus"]));
        }
        // deluser leaves the user's own group when other members are in it; it is ours.
        if !self.user_existed && getent("group", "tapbus").is_some() {
            let _ = run(Command::new("delgroup").args(["--system", "--quiet", "tapbus"]));
        }
        if !self.group_existed && getent("group", "dnstap").is_some() {
            let _ = run(Command::new("delgroup").args(["--system", "--quiet", "dnstap"]));
        }
    }
}

/// The `Key=` values of a unit file, in order (a key may repeat).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    let v = unit_values(unit, key);
    assert_eq!(v.len(), 1, "{key}= in the broker unit: {v:?}");
    v[0].clone()
}

/// How systemd runs a command of a unit with `User=`, `Group=` and
/// `SupplementaryGroups=`: the real and effective ids of the user and group, the
/// supplementary groups initgroups(User, Group) gives plus `SupplementaryGroups=`, no
/// capabilities (`CapabilityBoundingSet=` empty), no new privileges, the unit's umask, and
/// a clean environment with the user's variables and `RUNTIME_DIRECTORY`.
struct AsUnit {
    user: String,
    gid: u32,
    groups: Vec<u32>,
    umask: String,
    env: Vec<(String, String)>,
}

impl AsUnit {
    fn command(&self, argv: &[String]) -> Command {
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        let mut c = Command::new(need("setpriv"));
        c.arg(format!("--reuid={}", self.user))
            .arg(format!("--regid={}", self.gid))
            .arg(format!("--groups={}", groups.join(",")))
            .args([
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
                "sh",
                "-c",
            ])
            .arg(format!("umask {}; exec \"$@\"", self.umask))
            .arg("sh")
            .args(argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

#[test]
fn debian_package_installs_runs_and_removes() {
    let uid = ok(Command::new("id").arg("-u")).trim().to_string();
    assert_eq!(
        uid, "0",
        "this test installs the Debian package with dpkg and runs its broker as the user \
         tapbus: run it as root (CI does)"
    );
    for tool in [
        "dpkg",
        "dpkg-deb",
        "systemd-analyze",
        "setpriv",
        "curl",
        "adduser",
        "gpasswd",
        "unbound",
        "dig",
        "python3",
    ] {
        need(tool);
    }
    let status = package_status();
    assert_eq!(
        status, "not-installed",
        "a {PACKAGE} package is on this machine ({status}); this test installs, removes and \
         purges the one it builds: purge the installed one first (dpkg -P {PACKAGE})"
    );
    assert!(
        getent("passwd", "unbound").is_some(),
        "Debian's unbound package creates the user unbound: reinstall unbound"
    );
    let run_dir = PathBuf::from("/run/tapbus");
    assert!(
        !run_dir.exists(),
        "{} exists: a tapbus broker runs on this machine",
        run_dir.display()
    );
    // Dropped last: the processes below are stopped before it purges.
    let mut machine = Machine {
        user_existed: getent("passwd", "tapbus").is_some(),
        group_existed: getent("group", "dnstap").is_some(),
        unbound_added: false,
        runtime_dir: None,
    };

    // --- the package builds
    let deb = build_package();
    let deb_name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(
        deb_name.starts_with("tapbus_") && deb_name.ends_with(".deb"),
        "{}",
        deb.display()
    );
    let size = std::fs::metadata(&deb).expect("deb").len();
    eprintln!("package: {} ({size} bytes)", deb.display());
    let fields = ok(Command::new("dpkg-deb").arg("-f").arg(&deb).args([
        "Package",
        "Depends",
        "Architecture",
    ]));
    assert!(fields.contains("Package: tapbus"), "{fields}");
    for dep in ["adduser", "curl", "libc6", "libssl3"] {
        assert!(fields.contains(dep), "Depends lacks {dep}: {fields}");
    }
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    for b in BINARIES {
        assert!(
            conffiles
                .lines()
                .any(|l| l.trim() == format!("/etc/tapbus/{b}.toml")),
            "/etc/tapbus/{b}.toml is not a conffile:\n{conffiles}"
        );
    }

    // --- dpkg -i
    ok(Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert_eq!(package_status(), "installed");
    for b in BINARIES {
        let p = PathBuf::from(format!("/usr/bin/tapbus-{b}"));
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(m.permissions().mode() & 0o777, 0o755, "{}", p.display());
    }
    let tapbus_uid = id_of("passwd", "tapbus");
    let tapbus_gid = id_of("group", "tapbus");
    let dnstap_gid = id_of("group", "dnstap");
    assert!(
        group_members("dnstap").contains(&"tapbus".to_string()),
        "tapbus is not in dnstap: {:?}",
        getent("group", "dnstap")
    );
    let passwd = getent("passwd", "tapbus").expect("tapbus");
    assert!(
        tapbus_uid < 1000 && passwd[6].ends_with("nologin"),
        "tapbus is no system user: {passwd:?}"
    );
    for b in BINARIES {
        let m = std::fs::metadata(format!("/etc/tapbus/{b}.toml")).expect("conffile");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (0, tapbus_gid, 0o640),
            "/etc/tapbus/{b}.toml: root:tapbus 0640"
        );
    }

    // --- systemd-analyze verify, every unit (the template through its instances)
    verify_units();

    // --- every installed binary with its installed configuration, as the user tapbus
    for b in BINARIES {
        let out = ok(Command::new(need("setpriv"))
            .args([
                "--reuid=tapbus",
                "--regid=tapbus",
                "--init-groups",
                "--",
                &format!("/usr/bin/tapbus-{b}"),
                "--config",
                &format!("/etc/tapbus/{b}.toml"),
                "--check",
            ])
            .env_remove("TAPBUS_CONFIG"));
        assert!(
            out.contains(&format!("tapbus-{b}: configuration ok")),
            "tapbus-{b} --check: {out}"
        );
    }

    // --- the broker as tapbus-broker.service runs it
    let unit = read(Path::new("/lib/systemd/system/tapbus-broker.service"));
    let user = unit_value(&unit, "User");
    let group = unit_value(&unit, "Group");
    assert_eq!((user.as_str(), group.as_str()), ("tapbus", "dnstap"));
    let gid = id_of("group", &group);
    // initgroups(User, Group): Group and the groups listing the user, then
    // SupplementaryGroups=.
    let mut groups = vec![gid];
    for line in ok(Command::new("getent").arg("group")).lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() == 4 && f[3].split(',').any(|m| m == user) {
            groups.push(f[2].parse().expect("gid"));
        }
    }
    for g in unit_values(&unit, "SupplementaryGroups")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
    {
        groups.push(id_of("group", &g));
    }
    groups.sort_unstable();
    groups.dedup();
    let runtime = run_dir.clone();
    assert_eq!(
        unit_value(&unit, "RuntimeDirectory"),
        "tapbus",
        "the socket directory"
    );
    let mode = u32::from_str_radix(&unit_value(&unit, "RuntimeDirectoryMode"), 8).expect("mode");
    // What systemd does before ExecStart: the directory, owned by User:Group.
    std::fs::create_dir(&runtime).expect("create /run/tapbus");
    machine.runtime_dir = Some(runtime.clone());
    std::os::unix::fs::chown(&runtime, Some(tapbus_uid), Some(gid)).expect("chown /run/tapbus");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(mode)).expect("chmod");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let js = dir.path().join("js");
    let nats = Nats::start_jetstream(&js);
    let [metrics, dns_port] = free_ports(2)[..] else {
        unreachable!()
    };
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let as_unit = AsUnit {
        user: user.clone(),
        gid,
        groups,
        umask: unit_value(&unit, "UMask"),
        env: vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into(),
            ),
            ("HOME".into(), "/nonexistent".into()),
            ("USER".into(), user.clone()),
            ("LOGNAME".into(), user.clone()),
            ("RUNTIME_DIRECTORY".into(), runtime.display().to_string()),
            // What a drop-in's Environment= would set: this test's NATS and a free port
            // for /metrics and /health.
            ("TAPBUS_OUTPUTS__NATS__URL".into(), nats.url().to_string()),
            ("TAPBUS_METRICS_LISTEN".into(), metrics_addr.clone()),
            ("WAIT_HEALTH_TIMEOUT".into(), "30".into()),
        ],
    };
    let exec_start: Vec<String> = unit_value(&unit, "ExecStart")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(exec_start[0], "/usr/bin/tapbus-broker", "{exec_start:?}");
    let broker_log = dir.path().join("broker.log");
    let mut broker = Proc::spawn(
        as_unit
            .command(&exec_start)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&broker_log).expect("broker log")),
    );
    // ExecStartPost: /health within the script's own bound.
    let post: Vec<String> = unit_value(&unit, "ExecStartPost")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let t0 = Instant::now();
    let o = run(&mut as_unit.command(&post));
    assert!(
        o.status.success() && t0.elapsed() < Duration::from_secs(40),
        "ExecStartPost {post:?}: {} after {:?}\n{}\n--- broker\n{}",
        o.status,
        t0.elapsed(),
        text(&o),
        read(&broker_log)
    );
    let (b_uid, b_gid, b_groups) = proc_ids(broker.pid());
    assert_eq!(
        (b_uid, b_gid),
        (tapbus_uid, dnstap_gid),
        "the broker runs as tapbus:dnstap"
    );
    assert!(b_groups.contains(&tapbus_gid), "{b_groups:?}");
    let sock = runtime.join("dnstap.sock");
    let m = std::fs::metadata(&sock)
        .unwrap_or_else(|e| panic!("{}: {e}\n--- broker\n{}", sock.display(), read(&broker_log)));
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o777),
        (tapbus_uid, dnstap_gid, 0o660),
        "the socket: tapbus:dnstap 0660"
    );

    // Without the group, the user unbound cannot reach the socket: the group is what lets
    // unbound in below.
    assert!(
        !group_members("dnstap").contains(&"unbound".to_string()),
        "unbound is already in dnstap"
    );
    let probe = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])";
    let o = run(Command::new(need("setpriv"))
        .args(["--reuid=unbound", "--regid=unbound", "--init-groups", "--"])
        .arg(need("python3"))
        .args(["-c", probe])
        .arg(&sock)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin"));
    assert!(
        !o.status.success() && text(&o).contains("PermissionError"),
        "the user unbound outside dnstap connected to {}: {}",
        sock.display(),
        text(&o)
    );
    // What docs/deploy.md tells operators: adduser unbound dnstap.
    ok(Command::new("adduser").args(["--quiet", "unbound", "dnstap"]));
    machine.unbound_added = true;

    // Debian's unbound, started as root like its own service; it drops to the user
    // unbound (initgroups: dnstap) and then writes dnstap into the socket. It answers from
    // local-data only and its only upstream is a dead loopback port: nothing leaves
    // 127.0.0.1.
    let conf = dir.path().join("unbound.conf");
    std::fs::write(
        &conf,
        tapbus_testsupport::unbound_conf(dir.path(), dns_port, &sock, "unbound", "unbound-pkg"),
    )
    .expect("write unbound.conf");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let unbound_log = dir.path().join("unbound.log");
    let mut unbound = Proc::spawn(
        Command::new(need("unbound"))
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&unbound_log).expect("unbound log")),
    );
    let logs = || {
        format!(
            "--- broker\n{}\n--- unbound\n{}",
            read(&broker_log),
            read(&unbound_log)
        )
    };
    let connections = || {
        tapbus_testsupport::prom::sum(
            &tapbus_testsupport::prom::scrape(&metrics_addr),
            "tapbus_connections_active",
            &[],
        )
    };
    let t0 = Instant::now();
    while connections() < 1.0 {
        assert!(
            unbound.is_running(),
            "unbound exited: {:?}\n{}",
            unbound.try_wait(),
            logs()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "unbound did not connect to {}\n{}",
            sock.display(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let unbound_uid = id_of("passwd", "unbound");
    let (u_uid, _, u_groups) = proc_ids(unbound.pid());
    assert_eq!(u_uid, unbound_uid, "unbound runs as its own user");
    assert!(
        u_groups.contains(&dnstap_gid),
        "unbound's groups lack dnstap: {u_groups:?}"
    );

    let queries = [
        ("www.tapbus.test", "A", "NOERROR"),
        ("mail.tapbus.test", "MX", "NOERROR"),
        ("nx.tapbus.test", "A", "NXDOMAIN"),
    ];
    for (name, qtype, rcode) in queries {
        let out = ok(Command::new(need("dig"))
            .args(["@127.0.0.1", "-p", &dns_port.to_string()])
            .args(["+tries=1", "+time=2", name, qtype]));
        assert!(
            out.contains(&format!("status: {rcode}")),
            "{name} {qtype}: {out}"
        );
    }
    // A query and a response per lookup, stored in the stream the packaged configuration
    // names (JetStream: the packaged consumers read it).
    wait_until("the events in JetStream", Duration::from_secs(30), || {
        stream_info_messages(nats.url(), "DNSTAP").unwrap_or(0) >= 2 * queries.len() as u64
    });
    let stored = stream_messages(nats.url(), "DNSTAP");
    assert_eq!(stored.len(), 2 * queries.len(), "{}", logs());
    let events: Vec<(String, Value)> = stored
        .iter()
        .map(|(s, b)| (s.clone(), serde_json::from_slice(b).expect("JSON event")))
        .collect();
    for (name, _, rcode) in queries {
        let resp = events
            .iter()
            .find(|(s, e)| s == "dnstap.unbound-pkg.client_response" && e["dns"]["qname"] == name)
            .unwrap_or_else(|| panic!("no response for {name}: {events:?}"));
        assert_eq!(resp.1["dns"]["rcode"], rcode, "{resp:?}");
        assert_eq!(resp.1["dnstap"]["identity"], "unbound-pkg");
    }

    // Stop as systemd does: SIGTERM, TimeoutStopSec; the broker exits cleanly.
    drop(unbound);
    let st = broker
        .terminate_within(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the broker did not stop on SIGTERM\n{}", logs()));
    assert!(st.success(), "broker exit {st}\n{}", logs());
    // RuntimeDirectory= is removed when the service stops.
    std::fs::remove_dir_all(&runtime).expect("remove /run/tapbus");
    machine.runtime_dir = None;

    // --- dpkg -r: everything but the conffiles goes
    ok(Command::new("dpkg")
        .args(["-r", PACKAGE])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert_eq!(package_status(), "config-files");
    for gone in BINARIES
        .iter()
        .map(|b| format!("/usr/bin/tapbus-{b}"))
        .chain([
            "/lib/systemd/system/tapbus-broker.service".to_string(),
            "/lib/systemd/system/tapbus@.service".to_string(),
            "/usr/libexec/tapbus".to_string(),
            "/usr/share/doc/tapbus".to_string(),
        ])
    {
        assert!(!Path::new(&gone).exists(), "{gone} is left after dpkg -r");
    }
    for b in BINARIES {
        assert!(
            Path::new(&format!("/etc/tapbus/{b}.toml")).is_file(),
            "dpkg -r removed the conffile /etc/tapbus/{b}.toml"
        );
    }

    // --- dpkg -P: the conffiles go too
    ok(Command::new("dpkg")
        .args(["-P", PACKAGE])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert_eq!(package_status(), "not-installed");
    assert!(
        !Path::new("/etc/tapbus").exists(),
        "/etc/tapbus is left after dpkg -P"
    );
    drop(nats);
    let (user_existed, group_existed) = (machine.user_existed, machine.group_existed);
    drop(machine);
    assert_eq!(
        getent("passwd", "tapbus").is_some(),
        user_existed,
        "the user tapbus is not as the test found it"
    );
    assert_eq!(
        getent("group", "dnstap").is_some(),
        group_existed,
        "the group dnstap is not as the test found it"
    );
}

/// `scripts/package.sh` on the dev profile's binaries of this test's own target
/// directory, as [`crate::binaries`] built them for every test of this crate (a build of
/// its own, for another set of packages, would be a second build of the workspace); the
/// package's path (the script's last line).
fn build_package() -> PathBuf {
    let built = crate::binaries();
    for b in BINARIES {
        assert!(
            built.contains_key(&format!("tapbus-{b}")),
            "tapbus-{b} is not among the binaries the deploy tests build: {built:?}"
        );
    }
    // target/debug/tapbus-broker -> target
    let target_dir = built["tapbus-broker"]
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let mut cmd = Command::new(root().join("scripts/package.sh"));
    // The variables cargo sets for this test are build-script inputs: inherited, they
    // would make every build dirty (see `crate::binaries`).
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            cmd.env_remove(k);
        }
    }
    cmd.env("CARGO_TARGET_DIR", &target_dir)
        .env("PROFILE", "dev")
        .env("NO_BUILD", "1")
        .current_dir(root());
    let out = ok(&mut cmd);
    let deb = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(
        deb.is_file() && deb.starts_with(target_dir.join("debian")),
        "scripts/package.sh printed {out:?}, not a package in {}/debian",
        target_dir.display()
    );
    deb
}

/// `systemd-analyze verify` on the installed units: tapbus-broker.service and the template
/// through each consumer instance. Any complaint that names a tapbus unit fails.
fn verify_units() {
    let mut units = vec!["tapbus-broker.service".to_string()];
    units.extend(INSTANCES.iter().map(|i| format!("tapbus@{i}.service")));
    let o = run(Command::new(need("systemd-analyze"))
        .arg("verify")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice"));
    let all = text(&o);
    let ours: Vec<&str> = all.lines().filter(|l| l.contains("tapbus")).collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify {units:?}: {}\n{all}",
        o.status
    );
}
