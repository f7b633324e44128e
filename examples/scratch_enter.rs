#![allow(clippy::unwrap_used)]
use porthole::{container, enter, runtime, supervise};
use std::ffi::CString;
fn main() {
    let roots = vec![std::path::PathBuf::from("/run/runc")];
    let all =
        runtime::running_instances(&roots, "io.porthole.service", "io.porthole.instance").unwrap();
    println!("{all:?}");
    let inst = &all[0];
    let p = enter::pin(inst.init_pid, inst.init_start).unwrap();
    println!("ns_flags {:x}", p.ns_flags);
    let creds = container::parse_status(&p.read_proc("status").unwrap()).unwrap();
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dirs = container::cgroup_dirs(&p.read_proc("cgroup").unwrap(), &mi);
    println!("{dirs:?}");
    let cg = enter::open_cgroups(dirs).unwrap();
    let tty = std::env::args().nth(1).as_deref() == Some("tty");
    let cmd = std::env::args()
        .nth(2)
        .unwrap_or("id; hostname; cat /proc/self/cgroup; ls -l /proc/self/fd; ps".into());
    let plan = enter::Plan {
        program: CString::new("/bin/sh").unwrap(),
        argv: vec![
            CString::new("sh").unwrap(),
            CString::new("-c").unwrap(),
            CString::new(cmd).unwrap(),
        ],
        env: vec![
            CString::new("PATH=/bin").unwrap(),
            CString::new("HOME=/").unwrap(),
        ],
        uid: 0,
        gid: 0,
        groups: vec![],
        creds,
        home: CString::new("/").unwrap(),
        pty: if tty {
            Some(enter::WinSize {
                rows: 30,
                cols: 100,
            })
        } else {
            None
        },
        cgroups: cg,
    };
    let s = enter::spawn(&p, &plan).unwrap();
    let out = supervise::run(s, &p.pidfd);
    eprintln!("{out:?}");
}
