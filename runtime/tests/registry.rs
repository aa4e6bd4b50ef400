//! Registry pulls against a real registry: Debian's `docker-registry` (the CNCF
//! distribution registry) started by the test on loopback, the busybox test image
//! pushed into it with `oci-client`, then pulled by tag and by digest into a fresh
//! image store, verified and unpacked; a multi-platform index is pulled as its
//! linux/amd64 image; with `htpasswd` authentication, and with
//! bearer tokens from a token server the test runs (the registry's `auth.token`,
//! JWTs signed with a key whose certificate the registry trusts), an anonymous pull
//! and one with a wrong password are refused and the right credentials succeed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cairn_runtime::images::ImageStore;
use cairn_runtime::layer::{UnpackOptions, unpack};
use cairn_runtime::pull::{Credentials, PullError, Puller};
use cairn_runtime::test_images::write_busybox_layout;
use cairn_runtime::test_registry::{self, TestRegistry, TestRegistryAuth};
use oci_client::secrets::RegistryAuth;

/// Starts a registry with `auth`.
fn registry(auth: TestRegistryAuth) -> TestRegistry {
    TestRegistry::start(&auth).expect("docker-registry on loopback")
}

/// A registry with basic authentication for `user`.
fn basic_registry(username: &str, password: &str) -> TestRegistry {
    registry(TestRegistryAuth::Htpasswd {
        username: username.into(),
        password: password.into(),
    })
}

/// Pushes `layout` as `reference`; the manifest digest.
async fn push_layout(layout: &Path, reference: &str, auth: &RegistryAuth) -> String {
    test_registry::push_layout(layout, reference, auth)
        .await
        .unwrap()
}

/// The `service` (token audience) of the token-authenticated registry.
const TOKEN_SERVICE: &str = "cairn-test-registry";
/// The issuer of its tokens.
const TOKEN_ISSUER: &str = "cairn-test-issuer";

/// A Docker token server on loopback (the protocol of Docker Hub's auth.docker.io):
/// `GET /token?service=…&scope=repository:<name>:<actions>` with the right basic
/// credentials answers a JWT (ES256, its certificate in the `x5c` header) granting
/// the scopes asked for; anything else is 401. Stops when dropped.
struct TokenServer {
    address: String,
    certificate: PathBuf,
    issued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    fn start(user: &'static str, password: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec![TOKEN_ISSUER.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let certificate_path = dir.path().join("token-ca.pem");
        std::fs::write(&certificate_path, certificate.pem()).unwrap();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let chain = base64::engine::general_purpose::STANDARD.encode(certificate.der());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let issued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopping) = (Arc::clone(&issued), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let answer = |head: &str| {
                    token_answer(head, (user, password), |claims| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        sign_jwt(&signer, &chain, claims)
                    })
                };
                serve_one(stream, answer);
            }
        });
        Self {
            address,
            certificate: certificate_path,
            issued,
            stop,
            _dir: dir,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.address);
    }
}

/// Reads one HTTP request head from `stream` and writes `answer(head)` as the
/// response (status line and JSON body), closing the connection.
fn serve_one(mut stream: TcpStream, answer: impl Fn(&str) -> (u16, String)) {
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let (status, body) = answer(&String::from_utf8_lossy(&head));
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The token server's answer to the request `head`: a token for the scopes asked
/// for when the basic credentials are `expected`, else 401.
fn token_answer(
    head: &str,
    expected: (&str, &str),
    sign: impl Fn(serde_json::Value) -> String,
) -> (u16, String) {
    use base64::Engine as _;
    let refused = (401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_owned());
    let credentials = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| value.trim().strip_prefix("Basic "))
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .map(|decoded| String::from_utf8_lossy(&decoded).into_owned());
    if credentials.as_deref() != Some(&format!("{}:{}", expected.0, expected.1)) {
        return refused;
    }
    let Some(query) = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|target| target.split_once('?'))
        .map(|(_, query)| query.to_owned())
    else {
        return refused;
    };
    let access: Vec<serde_json::Value> = form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "scope")
        .filter_map(|(_, scope)| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>()
            }))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = sign(serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": expected.0, "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()),
        "access": access
    }));
    (
        200,
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string(),
    )
}

/// A compact JWS (ES256) of `claims`, with the signing certificate in `x5c`.
fn sign_jwt(
    signer: &ring::signature::EcdsaKeyPair,
    chain: &str,
    claims: serde_json::Value,
) -> String {
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [chain]});
    let input = format!(
        "{}.{}",
        url.encode(header.to_string()),
        url.encode(claims.to_string())
    );
    let signature = signer
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", url.encode(signature.as_ref()))
}

