//! The deployment files name what exists: the Dockerfile's and the systemd unit's commands are
//! real subcommands, every variable they set is a real setting, the stop timeouts outlast the
//! shutdown grace; `keygate healthcheck` (the image's health check) tells up from down.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `keygate <args>`: whether it succeeded, and its stdout.
fn keygate(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The value of `Name=` in a unit (the last one when repeated).
fn directive<'a>(unit: &'a str, name: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix('='))
}

/// The variables a file sets or shows (`NAME=` at a line's start, commented or not, after
/// `ENV`/`Environment=`), all in upper case.
fn variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches('#').trim();
        let line = line
            .strip_prefix("Environment=")
            .or_else(|| line.strip_prefix("ENV "))
            .unwrap_or(line);
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.len() > 3
            && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            && name.contains('_')
        {
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn the_unit_and_the_image_run_real_commands_with_real_settings() {
    let unit = repo_file("deploy/keygate.service");
    let env_example = repo_file("deploy/keygate.env.example");
    let dockerfile = repo_file("Dockerfile");
    let compose = repo_file("deploy/compose.yaml");

    // The unit's command, with --help, is accepted by the binary.
    let exec = directive(&unit, "ExecStart").expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert!(words.next().unwrap().ends_with("/keygate"));
    let mut args: Vec<&str> = words.collect();
    assert_eq!(args, ["serve"]);
    args.push("--help");
    assert!(keygate(&args).0, "{exec}");

    // The image's entrypoint and command, and its health check's.
    // The exec-form list of the last line starting with `instruction` (a HEALTHCHECK's CMD
    // is on the line after HEALTHCHECK, before the image's own CMD).
    let json_list = |instruction: &str| -> Vec<String> {
        let line = dockerfile
            .lines()
            .map(str::trim)
            .rev()
            .find(|l| l.starts_with(instruction))
            .unwrap_or_else(|| panic!("no {instruction}"));
        let list = &line[line.find('[').unwrap()..];
        serde_json::from_str(list).unwrap()
    };
    assert_eq!(json_list("ENTRYPOINT"), ["/usr/local/bin/keygate"]);
    assert_eq!(json_list("CMD"), ["serve"]);
    assert!(keygate(&["serve", "--help"]).0);
    let health = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .and_then(|rest| rest.split("CMD").nth(1))
        .and_then(|rest| rest.lines().next())
        .map(|list| serde_json::from_str::<Vec<String>>(list.trim()).unwrap())
        .expect("HEALTHCHECK ... CMD [...]");
    assert_eq!(health, ["/usr/local/bin/keygate", "healthcheck"]);
    assert!(keygate(&["healthcheck", "--help"]).0);
    let (ok, version) = keygate(&["--version"]);
    assert!(ok);
    assert_eq!(
        version.trim(),
        format!("keygate {}", env!("CARGO_PKG_VERSION"))
    );

    // Every variable named is a setting (`keygate --help` lists their env names) and is
    // documented in .env.example.
    let (_, help) = keygate(&["serve", "--help"]);
    let documented = repo_file(".env.example");
    assert!(variables(&env_example).contains(&"KEYGATE_METRICS_LISTEN".to_string()));
    assert!(variables(&dockerfile).contains(&"KEYGATE_LOG_FORMAT".to_string()));
    assert!(variables(&unit).contains(&"DATABASE_URL".to_string()));
    for file in [&unit, &env_example, &dockerfile, &compose] {
        for name in variables(file) {
            let known = help.contains(&format!("env: {name}="))
                || help.contains(&format!("env: {name}]"))
                || name == "RUST_LOG";
            assert!(known, "{name} is not a keygate setting");
            assert!(
                documented.contains(&format!("{name}=")),
                "{name} is not in .env.example"
            );
        }
    }

    // The image listens where it says, outside the container, on the port it exposes; its
    // database is in its volume; it does not run as root.
    assert!(dockerfile.contains("KEYGATE_LISTEN=0.0.0.0:8000"));
    assert!(dockerfile.contains("EXPOSE 8000"));
    assert!(dockerfile.contains("DATABASE_URL=sqlite:///data/keygate.db"));
    assert!(dockerfile.contains("VOLUME [\"/data\"]"));
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "{user}"
    );

    // The unit keeps its database in its state directory, which is all it may write.
    assert_eq!(directive(&unit, "StateDirectory"), Some("keygate"));
    assert_eq!(directive(&unit, "ReadWritePaths"), Some("/var/lib/keygate"));
    assert_eq!(
        directive(&unit, "Environment"),
        Some("DATABASE_URL=sqlite:///var/lib/keygate/keygate.db")
    );
    assert_eq!(
        directive(&unit, "EnvironmentFile"),
        Some("/etc/keygate/keygate.env")
    );
    for (name, value) in [
        ("User", "keygate"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(directive(&unit, name), Some(value), "{name}");
    }

    // Stops wait longer than the drain.
    let grace = env_example
        .lines()
        .find_map(|l| l.strip_prefix("KEYGATE_SHUTDOWN_GRACE="))
        .map(|v| keygate::config::parse_duration(v).unwrap())
        .unwrap();
    let stop =
        keygate::config::parse_duration(directive(&unit, "TimeoutStopSec").unwrap()).unwrap();
    assert!(
        stop > grace + Duration::from_secs(5),
        "{stop:?} vs {grace:?}"
    );
    let compose_stop = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("stop_grace_period: "))
        .map(|v| keygate::config::parse_duration(v).unwrap())
        .unwrap();
    assert!(compose_stop > grace, "{compose_stop:?}");
    assert!(dockerfile.contains("--stop-timeout 40"));
}

#[tokio::test]
async fn healthcheck_exits_zero_only_when_keygate_answers() {
    let app = spawn_app().await;
    let listen = app.base.trim_start_matches("http://").to_string();
    let check = |listen: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .arg("healthcheck")
                .env("KEYGATE_LISTEN", listen)
                .env_remove("RUST_LOG")
                .output()
                .unwrap()
        })
    };
    let up = check(listen).await.unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stderr).contains("200 OK"));
    let down = check(format!("127.0.0.1:{}", free_port())).await.unwrap();
    assert!(!down.status.success());
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(
        said.contains("cannot connect") && said.contains("KEYGATE_LISTEN"),
        "{said}"
    );
}
