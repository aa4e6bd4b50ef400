//! Test support for the tiers that pull: Debian's `docker-registry` (the CNCF
//! distribution registry) run on loopback with or without authentication, and a push
//! of an OCI layout into it with `oci-client`. Nothing here runs on a node.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// Where Debian installs the registry.
const REGISTRY_PROGRAM: &str = "/usr/bin/docker-registry";

/// How a test registry authenticates clients.
#[derive(Debug, Clone)]
pub enum TestRegistryAuth {
    /// Not at all.
    None,
    /// `htpasswd` with one user and password (needs `htpasswd`, apache2-utils).
    Htpasswd {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// Bearer tokens (the registry's `auth.token`) from a token server at `realm`,
    /// signed by a key whose certificate is in `root_certificates` (PEM).
    Token {
        /// The token endpoint's URL.
        realm: String,
        /// The audience the tokens name.
        service: String,
        /// The issuer the tokens name.
        issuer: String,
        /// The certificates the registry trusts for token signatures.
        root_certificates: PathBuf,
    },
}

/// A `docker-registry` process listening on a loopback port, killed when dropped.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry on a free loopback port and waits until it listens.
    pub fn start(auth: &TestRegistryAuth) -> io::Result<Self> {
        if !Path::new(REGISTRY_PROGRAM).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "needs Debian's docker-registry (cargo xtask deps installs it)",
            ));
        }
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.path().join("data").display()
        );
        match auth {
            TestRegistryAuth::None => {}
            TestRegistryAuth::Htpasswd { username, password } => {
                let output = Command::new("htpasswd")
                    .args(["-Bbn", username, password])
                    .output()?;
                if !output.status.success() {
                    return Err(io::Error::other("htpasswd failed"));
                }
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, output.stdout)?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            TestRegistryAuth::Token {
                realm,
                service,
                issuer,
                root_certificates,
            } => config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                root_certificates.display()
            )),
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let child = Command::new(REGISTRY_PROGRAM)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let registry = Self {
            child,
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.address).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the registry did not listen within 20 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Its `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes the one image of the OCI layout at `layout` to `reference` (a plain-HTTP
/// registry) with `auth`; returns the manifest's digest.
pub async fn push_layout(
    layout: &Path,
    reference: &str,
    auth: &RegistryAuth,
) -> Result<String, String> {
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let image: Reference = reference.parse().map_err(|e| format!("{reference}: {e}"))?;
    let read = |path: PathBuf| std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
    let json = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string())
    };
    let index = json(&read(layout.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or("the layout's index names no manifest")?
        .to_owned();
    let blob = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        read(layout.join("blobs/sha256").join(hex))
    };
    let manifest_bytes = blob(&manifest_digest)?;
    let manifest = json(&manifest_bytes)?;
    client
        .auth(&image, auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| format!("authenticating: {e}"))?;
    let mut digests = vec![
        manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        digests.push(layer["digest"].as_str().unwrap_or_default().to_owned());
    }
    for digest in digests {
        client
            .push_blob(&image, blob(&digest)?, &digest)
            .await
            .map_err(|e| format!("pushing {digest}: {e}"))?;
    }
    let media_type = "application/vnd.oci.image.manifest.v1+json"
        .parse()
        .map_err(|e| format!("{e}"))?;
    client
        .push_manifest_raw(&image, manifest_bytes, media_type)
        .await
        .map_err(|e| format!("pushing the manifest: {e}"))?;
    Ok(manifest_digest)
}