fn busybox_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("busybox");
    write_busybox_layout(Path::new("/bin/busybox"), &layout).unwrap();
    layout
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
#[ignore = "starts Debian's docker-registry (installed by cargo xtask deps)"]
fn images_are_pulled_by_tag_and_digest_verified_and_unpackable() {
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    let registry = registry(TestRegistryAuth::None);
    let reference = format!("{}/test/busybox:1.0", registry.address());
    runtime().block_on(async {
        let pushed = push_layout(&layout, &reference, &RegistryAuth::Anonymous).await;
        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let puller = Puller::new(&[registry.address().to_owned()]);
        let image = puller
            .pull(&store, &reference, &Credentials::Anonymous)
            .await
            .unwrap();
        assert_eq!(image.name, reference);
        assert_eq!(image.manifest.to_string(), pushed);
        assert_eq!(store.resolve(&reference).unwrap(), image);
        let config = store.configuration(&image).unwrap();
        assert_eq!(
            config.config().as_ref().unwrap().cmd().as_deref(),
            Some(&["sh".to_owned()][..])
        );
        let rootfs = work.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let options = UnpackOptions {
            preserve_owners: false,
            ..UnpackOptions::default()
        };
        for layer in &image.layers {
            unpack(store.blobs().open_blob(layer).unwrap(), &rootfs, &options).unwrap();
        }
        assert!(rootfs.join("bin/busybox").is_file());

        // By digest, into another store.
        let by_digest = format!("{}/test/busybox@{pushed}", registry.address());
        let other = ImageStore::open(&work.path().join("other")).unwrap();
        let image = puller
            .pull(&other, &by_digest, &Credentials::Anonymous)
            .await
            .unwrap();
        assert_eq!(image.manifest.to_string(), pushed);

        // A tag that does not exist is an error naming the reference.
        let missing = format!("{}/test/busybox:nope", registry.address());
        let err = puller
            .pull(&store, &missing, &Credentials::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::Registry { .. }), "{err}");
        assert!(err.to_string().contains("busybox:nope"), "{err}");
    });
}

/// Pushes the busybox image to `reference` on `registry` as `user`/`password`, then
/// checks that an anonymous and a wrong-password pull are refused (nothing recorded)
/// and that the right credentials pull it — through the token server whose count of
/// issued tokens is `tokens`, when there is one.
fn only_the_right_credentials_pull(
    registry: &TestRegistry,
    reference: &str,
    user: &str,
    password: &str,
    tokens: Option<&AtomicUsize>,
) {
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    runtime().block_on(async {
        let basic = RegistryAuth::Basic(user.into(), password.into());
        push_layout(&layout, reference, &basic).await;
        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let puller = Puller::new(&[registry.address().to_owned()]);
        let err = puller
            .pull(&store, reference, &Credentials::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::Registry { .. }), "{err}");
        let wrong = Credentials::Basic {
            username: user.into(),
            password: "wrong".into(),
        };
        assert!(puller.pull(&store, reference, &wrong).await.is_err());
        assert!(
            store.list().is_empty(),
            "nothing is recorded from refused pulls"
        );
        let right = Credentials::Basic {
            username: user.into(),
            password: password.into(),
        };
        let before = tokens.map(|t| t.load(Ordering::SeqCst));
        let image = puller.pull(&store, reference, &right).await.unwrap();
        assert_eq!(store.list(), vec![image]);
        if let (Some(tokens), Some(before)) = (tokens, before) {
            assert!(
                tokens.load(Ordering::SeqCst) > before,
                "the pull went through the token server"
            );
        }
        assert!(
            !format!("{right:?}").contains(password),
            "credentials stay out of logs"
        );
    });
}

#[test]
#[ignore = "starts Debian's docker-registry (installed by cargo xtask deps)"]
fn a_registry_with_authentication_needs_the_right_credentials() {
    let registry = basic_registry("cairn", "s3cret");
    let reference = format!("{}/private/busybox:1.0", registry.address());
    only_the_right_credentials_pull(&registry, &reference, "cairn", "s3cret", None);
}

#[test]
#[ignore = "starts Debian's docker-registry (installed by cargo xtask deps)"]
fn a_registry_with_bearer_tokens_needs_the_right_credentials() {
    let tokens = TokenServer::start("cairn", "t0ken-pass");
    let registry = registry(TestRegistryAuth::Token {
        realm: format!("http://{}/token", tokens.address),
        service: TOKEN_SERVICE.into(),
        issuer: TOKEN_ISSUER.into(),
        root_certificates: tokens.certificate.clone(),
    });
    let reference = format!("{}/private/busybox:2.0", registry.address());
    only_the_right_credentials_pull(
        &registry,
        &reference,
        "cairn",
        "t0ken-pass",
        Some(&tokens.issued),
    );
}

/// Undoes whatever a runtime test left under `dir` (mounts) and in `cgroup`.
struct Cleanup {
    dir: PathBuf,
    cgroup: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let root = self.dir.to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .map(str::to_owned)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = cairn_runtime::cgroups::CgroupLayout::detect().remove_tree(&self.cgroup);
    }
}

