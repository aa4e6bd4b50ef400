//! Authentication: who is asking. A client certificate signed by the cluster CA names
//! the user (Common Name) and groups (Organizations); a bearer token is a
//! ServiceAccount token the cluster signed (ES256 with the cluster CA's key, checked
//! against the ServiceAccount that still exists). Anything else is anonymous, which
//! only the public health and version endpoints accept.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use crate::error::ApiError;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (`admin`, `system:serviceaccount:ns:name`).
    pub name: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
    /// The uid (ServiceAccounts).
    pub uid: Option<String>,
}

impl User {
    /// A user from a client certificate's subject.
    pub fn from_certificate(common_name: &str, organizations: &[String]) -> Self {
        let mut groups = organizations.to_vec();
        groups.push("system:authenticated".into());
        Self {
            name: common_name.to_owned(),
            groups,
            uid: None,
        }
    }

    /// The anonymous user.
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            uid: None,
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether the request carried credentials.
    pub fn is_anonymous(&self) -> bool {
        self.name == "system:anonymous"
    }
}

/// The subject of a client certificate (DER): Common Name and Organizations.
pub fn certificate_subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())?
        .to_owned();
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    Some((cn, orgs))
}

/// The audience and issuer of the tokens the cluster signs.
pub const TOKEN_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What a valid token claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid when the token was made.
    pub uid: String,
    /// Expiry (Unix seconds).
    pub expires: i64,
    /// The object the token is bound to (`None`: bound to nothing): it is valid only
    /// while that object exists and is not past its deletion.
    pub bound: Option<BoundObject>,
}

/// What a token can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    /// A pod: its mounted credentials, or `kubectl create token --bound-object-kind=Pod`.
    Pod,
    /// A Secret: a `kubernetes.io/service-account-token` Secret's token, or one a
    /// TokenRequest binds to a Secret.
    Secret,
}

impl BoundKind {
    /// The kind's name (`Pod`), as `boundObjectRef.kind` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            BoundKind::Pod => "Pod",
            BoundKind::Secret => "Secret",
        }
    }

    /// Its key under the token's `kubernetes.io` claim.
    fn claim(self) -> &'static str {
        match self {
            BoundKind::Pod => "pod",
            BoundKind::Secret => "secret",
        }
    }
}

/// The object a token is bound to, as its `kubernetes.io.pod` (or `.secret`) claim
/// names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundObject {
    /// Its kind.
    pub kind: BoundKind,
    /// Its name (in the ServiceAccount's namespace).
    pub name: String,
    /// Its uid.
    pub uid: String,
}

impl TokenClaims {
    /// The user the token authenticates.
    pub fn user(&self) -> User {
        User {
            name: format!("system:serviceaccount:{}:{}", self.namespace, self.name),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated".into(),
            ],
            uid: Some(self.uid.clone()),
        }
    }
}

/// Signs and checks ServiceAccount tokens (JWT, ES256).
pub struct Tokens {
    key: EcdsaKeyPair,
    key_id: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// Why tokens cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// The key is not PEM.
    #[error("the token signing key is not PEM")]
    Pem(#[source] pem::PemError),
    /// The key is not an ECDSA P-256 PKCS#8 key.
    #[error("the token signing key is not an ECDSA P-256 key: {0}")]
    Key(String),
}

impl Tokens {
    /// Signing with the PKCS#8 ECDSA P-256 key `key_pem` (the cluster CA's).
    pub fn new(key_pem: &str) -> Result<Self, TokenKeyError> {
        let der = pem::parse(key_pem).map_err(TokenKeyError::Pem)?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.contents(),
            &SystemRandom::new(),
        )
        .map_err(|e| TokenKeyError::Key(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let key_id = b64(&digest.as_ref()[..16]);
        Ok(Self { key, key_id })
    }

    /// A token for the ServiceAccount `namespace/name` (uid `uid`), valid for
    /// `seconds`, for `audiences`.
    pub fn issue(&self, claims: &TokenClaims, audiences: &[String]) -> Result<String, ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({"alg": "ES256", "kid": self.key_id, "typ": "JWT"});
        let audiences: Vec<String> = if audiences.is_empty() {
            vec![TOKEN_ISSUER.to_owned()]
        } else {
            audiences.to_vec()
        };
        let mut body = json!({
            "iss": TOKEN_ISSUER,
            "aud": audiences,
            "sub": format!("system:serviceaccount:{}:{}", claims.namespace, claims.name),
            "iat": now,
            "nbf": now,
            "exp": claims.expires,
            "kubernetes.io": {
                "namespace": claims.namespace,
                "serviceaccount": {"name": claims.name, "uid": claims.uid},
            },
        });
        if let Some(bound) = &claims.bound {
            body["kubernetes.io"][bound.kind.claim()] =
                json!({"name": bound.name, "uid": bound.uid});
        }
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(body.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| ApiError::Internal("cannot sign a token".into()))?;
        Ok(format!("{signing_input}.{}", b64(signature.as_ref())))
    }

