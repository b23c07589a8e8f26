//! libpq's password file (`~/.pgpass`, `PGPASSFILE`): where it is, when it counts, which line matches.
//!
//! The rules are libpq's (see "The Password File" in PostgreSQL's documentation), so that an
//! operator's existing file works unchanged: lines `hostname:port:database:username:password`,
//! `*` matches anything in the first four fields, `\` escapes `:` and `\`, the first matching
//! line wins, and a file readable by group or others is ignored.

use std::path::{Path, PathBuf};

/// The socket directory libpq calls `localhost` in the password file (Debian's default).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// What a connection is matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// A host name, an address, or a Unix socket directory.
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password file libpq would read: `PGPASSFILE`, else `~/.pgpass`.
pub fn location(pgpassfile: Option<&str>, home: Option<&Path>) -> Option<PathBuf> {
    match pgpassfile {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => home.map(|h| h.join(".pgpass")),
    }
}

/// Whether libpq would read a file of this mode: not readable or writable by group or others.
pub fn mode_is_private(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// The password of the first line of `text` that matches `target`.
pub fn lookup(text: &str, target: &Target<'_>) -> Option<String> {
    // libpq matches the default socket directory (and no host at all) as `localhost`.
    let host = if target.host.is_empty() || target.host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        target.host
    };
    let port = target.port.to_string();
    let wanted = [host, port.as_str(), target.database, target.user];
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want);
            // The password is the rest of the line, colons and all once unescaped.
            matches.then(|| fields[4..].join(":"))
        })
}

/// The fields of one line, with `\:` and `\\` unescaped.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().unwrap().push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: Target<'static> = Target {
        host: "db.internal",
        port: 5432,
        database: "litellm",
        user: "caretaker",
    };

    #[test]
    fn lines_match_as_libpq_matches_them() {
        let socket = Target {
            host: DEFAULT_SOCKET_DIR,
            ..DB
        };
        let other_socket = Target {
            host: "/tmp/pg",
            ..DB
        };
        let cases: &[(&str, &Target<'_>, Option<&str>)] = &[
            (
                "db.internal:5432:litellm:caretaker:s3cret",
                &DB,
                Some("s3cret"),
            ),
            ("*:*:*:*:any", &DB, Some("any")),
            ("db.internal:5433:litellm:caretaker:x", &DB, None),
            ("db.internal:5432:other:caretaker:x", &DB, None),
            ("db.internal:5432:litellm:someone:x", &DB, None),
            // First match wins.
            ("*:*:litellm:*:first\n*:*:*:*:second", &DB, Some("first")),
            // Comments and blank lines are skipped; CRLF is read as LF.
            ("# *:*:*:*:no\n\n*:5432:*:*:yes\r\n", &DB, Some("yes")),
            // Escaped colons and backslashes, and a colon in the password.
            (
                r"db.internal:5432:litellm:caretaker:a\:b\\c",
                &DB,
                Some(r"a:b\c"),
            ),
            ("db.internal:5432:litellm:caretaker:a:b", &DB, Some("a:b")),
            // A line with too few fields is ignored.
            ("db.internal:5432:litellm", &DB, None),
            // The default socket directory is `localhost`; another one is its own path.
            (
                "localhost:5432:litellm:caretaker:sock",
                &socket,
                Some("sock"),
            ),
            ("localhost:5432:litellm:caretaker:sock", &other_socket, None),
            (
                "/tmp/pg:5432:litellm:caretaker:dir",
                &other_socket,
                Some("dir"),
            ),
        ];
        for (text, target, want) in cases {
            assert_eq!(
                lookup(text, target).as_deref(),
                *want,
                "{text:?} for {target:?}"
            );
        }
    }

    #[test]
    fn the_file_is_pgpassfile_else_home_and_must_be_private() {
        let home = Path::new("/home/op");
        assert_eq!(
            location(Some("/etc/pw"), Some(home)),
            Some(PathBuf::from("/etc/pw"))
        );
        assert_eq!(
            location(Some(""), Some(home)),
            Some(PathBuf::from("/home/op/.pgpass"))
        );
        assert_eq!(location(None, None), None);
        assert!(mode_is_private(0o600));
        assert!(mode_is_private(0o400));
        assert!(!mode_is_private(0o640));
        assert!(!mode_is_private(0o604));
    }
}
