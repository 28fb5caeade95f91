//! Settings of every Ferry binary come from flags, each with an environment
//! variable (clap), and a secret may instead come from a file: for each
//! variable in [`SECRET_VARIABLES`], `NAME_FILE` names a file holding the
//! value (Kubernetes and Compose secrets are mounted files; a value in the
//! environment shows in `/proc/PID/environ` and in `docker inspect`).
//!
//! Setting both `NAME` and `NAME_FILE`, an unreadable file or an empty one
//! stops the binary at start with one line naming the variable.

use std::ffi::OsString;

use clap::{Arg, Command};

/// The variables that may be given as `NAME_FILE` instead.
pub const SECRET_VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "FERRY_REPORTS_DATABASE_URL",
    "FERRY_SMTP_URL",
    "FERRY_REDIS_URL",
    "FERRY_AGENT_TOKEN",
    "FERRY_CLIENT_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// A secret setting: `name` from the environment, or read from the file
/// `name_FILE` names (one trailing line break dropped). `None` when neither
/// is set.
pub fn secret(name: &str) -> Result<Option<String>, String> {
    secret_from(name, |var| std::env::var_os(var))
}

fn secret_from(name: &str, env: impl Fn(&str) -> Option<OsString>) -> Result<Option<String>, String> {
    let file_var = format!("{name}_FILE");
    match (env(name), env(&file_var)) {
        (Some(_), Some(_)) => Err(format!("{name} and {file_var} are both set: set one of them")),
        (Some(value), None) => value.into_string().map(Some).map_err(|_| format!("{name} is not valid UTF-8")),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let shown = path.to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{file_var}: cannot read {shown}: {e}"))?;
            let value = text.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&text);
            if value.trim().is_empty() {
                return Err(format!("{file_var}: {shown} is empty"));
            }
            Ok(Some(value.to_owned()))
        }
    }
}

/// Parses the command line like `P::parse()`, with secrets read from
/// `NAME_FILE` files where given. Exits with clap's message (or one line
/// naming the variable) on a missing or invalid setting.
pub fn parse<P: clap::Parser>() -> P {
    match try_parse_from(std::env::args_os(), |var| std::env::var_os(var)) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    }
}

fn try_parse_from<P: clap::Parser>(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString> + Copy,
) -> Result<P, clap::Error> {
    let mut files = Vec::new();
    for name in SECRET_VARIABLES {
        if env(&format!("{name}_FILE")).is_some() {
            let value = secret_from(name, env)
                .map_err(|message| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{message}\n")))?;
            files.extend(value.map(|v| (*name, v)));
        }
    }
    let command = with_file_secrets(P::command(), &files);
    let matches = command.try_get_matches_from(args)?;
    P::from_arg_matches(&matches)
}

/// Gives every argument read from a variable in `files` that file's value
/// as its default (hidden from `--help`), in the whole command tree.
fn with_file_secrets(command: Command, files: &[(&'static str, String)]) -> Command {
    if files.is_empty() {
        return command;
    }
    let command = command.mut_args(|arg: Arg| {
        let value = arg.get_env().and_then(|env| files.iter().find(|(name, _)| env == *name)).map(|(_, v)| v);
        match value {
            // clap wants a 'static default: a few bytes per secret, once per
            // process.
            Some(value) => arg.default_value(&*String::leak(value.clone())).hide_default_value(true).required(false),
            None => arg,
        }
    });
    command.mut_subcommands(|sub| with_file_secrets(sub, files))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::{Parser, Subcommand};

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        Serve {
            #[arg(long, env = "DATABASE_URL")]
            database_url: String,
            #[arg(long, env = "FERRY_SMTP_URL")]
            smtp_url: Option<String>,
        },
    }

    fn run(vars: &[(&str, &str)], args: &[&str]) -> Result<Cli, String> {
        let vars: HashMap<String, OsString> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
        let args = std::iter::once("ferry").chain(args.iter().copied()).map(OsString::from);
        try_parse_from::<Cli>(args, |name| vars.get(name).cloned()).map_err(|e| e.to_string())
    }

    fn database_url(cli: &Cli) -> &str {
        let Cmd::Serve { database_url, .. } = &cli.command;
        database_url
    }

    #[test]
    fn a_required_secret_comes_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, "postgres://u:p@db/ferry\n").unwrap();
        let cli = run(&[("DATABASE_URL_FILE", path.to_str().unwrap())], &["serve"]).unwrap();
        assert_eq!(database_url(&cli), "postgres://u:p@db/ferry");
        // The flag still wins over the file, as over the variable.
        let cli = run(&[("DATABASE_URL_FILE", path.to_str().unwrap())], &["serve", "--database-url", "postgres://x"])
            .unwrap();
        assert_eq!(database_url(&cli), "postgres://x");
    }

    #[test]
    fn without_a_file_a_required_setting_is_still_required() {
        let missing = run(&[], &["serve"]).unwrap_err();
        assert!(missing.contains("--database-url <DATABASE_URL>"), "{missing}");
    }

    #[test]
    fn mistakes_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let absent = dir.path().join("absent");
        let cases = [
            (vec![("DATABASE_URL", "postgres://a"), ("DATABASE_URL_FILE", empty.to_str().unwrap())], "both set"),
            (vec![("DATABASE_URL_FILE", empty.to_str().unwrap())], "is empty"),
            (vec![("FERRY_SMTP_URL_FILE", absent.to_str().unwrap())], "cannot read"),
        ];
        for (vars, expected) in cases {
            let error = run(&vars, &["serve", "--database-url", "postgres://flag"]).unwrap_err();
            let var = vars.last().unwrap().0;
            assert!(error.contains(var) && error.contains(expected), "{vars:?}: {error}");
            assert_eq!(error.trim_end().lines().count(), 1, "one line: {error}");
        }
    }

    #[test]
    fn a_secret_file_keeps_inner_whitespace_and_drops_one_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "smtp://u:p w@h\r\n").unwrap();
        let vars: HashMap<&str, OsString> = [("FERRY_SMTP_URL_FILE", path.clone().into_os_string())].into();
        let got = secret_from("FERRY_SMTP_URL", |n| vars.get(n).cloned()).unwrap();
        assert_eq!(got.as_deref(), Some("smtp://u:p w@h"));
        assert_eq!(secret_from("FERRY_SMTP_URL", |_| None).unwrap(), None);
    }
}

/// A secret setting's value (a URL with a password, a token): `Debug`
/// shows none of it, so settings structs print safely. Database URLs,
/// Redis and SMTP URLs are settings of this type.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}