    /// The claims of a token this cluster signed, if it is one and is still valid
    /// (the caller checks that its ServiceAccount still exists with that uid).
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let mut parts = token.split('.');
        let (header, body, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        let signed = format!("{header}.{body}");
        public.verify(signed.as_bytes(), &unb64(signature)?).ok()?;
        let header: Value = serde_json::from_slice(&unb64(header)?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let claims: Value = serde_json::from_slice(&unb64(body)?).ok()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if claims["iss"] != TOKEN_ISSUER {
            return None;
        }
        let expires = claims["exp"].as_i64()?;
        if expires < now || claims["nbf"].as_i64().is_some_and(|nbf| nbf > now + 60) {
            return None;
        }
        let audiences: Vec<&str> = match &claims["aud"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&TOKEN_ISSUER) {
            return None;
        }
        let k = &claims["kubernetes.io"];
        let mut bound = None;
        for kind in [BoundKind::Pod, BoundKind::Secret] {
            if let Some(object) = k.get(kind.claim()) {
                // A token names one object at most; two would be a forgery's doing.
                if bound.is_some() {
                    return None;
                }
                bound = Some(BoundObject {
                    kind,
                    name: object["name"].as_str()?.to_owned(),
                    uid: object["uid"].as_str()?.to_owned(),
                });
            }
        }
        Some(TokenClaims {
            namespace: k["namespace"].as_str()?.to_owned(),
            name: k.pointer("/serviceaccount/name")?.as_str()?.to_owned(),
            uid: k.pointer("/serviceaccount/uid")?.as_str()?.to_owned(),
            expires,
            bound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let ca = cairn_api::pki::Ca::generate("test").unwrap();
        Tokens::new(ca.key_pem()).unwrap()
    }

    #[test]
    fn tokens_verify_only_when_signed_here_and_not_expired() {
        let tokens = tokens();
        let later = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
        let claims = TokenClaims {
            namespace: "ns".into(),
            name: "robot".into(),
            uid: "u1".into(),
            expires: later,
            bound: None,
        };
        let token = tokens.issue(&claims, &[]).unwrap();
        assert_eq!(tokens.verify(&token), Some(claims.clone()));
        assert_eq!(claims.user().name, "system:serviceaccount:ns:robot");
        assert!(claims.user().in_group("system:serviceaccounts:ns"));
        let other = self::tokens();
        assert_eq!(other.verify(&token), None, "another cluster's key");
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 3, 'x');
        assert_eq!(tokens.verify(&tampered), None);
        let expired = tokens
            .issue(
                &TokenClaims {
                    expires: 1,
                    ..claims.clone()
                },
                &[],
            )
            .unwrap();
        assert_eq!(tokens.verify(&expired), None);
        for kind in [BoundKind::Pod, BoundKind::Secret] {
            let bound = TokenClaims {
                bound: Some(BoundObject {
                    kind,
                    name: "web-0".into(),
                    uid: "p1".into(),
                }),
                ..claims.clone()
            };
            let token = tokens.issue(&bound, &[]).unwrap();
            assert_eq!(
                tokens.verify(&token),
                Some(bound),
                "the {kind:?} claim survives"
            );
        }
    }
}
