//! The operator's one error type.

/// What can go wrong while reconciling or rendering files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What the operator was doing, e.g. "apply Secret".
        action: &'static str,
        /// namespace/name.
        object: String,
        /// The client's error (never carries object data).
        #[source]
        source: kube::Error,
    },
    /// Reading or writing a standalone file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest in the standalone input directory is invalid.
    #[error("{path}: {source}")]
    Manifest {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        #[source]
        source: crate::render::ParseError,
    },
    /// A manifest breaks a rule the API server would enforce at admission.
    #[error("{path}: rejected: {violations}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// Each violation with its resource and message.
        violations: String,
    },
    /// The rendered configuration is larger than a proxy reads.
    #[error(
        "the rendered configuration is {bytes} bytes, over the {limit} a proxy reads: split the servers across gateways with --watch-namespaces"
    )]
    ConfigTooLarge {
        /// Size of the configuration.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

impl Error {
    /// A bounded label for the `failures` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { action, .. } => action,
            Error::Io { .. } => "io",
            Error::Manifest { .. } | Error::Invalid { .. } => "manifest",
            Error::ConfigTooLarge { .. } => "config_too_large",
            Error::Lease(_) => "lease",
            Error::Random => "random",
        }
    }

    pub(crate) fn kube(
        action: &'static str,
        object: impl std::fmt::Display,
    ) -> impl FnOnce(kube::Error) -> Self {
        let object = object.to_string();
        move |source| Error::Kube {
            action,
            object,
            source,
        }
    }
}

/// `Result` with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
