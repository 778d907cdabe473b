//! How a server should be started.

use std::path::PathBuf;

/// Options for [`crate::PgServer::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgServerOptions {
    /// Persistent data directory: created from the template when missing or empty, reused
    /// when it already holds a cluster, never deleted. `None`: a temporary directory that
    /// is deleted when the server is dropped (or this process dies).
    pub data_dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`: fast, and a crash of
    /// the machine may corrupt the cluster. For tests only.
    pub fast_unsafe_settings: bool,
    /// `max_connections` of the server.
    pub max_connections: u32,
    /// Further `-c name=value` server settings, applied last (they win).
    pub settings: Vec<(String, String)>,
}

impl PgServerOptions {
    /// Throwaway server for tests: temporary data, free port, unsafe fast settings,
    /// 200 connections, small shared buffers.
    pub fn for_tests() -> Self {
        Self {
            data_dir: None,
            port: None,
            fast_unsafe_settings: true,
            max_connections: 200,
            settings: vec![("shared_buffers".into(), "16MB".into())],
        }
    }

    /// Server whose data survives in `data_dir`, with safe settings and PostgreSQL's
    /// default of 100 connections.
    pub fn persistent(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: Some(data_dir.into()),
            port: None,
            fast_unsafe_settings: false,
            max_connections: 100,
            settings: Vec::new(),
        }
    }

    /// Adds one `-c name=value` setting.
    pub fn with_setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// The server settings these options stand for, in the order they are passed.
    pub(crate) fn server_settings(&self) -> Vec<(String, String)> {
        let mut all = vec![
            ("listen_addresses".to_owned(), crate::HOST.to_owned()),
            (
                "max_connections".to_owned(),
                self.max_connections.to_string(),
            ),
        ];
        if self.fast_unsafe_settings {
            for name in ["fsync", "synchronous_commit", "full_page_writes"] {
                all.push((name.to_owned(), "off".to_owned()));
            }
        }
        all.extend(self.settings.iter().cloned());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_options_are_fast_and_user_settings_come_last() {
        let settings = PgServerOptions::for_tests()
            .with_setting("work_mem", "8MB")
            .server_settings();
        assert!(settings.contains(&("fsync".into(), "off".into())));
        assert!(settings.contains(&("max_connections".into(), "200".into())));
        assert_eq!(settings.last(), Some(&("work_mem".into(), "8MB".into())));
        let persistent = PgServerOptions::persistent("/x").server_settings();
        assert!(!persistent.iter().any(|(name, _)| name == "fsync"));
    }
}
