//! A fresh database per test or harness run: a SQLite file in a temp dir, or a PostgreSQL
//! database created next to an admin URL and dropped (with its open connections) when done.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;

use super::TestingError;

/// The admin database the throw-away PostgreSQL databases are created from when
/// `FLOWD_TEST_POSTGRES_URL` is not set: the local server CI and the README use.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which database a test or run gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temp dir.
    Sqlite,
    /// A throw-away database on a PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The name a command line and a report use: `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

impl FromStr for Backend {
    type Err = TestingError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" => Ok(Self::Postgres),
            other => Err(TestingError::UnknownBackend(other.to_owned())),
        }
    }
}

/// `FLOWD_TEST_POSTGRES_URL`, or the local server's `test` database: where throw-away
/// PostgreSQL databases are made.
pub fn postgres_admin_url() -> String {
    std::env::var("FLOWD_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
}

/// A database made for one test or run, and a scratch directory beside it (for configs and
/// the SQLite file). Dropping it drops the PostgreSQL database, even with connections open.
pub struct TestDatabase {
    /// The URL a store or a server config takes.
    pub url: String,
    dir: tempfile::TempDir,
    postgres: Option<Throwaway>,
}

/// A PostgreSQL database this process created, and the admin URL it was created from.
struct Throwaway {
    admin: String,
    name: String,
}

impl TestDatabase {
    /// A fresh database on `backend`, PostgreSQL's next to [`postgres_admin_url`].
    ///
    /// # Panics
    /// When the database cannot be made: for tests, where that is the failure to report.
    pub fn new(backend: Backend) -> Self {
        Self::create(backend).unwrap_or_else(|error| panic!("a test database: {error}"))
    }

    /// A fresh database on `backend`, PostgreSQL's next to [`postgres_admin_url`].
    pub fn create(backend: Backend) -> Result<Self, TestingError> {
        Self::create_at(backend, &postgres_admin_url())
    }

    /// A fresh database on `backend`, PostgreSQL's created through `admin` (a URL whose
    /// path names a database the user may connect to; its query string is kept).
    pub fn create_at(backend: Backend, admin: &str) -> Result<Self, TestingError> {
        let dir = tempfile::tempdir().map_err(TestingError::TempDir)?;
        match backend {
            Backend::Sqlite => Ok(Self {
                url: format!("sqlite://{}", dir.path().join("flowd.db").display()),
                dir,
                postgres: None,
            }),
            Backend::Postgres => {
                let name = format!("flowd_t_{}", uuid::Uuid::new_v4().simple());
                let url = sibling_url(admin, &name)?;
                // The name is fresh, but a leftover of a crashed run must not fail the next.
                psql(
                    admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
                psql(admin, &format!("CREATE DATABASE {name}"))?;
                Ok(Self {
                    url,
                    dir,
                    postgres: Some(Throwaway {
                        admin: admin.to_owned(),
                        name,
                    }),
                })
            }
        }
    }

    /// The scratch directory, removed with the database.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Runs `statement` on the admin connection (PostgreSQL only), e.g. to kill connections.
    ///
    /// # Panics
    /// On SQLite, or when the statement fails: a test asked for something that cannot be.
    pub fn admin(&self, statement: &str) {
        let throwaway = self.postgres.as_ref().expect("a PostgreSQL test database");
        if let Err(error) = psql(&throwaway.admin, statement) {
            panic!("{error}");
        }
    }

    /// Runs `statement` on the test's own database (PostgreSQL only) and returns psql's
    /// unaligned output: how a test plays another node, or looks at rows the API does not show.
    ///
    /// # Panics
    /// On SQLite, or when the statement fails: a test asked for something that cannot be.
    pub fn sql(&self, statement: &str) -> String {
        assert!(self.postgres.is_some(), "a PostgreSQL test database");
        let output = Command::new("psql")
            .env("PGOPTIONS", "--client-min-messages=warning")
            .args([&self.url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", statement])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            output.status.success(),
            "`{statement}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The throw-away PostgreSQL database's name.
    pub fn postgres_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|t| t.name.as_str())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(Throwaway { admin, name }) = &self.postgres
            && let Err(error) = psql(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
        {
            // Nothing to return to from a drop; a leftover database is worth a line.
            eprintln!("{error}");
        }
    }
}

/// `admin` with its database name replaced by `name`, query string kept.
fn sibling_url(admin: &str, name: &str) -> Result<String, TestingError> {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin, None),
    };
    let (prefix, _) = base
        .rsplit_once('/')
        .filter(|(prefix, _)| prefix.contains("://") && !prefix.ends_with('/'))
        .ok_or_else(|| TestingError::AdminUrl(admin.to_owned()))?;
    Ok(match query {
        Some(query) => format!("{prefix}/{name}?{query}"),
        None => format!("{prefix}/{name}"),
    })
}

/// One statement through `psql`, quiet unless it fails.
fn psql(admin: &str, statement: &str) -> Result<(), TestingError> {
    let failed = |detail: String| TestingError::Psql {
        admin: admin.to_owned(),
        detail,
    };
    let output = Command::new("psql")
        .env("PGOPTIONS", "--client-min-messages=warning")
        .args([admin, "-q", "-v", "ON_ERROR_STOP=1", "-c", statement])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run psql: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(failed(format!("`{statement}` failed: {}", stderr.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sibling_database_keeps_host_user_and_query() {
        let url = |admin| sibling_url(admin, "flowd_t_1");
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/test").expect("plain"),
            "postgres://postgres@127.0.0.1:5432/flowd_t_1"
        );
        assert_eq!(
            url("postgres://u:p@db/test?sslmode=disable").expect("query"),
            "postgres://u:p@db/flowd_t_1?sslmode=disable"
        );
        assert!(url("postgres://db").is_err());
        assert!(url("test").is_err());
    }

    #[test]
    fn backends_parse_by_name() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            assert_eq!(backend.name().parse::<Backend>().expect("parse"), backend);
        }
        assert!("mysql".parse::<Backend>().is_err());
    }
}
