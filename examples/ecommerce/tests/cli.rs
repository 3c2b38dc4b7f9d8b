//! The `ecommerce` command line, run as the binary: every command's
//! `--help`, the load flags `load` and `drill` share, typo suggestions,
//! the old flag spellings, and errors that name the flag, the variable or
//! the file key that is wrong.
//!
//! Nothing here starts a system: a load or drill is pointed at a closed
//! port (`--url http://127.0.0.1:1`), so it prints the options it parsed
//! and fails at its first request.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The load flags `load` and `drill` share.
const LOAD_FLAGS: [&str; 6] = [
    "--concurrency",
    "--rps",
    "--duration",
    "--users",
    "--url",
    "--ops-token",
];

/// A URL where nothing listens.
const CLOSED: &str = "http://127.0.0.1:1";

/// Runs the binary with `args`, no `ECOMMERCE_*` variable but `env`.
fn ecommerce(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ecommerce"));
    command.args(args).env("RUST_LOG", "error");
    for (key, _) in std::env::vars() {
        if key.starts_with("ECOMMERCE_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The help line of `flag` in `help` (its description, blanks collapsed).
fn flag_line(help: &str, flag: &str) -> Option<String> {
    help.lines()
        .find(|line| line.trim_start().starts_with(&format!("{flag} ")))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn every_command_has_help() {
    let top = ecommerce(&["--help"], &[]);
    assert!(top.status.success(), "{}", stderr(&top));
    for command in ["run", "serve", "serve-local", "load", "drill", "token"] {
        assert!(
            stdout(&top).contains(&format!("\n  {command} ")),
            "ecommerce --help does not list {command}:\n{}",
            stdout(&top)
        );
        let help = ecommerce(&[command, "--help"], &[]);
        assert!(help.status.success(), "{command}: {}", stderr(&help));
        assert!(
            stdout(&help).contains(&format!("Usage: ecommerce {command}")),
            "{command}:\n{}",
            stdout(&help)
        );
    }
    // `help COMMAND` says the same as `COMMAND --help`.
    let by_help = ecommerce(&["help", "drill"], &[]);
    assert_eq!(
        stdout(&by_help),
        stdout(&ecommerce(&["drill", "--help"], &[]))
    );
}

#[test]
fn load_and_drill_list_the_same_load_flags() {
    let load = stdout(&ecommerce(&["load", "--help"], &[]));
    let drill = stdout(&ecommerce(&["drill", "--help"], &[]));
    for flag in LOAD_FLAGS {
        let in_load = flag_line(&load, flag);
        assert!(in_load.is_some(), "load --help lacks {flag}:\n{load}");
        assert_eq!(
            in_load,
            flag_line(&drill, flag),
            "{flag} differs between load and drill"
        );
    }
    assert!(
        flag_line(&load, "--duration").is_some_and(|l| l.contains("[default: 10s]")),
        "{load}"
    );
    // The distributed drills' own flags are the drill's only.
    for flag in ["--database-url", "--nats-url"] {
        assert!(flag_line(&drill, flag).is_some(), "{drill}");
        assert!(flag_line(&load, flag).is_none(), "{load}");
    }
    // Every drill is listed by name.
    for name in [
        "payment-outage",
        "late-restart",
        "kill-orders",
        "replica-kill",
    ] {
        assert!(drill.contains(name), "{name} missing:\n{drill}");
    }
}

#[test]
fn serve_help_lists_every_setting_variable() {
    let help = stdout(&ecommerce(&["serve", "--help"], &[]));
    for var in ecommerce::config::ENV_VARS {
        let key = ecommerce::config::key_of_var(var).expect("every listed variable sets a key");
        let line = flag_line(&help, var).unwrap_or_else(|| panic!("{var} missing:\n{help}"));
        assert_eq!(line, format!("{var} {key}"));
    }
}

#[test]
fn typos_get_a_suggestion() {
    for (args, tip) in [
        (&["lod"][..], "a similar subcommand exists: 'load'"),
        (
            &["serve-locl"][..],
            // (next to 'serve')
            "similar subcommands exist: 'serve', 'serve-local'",
        ),
        (
            &["load", "--concurency", "4"][..],
            "a similar argument exists: '--concurrency'",
        ),
        (
            &["drill", "payment-outage", "--duraton", "2s"][..],
            "a similar argument exists: '--duration'",
        ),
        (
            &["drill", "paymnt-outage"][..],
            "a similar value exists: 'payment-outage'",
        ),
        (
            &["serve", "--service", "order"][..],
            "a similar value exists: 'orders'",
        ),
        (
            &["token", "--signing-key", "k.pem"][..],
            "a similar argument exists: '--signing-key-file'",
        ),
    ] {
        let output = ecommerce(args, &[]);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(tip),
            "{args:?}:\n{}",
            stderr(&output)
        );
    }
}

#[test]
fn the_old_load_flag_spellings_still_parse() {
    // The last of a repeated flag wins, as with the hand-written parser.
    let output = ecommerce(
        &[
            "load",
            "--concurrency",
            "2",
            "--concurrency",
            "3",
            "--duration",
            "1m30s",
            "--users",
            "1",
            "--url",
            CLOSED,
        ],
        &[],
    );
    assert_eq!(
        stdout(&output).lines().next(),
        Some(format!("Load: concurrency 3 for 90s against {CLOSED}").as_str()),
        "{}",
        stderr(&output)
    );
    assert_eq!(output.status.code(), Some(1), "nothing listens there");
    let output = ecommerce(
        &["load", "--rps", "7", "--duration", "3", "--url", CLOSED],
        &[],
    );
    assert!(
        stdout(&output).starts_with(&format!("Load: 7 orders/s for 3s against {CLOSED}")),
        "{}",
        stdout(&output)
    );
    // The same flags drive a drill.
    let output = ecommerce(
        &[
            "drill",
            "payment-outage",
            "--rps",
            "7",
            "--duration",
            "250ms",
            "--url",
            CLOSED,
            "--ops-token",
            "t",
        ],
        &[],
    );
    assert!(
        stdout(&output).starts_with(&format!(
            "Drill payment-outage: fault from 25% to 75% of 250ms under load against {CLOSED}"
        )),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    // --concurrency and --rps are one choice.
    let output = ecommerce(&["load", "--rps", "7", "--concurrency", "3"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot be used with"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_duration_names_its_flag_or_variable() {
    let output = ecommerce(&["load", "--duration", "soon"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("invalid value 'soon' for '--duration <D>'"),
        "{}",
        stderr(&output)
    );
    let dir = TempDir::new("bad-duration");
    let data = dir.0.join("data");
    let output = ecommerce(
        &["serve-local", "--data-dir", data.to_str().unwrap()],
        &[("ECOMMERCE_SAGA_DEADLINE", "soon")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("error: ECOMMERCE_SAGA_DEADLINE: \"soon\" is not a duration"),
        "{}",
        stderr(&output)
    );
    let output = ecommerce(
        &["serve", "--service", "gateway"],
        &[("ECOMMERCE_DRAIN", "2 fortnights")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("error: ECOMMERCE_DRAIN: "),
        "{}",
        stderr(&output)
    );
    let file = dir.0.join("ecommerce.toml");
    std::fs::write(&file, "saga_deadline = \"later\"\n").unwrap();
    let output = ecommerce(
        &[
            "serve",
            "--service",
            "gateway",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with(&format!(
            "error: parsing {}: saga_deadline: \"later\" is not a duration",
            file.display()
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn command_specific_mistakes_are_reported() {
    let output = ecommerce(&["serve-local"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--data-dir <DIR>"),
        "{}",
        stderr(&output)
    );
    let output = ecommerce(&["drill", "kill-orders", "--url", CLOSED], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("drill kill-orders starts its own system: no --url"),
        "{}",
        stderr(&output)
    );
    let output = ecommerce(&["drill", "payment-outage", "--url", CLOSED], &[]);
    assert!(
        stderr(&output).contains("--url needs --ops-token"),
        "{}",
        stderr(&output)
    );
    let output = ecommerce(&["token"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--signing-key-file"),
        "{}",
        stderr(&output)
    );
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ecommerce-cli-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
