//! The REST operations on resources: get, list (selectors, `limit`/`continue`,
//! `resourceVersion` semantics), watch (streamed, resumable, bookmarks, `410` in the
//! stream), create (`generateName`, defaults, validation, `dryRun`), update with
//! optimistic concurrency, patch (merge, JSON, strategic, server-side apply), delete
//! and deletecollection (grace periods, finalizers, propagation), and the
//! subresources `status`, `scale`, `binding`, `finalize` and `token`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::{BoundKind, BoundObject, User};
use crate::codec::FieldValidation;
use crate::error::{ApiError, FieldError};
use crate::kinds::{self, Deletion};
use crate::managed;
use crate::meta;
use crate::patch::{self, PatchType};
use crate::registry::{Kind, ResourceType};
use crate::request::{Query, Representation, ResourceRequest};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::ApiState;
use crate::service_accounts;
use crate::storage::{Stored, WriteError};
use crate::tables::{self, IncludeObject};
use crate::watch::{EventType, Source};

/// How many times a read-modify-write is retried when the object changes under it.
const RETRIES: usize = 8;
/// Page size when a list with selectors reads the store in batches.
const BATCH: usize = 500;

/// The request context every operation gets.
pub struct Call<'a> {
    /// Server state.
    pub state: &'a ApiState,
    /// The resource type.
    pub resource: Arc<ResourceType>,
    /// What the path says.
    pub request: &'a ResourceRequest,
    /// Query parameters.
    pub query: &'a Query,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Who asks.
    pub user: &'a User,
}

fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let mut response = (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response();
    for warning in warnings {
        let text = format!("299 - {:?}", warning);
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append("Warning", v);
        }
    }
    response
}