#[test]
#[ignore = "needs root and Debian's docker-registry"]
fn a_pod_pulls_its_image_with_its_pull_secret() {
    use cairn_runtime::container::ShimProgram;
    use cairn_runtime::plan::PodIdentity;
    use cairn_runtime::runtime::{PodRequest, Runtime, RuntimeConfig};
    use cairn_runtime::volumes::PodSources;

    let work = tempfile::Builder::new()
        .prefix("cairn-pull-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let layout = busybox_layout(work.path());
    let registry = basic_registry("cairn", "s3cret");
    let reference = format!("{}/private/busybox:1.0", registry.address());
    let cgroup = format!("/cairn-test-pull-{}", std::process::id());
    let _cleanup = Cleanup {
        dir: work.path().to_owned(),
        cgroup: cgroup.clone(),
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio.block_on(async {
        let basic = RegistryAuth::Basic("cairn".into(), "s3cret".into());
        push_layout(&layout, &reference, &basic).await;
        let mut config = RuntimeConfig::new(
            &work.path().join("state"),
            &work.path().join("logs"),
            ShimProgram {
                program: PathBuf::from(env!("CARGO_BIN_EXE_cairn-shim")),
                args: vec![],
            },
            "test-node",
        );
        config.cgroup_parent = cgroup.clone();
        config.registries.insecure = vec![registry.address().to_owned()];
        let runtime = Runtime::open(config).unwrap();
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "regcred"},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {},
                "data": {".dockerconfigjson": base64_of(&serde_json::json!({
                    "auths": {registry.address().to_owned(): {"username": "cairn", "password": "s3cret"}}
                }).to_string())}
            }))
            .unwrap();
        let spec = serde_json::from_value(serde_json::json!({
            "restartPolicy": "Never",
            "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{"name": "main", "image": reference, "command": ["echo", "pulled"]}]
        }))
        .unwrap();
        runtime
            .ensure_pod(PodRequest {
                identity: PodIdentity {
                    namespace: "default".into(),
                    name: "pulled".into(),
                    uid: "uid-pulled".into(),
                },
                spec,
                sources: PodSources {
                    secrets: [("regcred".to_owned(), secret)].into(),
                    ..PodSources::default()
                },
                ..PodRequest::default()
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = runtime.pod_status("uid-pulled").unwrap();
            if status.phase == cairn_runtime::pod::Phase::Succeeded {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the pod did not succeed: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(runtime.images().list()[0].name, reference);
        let mut log = Vec::new();
        runtime
            .read_log(
                "uid-pulled",
                "main",
                false,
                &Default::default(),
                || true,
                |chunk| {
                    log.extend_from_slice(chunk);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(String::from_utf8(log).unwrap(), "pulled\n");
        runtime.remove_pod("uid-pulled").await.unwrap();
    });
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
#[ignore = "starts Debian's docker-registry (installed by cargo xtask deps)"]
fn a_multi_platform_index_is_pulled_as_its_linux_amd64_image() {
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    let registry = registry(TestRegistryAuth::None);
    let single = format!("{}/multi/busybox:amd64", registry.address());
    let multi = format!("{}/multi/busybox:1.0", registry.address());
    runtime().block_on(async {
        let amd64 = push_layout(&layout, &single, &RegistryAuth::Anonymous).await;
        // Another platform's manifest: the same blobs, told apart by an annotation.
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let image: oci_client::Reference = multi.parse().unwrap();
        client
            .auth(
                &image,
                &RegistryAuth::Anonymous,
                oci_client::RegistryOperation::Push,
            )
            .await
            .unwrap();
        let hex = amd64.trim_start_matches("sha256:");
        let amd64_manifest = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        let mut other: serde_json::Value = serde_json::from_slice(&amd64_manifest).unwrap();
        other["annotations"] = serde_json::json!({"cairn.test/platform": "arm64"});
        let other = serde_json::to_vec(&other).unwrap();
        let manifest_type = "application/vnd.oci.image.manifest.v1+json";
        client
            .push_manifest_raw(&image, other.clone(), manifest_type.parse().unwrap())
            .await
            .unwrap();
        let other_digest = cairn_runtime::digest::Digest::of(&other).to_string();

        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": manifest_type, "digest": other_digest,
                 "size": other.len(), "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": manifest_type, "digest": amd64, "size": amd64_manifest.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        });
        client
            .push_manifest_raw(
                &image,
                serde_json::to_vec(&index).unwrap(),
                "application/vnd.oci.image.index.v1+json".parse().unwrap(),
            )
            .await
            .unwrap();
        let store = ImageStore::open(&work.path().join("store")).unwrap();
        let puller = Puller::new(&[registry.address().to_owned()]);
        let pulled = puller
            .pull(&store, &multi, &Credentials::Anonymous)
            .await
            .unwrap();
        assert_eq!(
            pulled.manifest.to_string(),
            amd64,
            "the linux/amd64 manifest"
        );
    });
}