impl Call<'_> {
    fn namespace(&self) -> Option<&str> {
        if self.resource.namespaced {
            self.request.namespace.as_deref()
        } else {
            None
        }
    }

    fn name(&self) -> Result<&str, ApiError> {
        self.request
            .name
            .as_deref()
            .ok_or_else(|| ApiError::MethodNotAllowed("a name is required".into()))
    }

    fn key(&self, name: &str) -> String {
        self.resource.key(self.namespace(), name)
    }

    fn representation(&self) -> Result<Representation, ApiError> {
        crate::request::representation(self.headers)
    }

    fn manager(&self) -> String {
        managed::manager_name(
            self.query.get("fieldManager"),
            self.headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        )
    }

    fn render_one(&self, object: &Value) -> Result<Value, ApiError> {
        Ok(match self.representation()? {
            Representation::Object => object.clone(),
            Representation::Metadata => tables::partial_metadata(object),
            Representation::Table => {
                let include = IncludeObject::parse(self.query.get("includeObject"))?;
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                tables::table(
                    &self.resource,
                    std::slice::from_ref(object),
                    json!({"resourceVersion": rv}),
                    include,
                    true,
                )
            }
        })
    }

    async fn current(&self, name: &str) -> Result<Stored, ApiError> {
        self.state
            .storage
            .get(&self.resource, self.namespace(), name, true)
            .await?
            .ok_or_else(|| ApiError::not_found(&self.resource, name))
    }

    /// `GET` of one object.
    pub async fn get(&self) -> Result<Response, ApiError> {
        let name = self.name()?;
        let consistent = self.query.get("resourceVersion").is_none_or(str::is_empty);
        let stored = self
            .state
            .storage
            .get(&self.resource, self.namespace(), name, consistent)
            .await?
            .ok_or_else(|| ApiError::not_found(&self.resource, name))?;
        Ok(json_response(
            StatusCode::OK,
            &self.render_one(&stored.object)?,
            &[],
        ))
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(self.query.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(self.query.get("fieldSelector").unwrap_or(""))?;
        for term in &fields.terms {
            kinds::check_field(&self.resource, &term.field)?;
        }
        if let (Some(name), Some(asked)) = (self.request.name.as_deref(), fields.name())
            && name != asked
        {
            return Err(ApiError::BadRequest(
                "fieldSelector metadata.name doesn't match requested name".into(),
            ));
        }
        Ok((labels, fields))
    }

    fn matches(&self, object: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        if let Some(ns) = self.namespace()
            && meta::meta_str(object, "namespace") != Some(ns)
        {
            return false;
        }
        if let Some(name) = self.request.name.as_deref()
            && meta::name_of(object) != name
        {
            return false;
        }
        labels.matches_object(object) && fields.matches(|f| kinds::field_value(object, f))
    }

    /// The revision a list reads at, from `resourceVersion`/`resourceVersionMatch`,
    /// and whether it must be consistent.
    async fn list_revision(&self, paged: bool) -> Result<(Option<u64>, bool), ApiError> {
        let rv = self.query.get("resourceVersion").filter(|s| !s.is_empty());
        let matching = self
            .query
            .get("resourceVersionMatch")
            .filter(|s| !s.is_empty());
        let invalid = |message: &str| ApiError::Invalid {
            kind: "ListOptions".into(),
            group: "meta.k8s.io".into(),
            name: String::new(),
            causes: vec![FieldError::forbidden("resourceVersionMatch", message)],
        };
        let parsed = match rv {
            None => {
                if matching.is_some() {
                    return Err(invalid(
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                return Ok((None, true));
            }
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {text}")))?,
        };
        match matching {
            Some("Exact") if parsed == 0 => Err(invalid(
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            )),
            Some("Exact") => Ok((Some(parsed), true)),
            Some("NotOlderThan") | None if parsed == 0 => Ok((None, false)),
            Some("NotOlderThan") => self.not_older_than(parsed).await.map(|()| (None, true)),
            None if paged => Ok((Some(parsed), true)),
            None => self.not_older_than(parsed).await.map(|()| (None, true)),
            Some(other) => Err(ApiError::Invalid {
                kind: "ListOptions".into(),
                group: "meta.k8s.io".into(),
                name: String::new(),
                causes: vec![FieldError::not_supported(
                    "resourceVersionMatch",
                    &Value::String(other.into()),
                    &["Exact", "NotOlderThan", ""],
                )],
            }),
        }
    }

    async fn not_older_than(&self, wanted: u64) -> Result<(), ApiError> {
        for _ in 0..30 {
            let now = self.state.storage.current_revision().await?;
            if now >= wanted {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = self.state.storage.current_revision().await?;
        Err(ApiError::Timeout(format!(
            "Too large resource version: {wanted}, current: {now}"
        )))
    }

    /// `GET` of a collection.
    pub async fn list(&self) -> Result<Response, ApiError> {
        let (labels, fields) = self.selectors()?;
        let limit = self
            .query
            .number("limit")?
            .filter(|l| *l > 0)
            .map(|l| l as usize);
        let prefix = self.resource.namespace_prefix(self.namespace());
        let mut start: Option<String> = None;
        let (revision, consistent) = if let Some(token) =
            self.query.get("continue").filter(|s| !s.is_empty())
        {
            if self
                .query
                .get("resourceVersion")
                .is_some_and(|rv| !rv.is_empty() && rv != "0")
            {
                return Err(ApiError::BadRequest(
                    "specifying resource version is not allowed when using continue".into(),
                ));
            }
            let (rv, key) = decode_continue(token)?;
            if rv > 0 && rv < self.state.storage.compacted_revision() {
                return Err(ApiError::Expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into()));
            }
            start = Some(format!("{prefix}{key}"));
            ((rv > 0).then_some(rv), true)
        } else {
            self.list_revision(limit.is_some()).await?
        };
        let filtering = !labels.is_empty() || !fields.is_empty();
        if !filtering
            && limit.is_none()
            && start.is_none()
            && self.representation()? == Representation::Object
        {
            return self.list_whole(&prefix, revision, consistent).await;
        }
        let mut items = Vec::new();
        let mut more = false;
        let mut last_key: Option<String> = None;
        let mut read_at = revision;
        let mut list_revision;
        loop {
            // Without selectors one more than the page tells whether more follow.
            let batch = match limit {
                Some(_) if filtering => Some(BATCH),
                Some(l) => Some(l + 1 - items.len()),
                None => None,
            };
            let page = self
                .state
                .storage
                .list(&prefix, start.as_deref(), read_at, batch, consistent)
                .await
                .map_err(|e| match e {
                    ApiError::Expired(_) => ApiError::Expired(
                        "The resourceVersion for the provided list is too old.".into(),
                    ),
                    other => other,
                })?;
            list_revision = page.revision;
            // Every page of one list reads the same revision.
            read_at = Some(page.revision);
            for stored in page.items {
                if limit.is_some_and(|l| items.len() >= l) {
                    more = true;
                    break;
                }
                let key = self.resource.key(
                    meta::meta_str(&stored.object, "namespace"),
                    meta::name_of(&stored.object),
                );
                start = Some(format!("{key}\u{0}"));
                if self.matches(&stored.object, &labels, &fields) {
                    items.push(stored.object);
                    last_key = Some(key);
                }
            }
            if more || !page.more {
                break;
            }
        }
        let mut metadata = json!({"resourceVersion": list_revision.to_string()});
        if more && let Some(key) = &last_key {
            let relative = key.strip_prefix(&prefix).unwrap_or(key);
            metadata["continue"] =
                Value::String(encode_continue(list_revision, &format!("{relative}\u{0}")));
        }
        let body = match self.representation()? {
            Representation::Object => json!({
                "kind": self.resource.list_kind,
                "apiVersion": self.resource.api_version(),
                "metadata": metadata,
                "items": items,
            }),
            Representation::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": items.iter().map(tables::partial_metadata).collect::<Vec<_>>(),
            }),
            Representation::Table => {
                let include = IncludeObject::parse(self.query.get("includeObject"))?;
                tables::table(&self.resource, &items, metadata, include, true)
            }
        };
        Ok(json_response(StatusCode::OK, &body, &[]))
    }

    /// A whole, unfiltered collection as JSON, built from the stored bytes without
    /// parsing each object (the common `kubectl get` and informer list).
    async fn list_whole(
        &self,
        prefix: &str,
        revision: Option<u64>,
        consistent: bool,
    ) -> Result<Response, ApiError> {
        let (kvs, _, list_revision) = self
            .state
            .storage
            .range(prefix, None, revision, None, consistent)
            .await
            .map_err(|e| match e {
                ApiError::Expired(_) => ApiError::Expired(
                    "The resourceVersion for the provided list is too old.".into(),
                ),
                other => other,
            })?;
        let head = json!({
            "kind": self.resource.list_kind,
            "apiVersion": self.resource.api_version(),
            "metadata": {"resourceVersion": list_revision.to_string()},
        })
        .to_string();
        let mut body = Vec::with_capacity(
            head.len() + 16 + kvs.iter().map(|kv| kv.value.len() + 32).sum::<usize>(),
        );
        // `head` is `{…}`: reopen it to append the items.
        body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        body.extend_from_slice(b",\"items\":[");
        for (i, kv) in kvs.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&self.state.storage.decode_raw(kv)?);
        }
        body.extend_from_slice(b"]}");
        Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }

    /// `GET …?watch=true`: a stream of events.
    pub async fn watch(&self) -> Result<Response, ApiError> {
        let (labels, fields) = self.selectors()?;
        let representation = self.representation()?;
        let include = IncludeObject::parse(self.query.get("includeObject"))?;
        let bookmarks = self.query.flag("allowWatchBookmarks")?;
        let rv = self.query.get("resourceVersion").filter(|s| !s.is_empty());
        let send_initial = match self.query.get("sendInitialEvents") {
            Some(_) => {
                let wanted = self.query.flag("sendInitialEvents")?;
                if wanted && self.query.get("resourceVersionMatch") != Some("NotOlderThan") {
                    return Err(ApiError::Invalid {
                        kind: "ListOptions".into(),
                        group: "meta.k8s.io".into(),
                        name: String::new(),
                        causes: vec![FieldError::forbidden(
                            "sendInitialEvents",
                            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                        )],
                    });
                }
                wanted
            }
            None => {
                if self
                    .query
                    .get("resourceVersionMatch")
                    .is_some_and(|m| !m.is_empty())
                {
                    return Err(ApiError::Invalid {
                        kind: "ListOptions".into(),
                        group: "meta.k8s.io".into(),
                        name: String::new(),
                        causes: vec![FieldError::forbidden(
                            "resourceVersionMatch",
                            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                        )],
                    });
                }
                matches!(rv, None | Some("0"))
            }
        };
        let timeout = match self.query.number("timeoutSeconds")? {
            Some(s) if s > 0 => Duration::from_secs(s as u64),
            _ => Duration::from_secs(1800 + rand_seconds(1800)),
        };
        let storage = self.state.storage.clone();
        let hubs = Arc::clone(&self.state.hubs);
        let now = storage.current_revision().await?;
        let requested =
            match rv {
                None | Some("0") => None,
                Some(text) => Some(text.parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!("invalid resource version: {text}"))
                })?),
            };
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let namespace = self.namespace().map(str::to_owned);
        let name = self.request.name.clone();
        let filter = move |object: &Value| {
            namespace
                .as_deref()
                .is_none_or(|ns| meta::meta_str(object, "namespace") == Some(ns))
                && name.as_deref().is_none_or(|n| meta::name_of(object) == n)
                && labels.matches_object(object)
                && fields.matches(|f| kinds::field_value(object, f))
        };
        let resource = Arc::clone(&self.resource);
        tokio::spawn(async move {
            let mut encoder = Encoder {
                resource: Arc::clone(&resource),
                representation,
                include,
                headers_sent: false,
            };
            let send = |line: Value| {
                let tx = tx.clone();
                async move {
                    let mut bytes = line.to_string().into_bytes();
                    bytes.push(b'\n');
                    tx.send(Bytes::from(bytes)).await.is_ok()
                }
            };
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut from = requested.unwrap_or(now);
            if send_initial {
                // The state at `from`, as ADDED events, then the live events after it.
                let prefix = resource.key_prefix();
                let mut start: Option<String> = None;
                loop {
                    let page = match storage
                        .list(&prefix, start.as_deref(), Some(from), Some(BATCH), false)
                        .await
                    {
                        Ok(page) => page,
                        Err(err) => {
                            let _ = send(json!({"type": "ERROR", "object": err.status()})).await;
                            return;
                        }
                    };
                    for stored in &page.items {
                        if filter(&stored.object)
                            && !send(encoder.event("ADDED", &stored.object)).await
                        {
                            return;
                        }
                    }
                    match (&page.last_key, page.more) {
                        (Some(last), true) => start = Some(format!("{last}\u{0}")),
                        _ => break,
                    }
                }
                if bookmarks
                    && requested_initial_bookmark(&send, &resource, from)
                        .await
                        .is_err()
                {
                    return;
                }
            }
            let mut source = match Source::open(&hubs, &storage, &resource, from, now) {
                Ok(source) => source,
                Err(err) => {
                    let _ = send(json!({"type": "ERROR", "object": err.status()})).await;
                    return;
                }
            };
            let mut ticker = tokio::time::interval(Duration::from_secs(30));
            ticker.tick().await;
            loop {
                tokio::select! {
                    () = &mut deadline => return,
                    () = tx.closed() => return,
                    _ = ticker.tick() => {
                        if bookmarks && let Some(revision) = source.bookmark_revision()
                            && revision > from
                        {
                            from = revision;
                            if !send(bookmark(&resource, revision, false)).await {
                                return;
                            }
                        }
                    }
                    next = source.next() => match next {
                        Ok(Some(event)) => {
                            from = from.max(event.revision);
                            let now_matches = filter(&event.object);
                            let was = event.previous.as_ref().is_some_and(|p| filter(p));
                            let kind = match (event.kind, was, now_matches) {
                                (EventType::Deleted, true, _) => "DELETED",
                                (EventType::Deleted, false, _) => continue,
                                (_, false, true) => "ADDED",
                                (_, true, true) => "MODIFIED",
                                (_, true, false) => "DELETED",
                                (_, false, false) => continue,
                            };
                            let object = if kind == "DELETED" && event.kind != EventType::Deleted {
                                // Left the selection: its previous state at this revision.
                                let mut previous = event.previous.as_deref().cloned().unwrap_or(Value::Null);
                                meta::set_meta(&mut previous, "resourceVersion", Value::String(event.revision.to_string()));
                                previous
                            } else {
                                (*event.object).clone()
                            };
                            if !send(encoder.event(kind, &object)).await {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(err) => {
                            let _ = send(json!({"type": "ERROR", "object": err.status()})).await;
                            return;
                        }
                    },
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<Bytes, std::io::Error>(chunk), rx))
        });
        let mut response = Response::new(Body::from_stream(stream));
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        Ok(response)
    }

    /// `POST` to a collection.
    pub async fn create(&self, body: &Value) -> Result<Response, ApiError> {
        if self.resource.create_only {
            return self.review(body).await;
        }
        let policy = FieldValidation::parse(self.query.get("fieldValidation"))?;
        let dry_run = self.query.dry_run()?;
        let (mut object, warnings) = kinds::admit(&self.resource, body, policy)?;
        self.place(&mut object)?;
        if matches!(self.resource.builtin, Some(Kind::Pod)) {
            self.admit_service_account(&mut object).await?;
        }
        let manager = self.manager();
        let generate = meta::meta_str(&object, "generateName").map(str::to_owned);
        let named = !meta::name_of(&object).is_empty();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut candidate = object.clone();
            if !named && let Some(base) = &generate {
                meta::set_meta(
                    &mut candidate,
                    "name",
                    Value::String(meta::generated_name(base)),
                );
            }
            kinds::on_create(&self.resource, &mut candidate);
            if matches!(self.resource.builtin, Some(Kind::Secret)) {
                self.fill_account_token(&mut candidate).await?;
            }
            managed::record_update(&self.resource, None, &mut candidate, &manager, None);
            let name = meta::name_of(&candidate).to_owned();
            let problems = kinds::validate(&self.resource, &candidate, None);
            if !problems.is_empty() {
                return Err(ApiError::invalid(&self.resource, &name, problems));
            }
            self.check_namespace_open(&name).await?;
            let key = self.key(&name);
            if dry_run {
                if self
                    .state
                    .storage
                    .get(&self.resource, self.namespace(), &name, true)
                    .await?
                    .is_some()
                {
                    return Err(ApiError::already_exists(&self.resource, &name));
                }
                meta::remove_meta(&mut candidate, "resourceVersion");
                return Ok(json_response(StatusCode::CREATED, &candidate, &warnings));
            }
            let namespace_key = self
                .namespace()
                .map(|ns| self.state.registry.builtin(Kind::Namespace).key(None, ns));
            match self
                .state
                .storage
                .create(&self.resource, &key, &candidate, namespace_key.as_deref())
                .await
            {
                Ok(revision) => {
                    meta::set_meta(
                        &mut candidate,
                        "resourceVersion",
                        Value::String(revision.to_string()),
                    );
                    self.after_write(&candidate);
                    return Ok(json_response(StatusCode::CREATED, &candidate, &warnings));
                }
                Err(WriteError::Exists) if !named && attempt < 8 => continue,
                Err(WriteError::Exists) if !named => {
                    return Err(ApiError::AlreadyExists {
                        message: format!(
                            "{} {name:?} already exists, the server was not able to generate a unique name for the object",
                            self.resource.qualified_plural()
                        ),
                        kind: self.resource.plural.clone(),
                        group: self.resource.group.clone(),
                        name,
                    });
                }
                Err(WriteError::Exists) => {
                    return Err(ApiError::already_exists(&self.resource, &name));
                }
                Err(WriteError::NoNamespace) => {
                    return Err(ApiError::NotFound {
                        resource: "namespaces".into(),
                        kind: "namespaces".into(),
                        group: String::new(),
                        name: self.namespace().unwrap_or("").to_owned(),
                    });
                }
                Err(WriteError::Api(err)) => return Err(err),
                Err(WriteError::Missing | WriteError::Changed) => {
                    return Err(ApiError::Internal(
                        "the store answered a create with a conflict".into(),
                    ));
                }
            }
        }
    }

    /// The ServiceAccount admission of a new pod (see [`service_accounts`]). A named
    /// account must exist; `default` may still be on its way (the controllers make it
    /// with the namespace), and the node agent's token request waits for it.
    async fn admit_service_account(&self, pod: &mut Value) -> Result<(), ApiError> {
        let account_name = service_accounts::account_name(pod);
        let accounts = self.state.registry.builtin(Kind::ServiceAccount);
        let account = self
            .state
            .storage
            .get(&accounts, self.namespace(), &account_name, false)
            .await?;
        if account.is_none() && account_name != service_accounts::DEFAULT_ACCOUNT {
            let name = meta::name_of(pod).to_owned();
            return Err(ApiError::Forbidden {
                message: format!(
                    "pods {name:?} is forbidden: error looking up service account {}/{account_name}: serviceaccount {account_name:?} not found",
                    self.namespace().unwrap_or("default")
                ),
                resource: "pods".into(),
                group: String::new(),
                name: Some(name),
            });
        }
        service_accounts::admit(pod, account.as_ref().map(|a| &a.object));
        Ok(())
    }

    /// Puts the object where the URL says: its namespace (or none), and checks that a
    /// name in the URL is the body's.
    fn place(&self, object: &mut Value) -> Result<(), ApiError> {
        match (
            self.namespace(),
            meta::meta_str(object, "namespace").map(str::to_owned),
        ) {
            (Some(ns), Some(given)) if !given.is_empty() && given != ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            (Some(ns), _) => meta::set_meta(object, "namespace", Value::String(ns.to_owned())),
            (None, _) => {
                meta::remove_meta(object, "namespace");
            }
        }
        if let Some(name) = self.request.name.as_deref() {
            let given = meta::name_of(object).to_owned();
            if given.is_empty() {
                meta::set_meta(object, "name", Value::String(name.to_owned()));
            } else if given != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                )));
            }
        }
        Ok(())
    }

    /// Refuses creates in a namespace being deleted.
    async fn check_namespace_open(&self, name: &str) -> Result<(), ApiError> {
        let Some(ns) = self.namespace() else {
            return Ok(());
        };
        let namespaces = self.state.registry.builtin(Kind::Namespace);
        let Some(stored) = self.state.storage.get(&namespaces, None, ns, false).await? else {
            return Ok(()); // the create's transaction reports the missing namespace
        };
        if meta::is_deleting(&stored.object) {
            return Err(ApiError::Forbidden {
                message: format!(
                    "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    self.resource.qualified_plural()
                ),
                resource: self.resource.plural.clone(),
                group: self.resource.group.clone(),
                name: Some(name.to_owned()),
            });
        }
        Ok(())
    }

    fn after_write(&self, object: &Value) {
        if matches!(
            self.resource.builtin,
            Some(
                Kind::CustomResourceDefinition
                    | Kind::Role
                    | Kind::ClusterRole
                    | Kind::RoleBinding
                    | Kind::ClusterRoleBinding
            )
        ) {
            self.state.changed(&self.resource, object);
        }
    }

    /// A uid in the body is a precondition, as in Kubernetes: the kubelet's status
    /// patches carry one so they cannot land on a newer object of the same name.
    fn uid_precondition(&self, current: &Stored, new: &Value) -> Result<(), ApiError> {
        let stored = meta::meta_str(&current.object, "uid").unwrap_or("");
        match new.pointer("/metadata/uid").and_then(Value::as_str) {
            Some(uid) if !uid.is_empty() && uid != stored => Err(ApiError::conflict_because(
                &self.resource,
                meta::name_of(&current.object),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Writes `new` over `current` (revision-checked), or deletes it when an emptied
    /// finalizer list ends a pending deletion. `status` marks a `/status` write.
    async fn write(
        &self,
        current: &Stored,
        mut new: Value,
        warnings: &[String],
        subresource: Option<&str>,
        created: bool,
    ) -> Result<Response, ApiError> {
        let name = meta::name_of(&current.object).to_owned();
        if let Some(rv) = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !rv.is_empty()
            && rv != current.revision.to_string()
        {
            return Err(ApiError::conflict(&self.resource, &name));
        }
        self.uid_precondition(current, &new)?;
        let status_only = subresource == Some("status");
        kinds::on_update(&self.resource, &mut new, &current.object, status_only);
        if meta::is_deleting(&current.object) {
            let before = meta::finalizers(&current.object);
            if meta::finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &self.resource,
                    &name,
                    vec![FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        managed::record_update(
            &self.resource,
            Some(&current.object),
            &mut new,
            &self.manager(),
            subresource,
        );
        let problems = kinds::validate(&self.resource, &new, Some(&current.object));
        if !problems.is_empty() {
            return Err(ApiError::invalid(&self.resource, &name, problems));
        }
        let dry_run = self.query.dry_run()?;
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        // The finalizers of a deleting object are gone: the object goes.
        if meta::is_deleting(&new)
            && meta::finalizers(&new).is_empty()
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0
            && self.resource.builtin != Some(Kind::Pod)
        {
            if dry_run {
                return Ok(json_response(code, &new, warnings));
            }
            return match self
                .state
                .storage
                .delete(&self.key(&name), current.revision)
                .await
            {
                Ok(revision) => {
                    meta::set_meta(
                        &mut new,
                        "resourceVersion",
                        Value::String(revision.to_string()),
                    );
                    self.after_write(&new);
                    Ok(json_response(code, &new, warnings))
                }
                Err(WriteError::Changed) => Err(ApiError::conflict(&self.resource, &name)),
                Err(WriteError::Missing) => Err(ApiError::not_found(&self.resource, &name)),
                Err(WriteError::Api(err)) => Err(err),
                Err(other) => Err(ApiError::Internal(format!("{other:?}"))),
            };
        }
        let mut unchanged = new.clone();
        let mut old = current.object.clone();
        for o in [&mut unchanged, &mut old] {
            meta::remove_meta(o, "resourceVersion");
            meta::remove_meta(o, "managedFields");
        }
        if unchanged == old {
            // A no-op write is not written: the resourceVersion stays.
            return Ok(json_response(code, &current.object, warnings));
        }
        if dry_run {
            meta::set_meta(
                &mut new,
                "resourceVersion",
                Value::String(current.revision.to_string()),
            );
            return Ok(json_response(code, &new, warnings));
        }
        match self
            .state
            .storage
            .update(&self.resource, &self.key(&name), &new, current.revision)
            .await
        {
            Ok(revision) => {
                meta::set_meta(
                    &mut new,
                    "resourceVersion",
                    Value::String(revision.to_string()),
                );
                self.after_write(&new);
                Ok(json_response(code, &new, warnings))
            }
            Err(WriteError::Changed) => Err(ApiError::conflict(&self.resource, &name)),
            Err(WriteError::Missing) => Err(ApiError::not_found(&self.resource, &name)),
            Err(WriteError::Api(err)) => Err(err),
            Err(other) => Err(ApiError::Internal(format!("{other:?}"))),
        }
    }

    /// `PUT` of an object (or its `status`).
    pub async fn update(&self, body: &Value) -> Result<Response, ApiError> {
        let policy = FieldValidation::parse(self.query.get("fieldValidation"))?;
        let (mut object, warnings) = kinds::admit(&self.resource, body, policy)?;
        self.place(&mut object)?;
        let name = self.name()?;
        let current = self.current(name).await?;
        self.write(
            &current,
            object,
            &warnings,
            self.request.subresource.as_deref(),
            false,
        )
        .await
    }

    /// `PATCH` of an object (or its `status`).
    pub async fn patch(&self, body: &[u8], content_type: &str) -> Result<Response, ApiError> {
        let kind =
            PatchType::from_content_type(content_type).ok_or_else(|| self.unsupported_patch())?;
        if kind == PatchType::Strategic && self.resource.builtin.is_none() {
            return Err(self.unsupported_patch());
        }
        let force = self.query.flag("force")?;
        if kind != PatchType::Apply && force {
            return Err(ApiError::Invalid {
                kind: "PatchOptions".into(),
                group: "meta.k8s.io".into(),
                name: String::new(),
                causes: vec![FieldError::forbidden(
                    "force",
                    "may not be specified for non-apply patch",
                )],
            });
        }
        let patch: Value = if kind == PatchType::Apply {
            serde_saphyr::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?
        };
        if kind == PatchType::Apply {
            return self.apply(&patch, force).await;
        }
        let policy = FieldValidation::parse(self.query.get("fieldValidation"))?;
        let name = self.name()?.to_owned();
        let pinned = patch.pointer("/metadata/resourceVersion").is_some();
        let mut last = None;
        for _ in 0..RETRIES {
            let current = self.current(&name).await?;
            let patched = match kind {
                PatchType::Merge => patch::merge(&current.object, &patch),
                PatchType::Json => {
                    patch::json(&current.object, &patch).map_err(|e| self.own_invalid(e, &name))?
                }
                PatchType::Strategic => {
                    patch::strategic(self.resource.builtin, &current.object, &patch)?
                }
                PatchType::Apply => return self.apply(&patch, force).await,
            };
            let (mut object, warnings) = kinds::admit(&self.resource, &patched, policy)
                .map_err(|e| self.own_invalid(e, &name))?;
            self.place(&mut object)?;
            // Not retried: another try would meet the same object.
            self.uid_precondition(&current, &object)?;
            if !pinned {
                meta::set_meta(
                    &mut object,
                    "resourceVersion",
                    Value::String(current.revision.to_string()),
                );
            }
            match self
                .write(
                    &current,
                    object,
                    &warnings,
                    self.request.subresource.as_deref(),
                    false,
                )
                .await
            {
                Err(ApiError::Conflict { .. }) if !pinned => {
                    last = Some(ApiError::conflict(&self.resource, &name));
                    continue;
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ApiError::conflict(&self.resource, &name)))
    }

    fn unsupported_patch(&self) -> ApiError {
        let types = if self.resource.builtin.is_some() {
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        };
        ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: {types}"
        ))
    }

    fn own_invalid(&self, err: ApiError, name: &str) -> ApiError {
        match err {
            ApiError::Invalid { kind, causes, .. } if kind.is_empty() => {
                ApiError::invalid(&self.resource, name, causes)
            }
            other => other,
        }
    }

    /// Server-side apply.
    async fn apply(&self, config: &Value, force: bool) -> Result<Response, ApiError> {
        let manager = self
            .query
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::Invalid {
                kind: "PatchOptions".into(),
                group: "meta.k8s.io".into(),
                name: String::new(),
                causes: vec![FieldError::required_because(
                    "fieldManager",
                    "is required for apply patch",
                )],
            })?;
        if config.get("apiVersion").and_then(Value::as_str) != Some(&self.resource.api_version()) {
            return Err(ApiError::BadRequest(format!(
                "Incorrect version specified in apply patch. Specified patch version: {}, expected: {}",
                config
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                self.resource.api_version()
            )));
        }
        if config
            .pointer("/metadata/managedFields")
            .is_some_and(|m| !m.is_null())
        {
            return Err(ApiError::BadRequest(
                "metadata.managedFields must be nil".into(),
            ));
        }
        let policy = FieldValidation::parse(self.query.get("fieldValidation"))?;
        // The configuration itself must be a valid object of the kind (unknown fields
        // under Strict are refused), but only what it says is applied.
        let (_, warnings) = kinds::admit(&self.resource, config, policy)?;
        let name = self.name()?.to_owned();
        let subresource = self.request.subresource.as_deref();
        let mut config = config.clone();
        self.place(&mut config)?;
        for _ in 0..RETRIES {
            let current = self
                .state
                .storage
                .get(&self.resource, self.namespace(), &name, true)
                .await?;
            let live = current
                .as_ref()
                .map(|c| c.object.clone())
                .unwrap_or_else(|| json!({}));
            let merged =
                managed::apply(&self.resource, &live, &config, manager, force, subresource)?;
            let (mut object, _) = kinds::admit(&self.resource, &merged, FieldValidation::Ignore)?;
            // admit rebuilds the object from the merged JSON: keep its managedFields.
            if let Some(fields) = merged.pointer("/metadata/managedFields") {
                meta::set_meta(&mut object, "managedFields", fields.clone());
            }
            match current {
                None => {
                    kinds::on_create(&self.resource, &mut object);
                    let problems = kinds::validate(&self.resource, &object, None);
                    if !problems.is_empty() {
                        return Err(ApiError::invalid(&self.resource, &name, problems));
                    }
                    self.check_namespace_open(&name).await?;
                    if self.query.dry_run()? {
                        return Ok(json_response(StatusCode::CREATED, &object, &warnings));
                    }
                    let namespace_key = self
                        .namespace()
                        .map(|ns| self.state.registry.builtin(Kind::Namespace).key(None, ns));
                    match self
                        .state
                        .storage
                        .create(
                            &self.resource,
                            &self.key(&name),
                            &object,
                            namespace_key.as_deref(),
                        )
                        .await
                    {
                        Ok(revision) => {
                            meta::set_meta(
                                &mut object,
                                "resourceVersion",
                                Value::String(revision.to_string()),
                            );
                            self.after_write(&object);
                            return Ok(json_response(StatusCode::CREATED, &object, &warnings));
                        }
                        Err(WriteError::Exists) => continue,
                        Err(WriteError::NoNamespace) => {
                            return Err(ApiError::NotFound {
                                resource: "namespaces".into(),
                                kind: "namespaces".into(),
                                group: String::new(),
                                name: self.namespace().unwrap_or("").to_owned(),
                            });
                        }
                        Err(WriteError::Api(err)) => return Err(err),
                        Err(other) => return Err(ApiError::Internal(format!("{other:?}"))),
                    }
                }
                Some(current) => {
                    meta::set_meta(
                        &mut object,
                        "resourceVersion",
                        Value::String(current.revision.to_string()),
                    );
                    let status_only = subresource == Some("status");
                    kinds::on_update(&self.resource, &mut object, &current.object, status_only);
                    let problems = kinds::validate(&self.resource, &object, Some(&current.object));
                    if !problems.is_empty() {
                        return Err(ApiError::invalid(&self.resource, &name, problems));
                    }
                    let mut a = object.clone();
                    let mut b = current.object.clone();
                    for o in [&mut a, &mut b] {
                        meta::remove_meta(o, "resourceVersion");
                        if let Some(fields) = o
                            .pointer_mut("/metadata/managedFields")
                            .and_then(Value::as_array_mut)
                        {
                            for entry in fields {
                                if let Some(e) = entry.as_object_mut() {
                                    e.remove("time");
                                }
                            }
                        }
                    }
                    if a == b {
                        return Ok(json_response(StatusCode::OK, &current.object, &warnings));
                    }
                    if self.query.dry_run()? {
                        return Ok(json_response(StatusCode::OK, &object, &warnings));
                    }
                    match self
                        .state
                        .storage
                        .update(&self.resource, &self.key(&name), &object, current.revision)
                        .await
                    {
                        Ok(revision) => {
                            meta::set_meta(
                                &mut object,
                                "resourceVersion",
                                Value::String(revision.to_string()),
                            );
                            self.after_write(&object);
                            return Ok(json_response(StatusCode::OK, &object, &warnings));
                        }
                        Err(WriteError::Changed | WriteError::Missing) => continue,
                        Err(WriteError::Api(err)) => return Err(err),
                        Err(other) => return Err(ApiError::Internal(format!("{other:?}"))),
                    }
                }
            }
        }
        Err(ApiError::conflict(&self.resource, &name))
    }

    fn delete_options(
        &self,
        body: &Value,
    ) -> Result<(Option<i64>, Option<String>, Value), ApiError> {
        let grace = match body.get("gracePeriodSeconds").and_then(Value::as_i64) {
            Some(g) => Some(g),
            None => self.query.number("gracePeriodSeconds")?,
        };
        let mut policy = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| self.query.get("propagationPolicy").map(str::to_owned));
        let orphan = body.get("orphanDependents").and_then(Value::as_bool).or(
            match self.query.get("orphanDependents") {
                Some(_) => Some(self.query.flag("orphanDependents")?),
                None => None,
            },
        );
        match (orphan, &policy) {
            (Some(_), Some(_)) => {
                return Err(ApiError::Invalid {
                    kind: "DeleteOptions".into(),
                    group: String::new(),
                    name: String::new(),
                    causes: vec![FieldError::invalid(
                        "propagationPolicy",
                        &json!(policy),
                        "orphanDependents and deletionPropagation cannot be both set",
                    )],
                });
            }
            (Some(true), None) => policy = Some("Orphan".into()),
            (Some(false), None) => policy = Some("Background".into()),
            _ => {}
        }
        if let Some(p) = &policy
            && !matches!(p.as_str(), "Foreground" | "Background" | "Orphan")
        {
            return Err(ApiError::Invalid {
                kind: "DeleteOptions".into(),
                group: String::new(),
                name: String::new(),
                causes: vec![FieldError::not_supported(
                    "propagationPolicy",
                    &Value::String(p.clone()),
                    &["Foreground", "Background", "Orphan", "nil"],
                )],
            });
        }
        Ok((
            grace,
            policy,
            body.get("preconditions").cloned().unwrap_or(Value::Null),
        ))
    }

    /// `DELETE` of one object; the body of the answer and its code.
    async fn delete_one(&self, name: &str, body: &Value) -> Result<(StatusCode, Value), ApiError> {
        let (grace, policy, preconditions) = self.delete_options(body)?;
        let dry_run = self.query.dry_run()?;
        for _ in 0..RETRIES {
            let current = self.current(name).await?;
            if let Some(uid) = preconditions.get("uid").and_then(Value::as_str)
                && meta::meta_str(&current.object, "uid") != Some(uid)
            {
                return Err(ApiError::conflict_because(
                    &self.resource,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::meta_str(&current.object, "uid").unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = preconditions.get("resourceVersion").and_then(Value::as_str)
                && rv != current.revision.to_string()
            {
                return Err(ApiError::conflict_because(
                    &self.resource,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        current.revision
                    ),
                ));
            }
            if self.resource.builtin == Some(Kind::Namespace) {
                if matches!(name, "default" | "kube-system" | "kube-public") {
                    return Err(ApiError::Forbidden {
                        message: format!(
                            "namespaces {name:?} is forbidden: this namespace may not be deleted"
                        ),
                        resource: "namespaces".into(),
                        group: String::new(),
                        name: Some(name.to_owned()),
                    });
                }
                if meta::is_deleting(&current.object) {
                    return Err(ApiError::conflict_because(
                        &self.resource,
                        name,
                        "The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system.",
                    ));
                }
            }
            let mut object = current.object.clone();
            let mut finalizers = meta::finalizers(&object);
            let policy = policy
                .clone()
                .unwrap_or_else(|| kinds::default_propagation(&self.resource).to_owned());
            let had = finalizers.clone();
            if !meta::is_deleting(&object) {
                finalizers.retain(|f| f != "orphan" && f != "foregroundDeletion");
                match policy.as_str() {
                    "Orphan" if has_dependents_possible(&self.resource) => {
                        finalizers.push("orphan".into())
                    }
                    "Foreground" if has_dependents_possible(&self.resource) => {
                        finalizers.push("foregroundDeletion".into())
                    }
                    _ => {}
                }
            }
            if finalizers != had {
                meta::set_meta(&mut object, "finalizers", json!(finalizers));
            }
            let decision = kinds::deletion(&self.resource, &object, grace);
            let write = match decision {
                Deletion::Now => None,
                Deletion::Graceful { grace } => {
                    let already = meta::is_deleting(&object);
                    let current_grace = object
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64);
                    if already && current_grace.is_some_and(|g| g <= grace) && finalizers == had {
                        return Ok((StatusCode::OK, current.object));
                    }
                    meta::set_meta(
                        &mut object,
                        "deletionTimestamp",
                        Value::String(meta::after(grace)),
                    );
                    meta::set_meta(&mut object, "deletionGracePeriodSeconds", json!(grace));
                    if !already
                        && let Some(g) = object
                            .pointer("/metadata/generation")
                            .and_then(Value::as_i64)
                    {
                        meta::set_meta(&mut object, "generation", json!(g + 1));
                    }
                    if self.resource.builtin == Some(Kind::Namespace) {
                        object["status"] = json!({"phase": "Terminating"});
                    }
                    Some(object)
                }
            };
            if dry_run {
                return Ok((StatusCode::OK, write.unwrap_or(current.object)));
            }
            let key = self.key(name);
            match write {
                Some(mut object) => match self
                    .state
                    .storage
                    .update(&self.resource, &key, &object, current.revision)
                    .await
                {
                    Ok(revision) => {
                        meta::set_meta(
                            &mut object,
                            "resourceVersion",
                            Value::String(revision.to_string()),
                        );
                        self.after_write(&object);
                        if self.resource.builtin == Some(Kind::Namespace) {
                            self.state.namespace_terminating(name);
                        }
                        return Ok((StatusCode::OK, object));
                    }
                    Err(WriteError::Changed) => continue,
                    Err(WriteError::Missing) => {
                        return Err(ApiError::not_found(&self.resource, name));
                    }
                    Err(WriteError::Api(err)) => return Err(err),
                    Err(other) => return Err(ApiError::Internal(format!("{other:?}"))),
                },
                None => match self.state.storage.delete(&key, current.revision).await {
                    Ok(_) => {
                        self.after_write(&current.object);
                        let body = if kinds::returns_deleted_object(&self.resource) {
                            current.object
                        } else {
                            let mut details = json!({"name": name, "kind": self.resource.plural});
                            if !self.resource.group.is_empty() {
                                details["group"] = json!(self.resource.group);
                            }
                            if let Some(uid) = meta::meta_str(&current.object, "uid") {
                                details["uid"] = json!(uid);
                            }
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
                        };
                        return Ok((StatusCode::OK, body));
                    }
                    Err(WriteError::Changed) => continue,
                    Err(WriteError::Missing) => {
                        return Err(ApiError::not_found(&self.resource, name));
                    }
                    Err(WriteError::Api(err)) => return Err(err),
                    Err(other) => return Err(ApiError::Internal(format!("{other:?}"))),
                },
            }
        }
        Err(ApiError::conflict(&self.resource, name))
    }

    /// `DELETE` of an object.
    pub async fn delete(&self, body: &Value) -> Result<Response, ApiError> {
        let name = self.name()?.to_owned();
        let (code, body) = self.delete_one(&name, body).await?;
        Ok(json_response(code, &body, &[]))
    }

    /// `DELETE` of a collection: each selected object, as a single delete would.
    pub async fn delete_collection(&self, body: &Value) -> Result<Response, ApiError> {
        let (labels, fields) = self.selectors()?;
        let prefix = self.resource.namespace_prefix(self.namespace());
        let page = self
            .state
            .storage
            .list(&prefix, None, None, None, true)
            .await?;
        let mut deleted = Vec::new();
        for stored in page.items {
            if !self.matches(&stored.object, &labels, &fields) {
                continue;
            }
            match self.delete_one(meta::name_of(&stored.object), body).await {
                Ok((_, object)) => deleted.push(if object["kind"] == "Status" {
                    stored.object
                } else {
                    object
                }),
                Err(ApiError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        let list = json!({
            "kind": self.resource.list_kind,
            "apiVersion": self.resource.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": deleted,
        });
        Ok(json_response(StatusCode::OK, &list, &[]))
    }

    /// The `Scale` of an object.
    fn scale_of(&self, object: &Value) -> Result<Value, ApiError> {
        let paths = self.resource.scale.as_ref().ok_or(ApiError::NoSuchPath)?;
        let selector = match paths
            .label_selector
            .as_ref()
            .and_then(|p| object.pointer(p))
        {
            Some(Value::String(s)) => s.clone(),
            Some(selector) => LabelSelector::from_object(selector)
                .map(|s| s.to_query())
                .unwrap_or_default(),
            None => String::new(),
        };
        let meta = &object["metadata"];
        let mut status = json!({"replicas": object.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0)});
        if !selector.is_empty() {
            status["selector"] = Value::String(selector);
        }
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": object.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0)},
            "status": status,
        }))
    }

    /// `GET`, `PUT` and `PATCH` of `scale`.
    pub async fn scale(
        &self,
        method: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<Response, ApiError> {
        let paths = self.resource.scale.clone().ok_or(ApiError::NoSuchPath)?;
        let name = self.name()?.to_owned();
        for _ in 0..RETRIES {
            let current = self.current(&name).await?;
            let scale = self.scale_of(&current.object)?;
            if method == "GET" {
                return Ok(json_response(StatusCode::OK, &scale, &[]));
            }
            let wanted = if method == "PUT" {
                serde_json::from_slice::<Value>(body)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?
            } else {
                let patch: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
                match PatchType::from_content_type(content_type) {
                    Some(PatchType::Merge | PatchType::Strategic) => patch::merge(&scale, &patch),
                    Some(PatchType::Json) => patch::json(&scale, &patch)?,
                    _ => return Err(self.unsupported_patch()),
                }
            };
            let replicas = wanted
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::Invalid {
                    kind: "Scale".into(),
                    group: "autoscaling".into(),
                    name: name.clone(),
                    causes: vec![FieldError::invalid(
                        "spec.replicas",
                        &json!(replicas),
                        "must be greater than or equal to 0",
                    )],
                });
            }
            if let Some(rv) = wanted
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                && !rv.is_empty()
                && method == "PUT"
                && rv != current.revision.to_string()
            {
                return Err(ApiError::conflict(&self.resource, &name));
            }
            let mut object = current.object.clone();
            if let Some(slot) = object.pointer_mut(&paths.spec_replicas) {
                *slot = json!(replicas);
            } else if let Some(parent) = object
                .pointer_mut(paths.spec_replicas.rsplit_once('/').map_or("", |(p, _)| p))
                .and_then(Value::as_object_mut)
            {
                let field = paths.spec_replicas.rsplit('/').next().unwrap_or("replicas");
                parent.insert(field.to_owned(), json!(replicas));
            }
            meta::set_meta(
                &mut object,
                "resourceVersion",
                Value::String(current.revision.to_string()),
            );
            match self
                .write(&current, object, &[], Some("scale"), false)
                .await
            {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let bytes = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    let written: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    let _ = parts;
                    return Ok(json_response(
                        StatusCode::OK,
                        &self.scale_of(&written)?,
                        &[],
                    ));
                }
                Err(ApiError::Conflict { .. }) if method == "PATCH" => continue,
                Err(err) => return Err(err),
            }
        }
        Err(ApiError::conflict(&self.resource, &name))
    }

    /// `POST pods/<name>/binding`: assigns the pod to a node, once.
    pub async fn bind(&self, body: &Value) -> Result<Response, ApiError> {
        let name = self.name()?.to_owned();
        let node = body
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() {
            return Err(ApiError::Invalid {
                kind: "Binding".into(),
                group: String::new(),
                name: name.clone(),
                causes: vec![FieldError::required("target.name")],
            });
        }
        for _ in 0..RETRIES {
            let current = self.current(&name).await?;
            if let Some(uid) = body.pointer("/metadata/uid").and_then(Value::as_str)
                && meta::meta_str(&current.object, "uid") != Some(uid)
            {
                return Err(ApiError::conflict_because(
                    &self.resource,
                    &name,
                    "the UID in the binding does not match the pod",
                ));
            }
            if meta::is_deleting(&current.object) {
                return Err(ApiError::conflict_because(
                    &self.resource,
                    &name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            match current
                .object
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
            {
                Some(existing) if !existing.is_empty() => {
                    return Err(ApiError::conflict_because(
                        &self.resource,
                        &name,
                        &format!("pod {name} is already assigned to node {existing:?}"),
                    ));
                }
                _ => {}
            }
            let mut object = current.object.clone();
            object["spec"]["nodeName"] = Value::String(node.to_owned());
            let mut conditions = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
            object["status"]["conditions"] = Value::Array(conditions);
            meta::set_meta(
                &mut object,
                "resourceVersion",
                Value::String(current.revision.to_string()),
            );
            managed::record_update(
                &self.resource,
                Some(&current.object),
                &mut object,
                &self.manager(),
                Some("binding"),
            );
            match self
                .state
                .storage
                .update(&self.resource, &self.key(&name), &object, current.revision)
                .await
            {
                Ok(_) => {
                    return Ok(json_response(
                        StatusCode::CREATED,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                        &[],
                    ));
                }
                Err(WriteError::Changed) => continue,
                Err(WriteError::Missing) => return Err(ApiError::not_found(&self.resource, &name)),
                Err(WriteError::Api(err)) => return Err(err),
                Err(other) => return Err(ApiError::Internal(format!("{other:?}"))),
            }
        }
        Err(ApiError::conflict(&self.resource, &name))
    }

    /// `PUT namespaces/<name>/finalize`: sets `spec.finalizers` (the namespace
    /// controller empties it when the namespace's content is gone).
    pub async fn finalize(&self, body: &Value) -> Result<Response, ApiError> {
        let name = self.name()?.to_owned();
        let current = self.current(&name).await?;
        let mut object = current.object.clone();
        object["spec"]["finalizers"] = body
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        let empty = object
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if empty && meta::is_deleting(&object) && meta::finalizers(&object).is_empty() {
            return match self
                .state
                .storage
                .delete(&self.key(&name), current.revision)
                .await
            {
                Ok(_) => Ok(json_response(StatusCode::OK, &object, &[])),
                Err(WriteError::Changed) => Err(ApiError::conflict(&self.resource, &name)),
                Err(WriteError::Missing) => Err(ApiError::not_found(&self.resource, &name)),
                Err(WriteError::Api(err)) => Err(err),
                Err(other) => Err(ApiError::Internal(format!("{other:?}"))),
            };
        }
        match self
            .state
            .storage
            .update(&self.resource, &self.key(&name), &object, current.revision)
            .await
        {
            Ok(revision) => {
                meta::set_meta(
                    &mut object,
                    "resourceVersion",
                    Value::String(revision.to_string()),
                );
                Ok(json_response(StatusCode::OK, &object, &[]))
            }
            Err(WriteError::Changed) => Err(ApiError::conflict(&self.resource, &name)),
            Err(WriteError::Missing) => Err(ApiError::not_found(&self.resource, &name)),
            Err(WriteError::Api(err)) => Err(err),
            Err(other) => Err(ApiError::Internal(format!("{other:?}"))),
        }
    }

    /// `POST serviceaccounts/<name>/token`: a TokenRequest answered with a signed token.
    pub async fn token(&self, body: &Value) -> Result<Response, ApiError> {
        let name = self.name()?.to_owned();
        let tokens =
            self.state.tokens.as_ref().ok_or_else(|| {
                ApiError::Unavailable("this server has no token signing key".into())
            })?;
        let account = self.current(&name).await?;
        let seconds = body
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        if seconds < 600 {
            return Err(invalid_token_request(
                &name,
                "spec.expirationSeconds",
                &json!(seconds),
                "may not specify a duration less than 10 minutes",
            ));
        }
        let seconds = seconds.min(48 * 3600);
        let bound = self.bound_object(&name, body).await?;
        let for_a_pod = bound.as_ref().is_some_and(|b| b.kind == BoundKind::Pod);
        let valid_for = if for_a_pod && seconds == service_accounts::TOKEN_SECONDS {
            service_accounts::EXTENDED_TOKEN_SECONDS
        } else {
            seconds
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expires = now + seconds;
        let audiences: Vec<String> = body
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let claims = crate::auth::TokenClaims {
            namespace: self.namespace().unwrap_or("default").to_owned(),
            name: name.clone(),
            uid: meta::meta_str(&account.object, "uid")
                .unwrap_or("")
                .to_owned(),
            expires: now + valid_for,
            bound: bound.clone(),
        };
        let token = tokens.issue(&claims, &audiences)?;
        let stamp = time::OffsetDateTime::from_unix_timestamp(expires)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let answer = json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": self.namespace(), "creationTimestamp": null},
            "spec": {
                "audiences": if audiences.is_empty() { vec![crate::auth::TOKEN_ISSUER.to_owned()] } else { audiences },
                "expirationSeconds": seconds,
                "boundObjectRef": bound.map(|b| json!({"kind": b.kind.as_str(), "apiVersion": "v1", "name": b.name, "uid": b.uid})),
            },
            "status": {"token": token, "expirationTimestamp": stamp},
        });
        Ok(json_response(StatusCode::CREATED, &answer, &[]))
    }

    /// The object a TokenRequest for `account` binds its token to
    /// (`spec.boundObjectRef`, `None` when it names none): a pod or a Secret, which must
    /// exist in the account's namespace, with the uid the reference gives if it gives
    /// one.
    async fn bound_object(
        &self,
        account: &str,
        body: &Value,
    ) -> Result<Option<BoundObject>, ApiError> {
        let Some(reference) = body
            .pointer("/spec/boundObjectRef")
            .filter(|r| !r.is_null())
        else {
            return Ok(None);
        };
        let kind = &reference["kind"];
        let (bound_kind, registry_kind) = match kind.as_str() {
            Some("Pod") => (BoundKind::Pod, Kind::Pod),
            Some("Secret") => (BoundKind::Secret, Kind::Secret),
            _ => {
                return Err(invalid_token_request(
                    account,
                    "spec.boundObjectRef.kind",
                    kind,
                    "supported values: \"Pod\", \"Secret\"",
                ));
            }
        };
        let Some(name) = reference["name"].as_str().filter(|n| !n.is_empty()) else {
            return Err(invalid_token_request(
                account,
                "spec.boundObjectRef.name",
                &reference["name"],
                "must name the object",
            ));
        };
        let resource = self.state.registry.builtin(registry_kind);
        let object = self
            .state
            .storage
            .get(&resource, self.namespace(), name, true)
            .await?
            .ok_or_else(|| ApiError::not_found(&resource, name))?;
        let uid = meta::meta_str(&object.object, "uid")
            .unwrap_or("")
            .to_owned();
        if let Some(wanted) = reference["uid"].as_str().filter(|u| !u.is_empty())
            && wanted != uid
        {
            return Err(ApiError::conflict_because(
                &resource,
                name,
                &format!(
                    "the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        Ok(Some(BoundObject {
            kind: bound_kind,
            name: name.to_owned(),
            uid,
        }))
    }

    /// Fills a new `kubernetes.io/service-account-token` Secret as Kubernetes' token
    /// controller does: `data.token` (a token bound to this Secret, so it lasts until
    /// the Secret is deleted), `data["ca.crt"]` and `data.namespace`, and notes the
    /// account's uid. The account named by the `kubernetes.io/service-account.name`
    /// annotation must exist. Other Secrets are left alone.
    async fn fill_account_token(&self, secret: &mut Value) -> Result<(), ApiError> {
        if secret["type"] != service_accounts::TOKEN_SECRET_TYPE {
            return Ok(());
        }
        let name = meta::name_of(secret).to_owned();
        let field = format!(
            "metadata.annotations[{}]",
            service_accounts::ACCOUNT_NAME_ANNOTATION
        );
        let Some(account_name) = secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(service_accounts::ACCOUNT_NAME_ANNOTATION))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
        else {
            return Err(ApiError::invalid(
                &self.resource,
                &name,
                vec![FieldError::required(field)],
            ));
        };
        let accounts = self.state.registry.builtin(Kind::ServiceAccount);
        let Some(account) = self
            .state
            .storage
            .get(&accounts, self.namespace(), &account_name, true)
            .await?
        else {
            return Err(ApiError::invalid(
                &self.resource,
                &name,
                vec![FieldError::invalid(
                    field,
                    &json!(account_name),
                    &format!("serviceaccount {account_name:?} not found"),
                )],
            ));
        };
        let tokens =
            self.state.tokens.as_ref().ok_or_else(|| {
                ApiError::Unavailable("this server has no token signing key".into())
            })?;
        let namespace = self.namespace().unwrap_or("default").to_owned();
        let account_uid = meta::meta_str(&account.object, "uid")
            .unwrap_or("")
            .to_owned();
        let claims = crate::auth::TokenClaims {
            namespace: namespace.clone(),
            name: account_name,
            uid: account_uid.clone(),
            expires: time::OffsetDateTime::now_utc().unix_timestamp()
                + service_accounts::SECRET_TOKEN_SECONDS,
            bound: Some(BoundObject {
                kind: BoundKind::Secret,
                name: name.clone(),
                uid: meta::meta_str(secret, "uid").unwrap_or("").to_owned(),
            }),
        };
        let token = tokens.issue(&claims, &[])?;
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let data = &mut secret["data"];
        if !data.is_object() {
            *data = json!({});
        }
        data["token"] = json!(encode(&token));
        data[service_accounts::ROOT_CA_KEY] = json!(encode(&self.state.ca_cert));
        data["namespace"] = json!(encode(&namespace));
        let annotations = &mut secret["metadata"]["annotations"];
        annotations[service_accounts::ACCOUNT_UID_ANNOTATION] = json!(account_uid);
        Ok(())
    }

    /// SelfSubjectAccessReview and SelfSubjectRulesReview.
    async fn review(&self, body: &Value) -> Result<Response, ApiError> {
        let (object, _) = kinds::admit(&self.resource, body, FieldValidation::Ignore)?;
        let mut answer = object.clone();
        match self.resource.builtin {
            Some(Kind::SelfSubjectAccessReview) => {
                let attributes = if let Some(r) = object.pointer("/spec/resourceAttributes") {
                    crate::rbac::Attributes::Resource {
                        verb: r["verb"].as_str().unwrap_or("").to_owned(),
                        group: r["group"].as_str().unwrap_or("").to_owned(),
                        resource: r["resource"].as_str().unwrap_or("").to_owned(),
                        subresource: r["subresource"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned),
                        namespace: r["namespace"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned),
                        name: r["name"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned),
                    }
                } else if let Some(n) = object.pointer("/spec/nonResourceAttributes") {
                    crate::rbac::Attributes::Path {
                        verb: n["verb"].as_str().unwrap_or("").to_owned(),
                        path: n["path"].as_str().unwrap_or("").to_owned(),
                    }
                } else {
                    return Err(ApiError::Invalid {
                        kind: "SelfSubjectAccessReview".into(),
                        group: "authorization.k8s.io".into(),
                        name: String::new(),
                        causes: vec![FieldError::required_because(
                            "spec.resourceAttributes",
                            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                        )],
                    });
                };
                let allowed = self.state.authorizer.allows(self.user, &attributes);
                answer["status"] = if allowed {
                    json!({"allowed": true, "reason": "RBAC: allowed by the user's bindings"})
                } else {
                    json!({"allowed": false})
                };
            }
            Some(Kind::SelfSubjectRulesReview) => {
                let namespace = object.pointer("/spec/namespace").and_then(Value::as_str);
                let rules = if self.user.in_group("system:masters") {
                    vec![
                        json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                        json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
                    ]
                } else {
                    self.state.authorizer.rules_for(self.user, namespace)
                };
                let (resource_rules, non_resource): (Vec<Value>, Vec<Value>) = rules
                    .into_iter()
                    .partition(|r| r.get("nonResourceURLs").is_none());
                let resource_rules: Vec<Value> = resource_rules
                    .into_iter()
                    .map(|r| json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"], "resourceNames": r.get("resourceNames").cloned().unwrap_or(json!([]))}))
                    .collect();
                let non_resource: Vec<Value> = non_resource
                    .into_iter()
                    .map(|r| json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}))
                    .collect();
                answer["status"] = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource, "incomplete": false});
            }
            _ => return Err(ApiError::MethodNotAllowed("create only".into())),
        }
        meta::set_meta(&mut answer, "creationTimestamp", Value::Null);
        Ok(json_response(StatusCode::CREATED, &answer, &[]))
    }
}

fn has_dependents_possible(resource: &ResourceType) -> bool {
    resource.builtin != Some(Kind::Namespace)
}

struct Encoder {
    resource: Arc<ResourceType>,
    representation: Representation,
    include: IncludeObject,
    headers_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, object: &Value) -> Value {
        let object = match self.representation {
            Representation::Object => object.clone(),
            Representation::Metadata => tables::partial_metadata(object),
            Representation::Table => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let table = tables::table(
                    &self.resource,
                    std::slice::from_ref(object),
                    json!({"resourceVersion": rv}),
                    self.include,
                    !self.headers_sent,
                );
                self.headers_sent = true;
                table
            }
        };
        json!({"type": kind, "object": object})
    }
}

fn bookmark(resource: &ResourceType, revision: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata}})
}

async fn requested_initial_bookmark<F, Fut>(
    send: &F,
    resource: &ResourceType,
    revision: u64,
) -> Result<(), ()>
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if send(bookmark(resource, revision, true)).await {
        Ok(())
    } else {
        Err(())
    }
}

fn rand_seconds(max: u64) -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes) % max.max(1)
}

/// A `continue` token: the revision of the first page and the key to go on from.
pub fn encode_continue(revision: u64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": start});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// Reads a `continue` token.
pub fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("invalid continue token: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad("continue key is not valid"))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|_| bad("continue key is not valid"))?;
    if value["v"] != "meta.k8s.io/v1" {
        return Err(bad("server does not recognize this encoded version"));
    }
    let rv = value["rv"]
        .as_i64()
        .ok_or_else(|| bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    let start = value["start"].as_str().unwrap_or("");
    if start.is_empty() {
        return Err(bad("encoded start key empty (version meta.k8s.io/v1)"));
    }
    if start.contains("..") || start.starts_with('/') {
        return Err(bad("continue key is not valid"));
    }
    Ok((u64::try_from(rv).unwrap_or(0), start.to_owned()))
}

/// 422 for a TokenRequest for the ServiceAccount `account`, naming the bad `field`.
fn invalid_token_request(account: &str, field: &str, value: &Value, why: &str) -> ApiError {
    ApiError::Invalid {
        kind: "TokenRequest".into(),
        group: "authentication.k8s.io".into(),
        name: account.to_owned(),
        causes: vec![FieldError::invalid(field, value, why)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_refuse_tampering() {
        let token = encode_continue(42, "ns1/web-7\u{0}");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, "ns1/web-7\u{0}".to_owned())
        );
        assert!(decode_continue("not-a-token").is_err());
        let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"v":"meta.k8s.io/v1","rv":1,"start":"../x"}"#);
        assert!(decode_continue(&evil).is_err());
    }
}
