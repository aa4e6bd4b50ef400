//! Field management: `metadata.managedFields` and server-side apply. Every write
//! records which manager set which fields (an `Update` entry for create, update and
//! patch; an `Apply` entry for server-side apply), in the `FieldsV1` form kubectl and
//! client-go read. A server-side apply merges the applied configuration into the
//! object (maps by key, associative lists by their keys, atomic values whole), removes
//! what the manager applied before and applies no more (unless another manager owns
//! it), and refuses to change fields another manager owns unless forced — the rules of
//! Kubernetes' structured-merge-diff.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::patch::{ListStrategy, list_strategy};
use crate::registry::{Kind, ResourceType};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    /// A field of an object: `f:<name>`.
    Field(String),
    /// An item of an associative list, by its key fields: `k:{…}` (the JSON, keys
    /// sorted).
    Key(String),
    /// An item of a set: `v:<json>`.
    Value(String),
    /// An item of a list by position: `i:<n>`.
    Index(usize),
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Elem::Field(f) => format!("f:{f}"),
            Elem::Key(k) => format!("k:{k}"),
            Elem::Value(v) => format!("v:{v}"),
            Elem::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_at_checked(2)?;
        Some(match kind {
            "f:" => Elem::Field(rest.to_owned()),
            "k:" => Elem::Key(rest.to_owned()),
            "v:" => Elem::Value(rest.to_owned()),
            "i:" => Elem::Index(rest.parse().ok()?),
            _ => return None,
        })
    }

    /// How conflict messages show it: `.spec`, `[name="web"]`.
    fn display(&self) -> String {
        match self {
            Elem::Field(f) => format!(".{f}"),
            Elem::Key(k) => {
                let parsed: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = parsed
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s:?}"),
                        other => format!("{k}={other}"),
                    })
                    .collect();
                format!("[{}]", parts.join(","))
            }
            Elem::Value(v) => format!("[={v}]"),
            Elem::Index(i) => format!("[{i}]"),
        }
    }
}

/// A field path.
pub type Path = Vec<Elem>;

/// A set of field paths.
pub type FieldSet = BTreeSet<Path>;

fn display(path: &Path) -> String {
    path.iter().map(Elem::display).collect()
}

/// The structure-merge rules of one resource type.
struct Rules<'a> {
    resource: &'a ResourceType,
}

/// How SSA treats a list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

impl Rules<'_> {
    fn names(path: &Path) -> Vec<String> {
        path.iter()
            .filter_map(|e| match e {
                Elem::Field(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    fn kind(&self) -> Option<Kind> {
        self.resource.builtin
    }

    fn list_type(&self, path: &Path) -> ListType {
        let names = Self::names(path);
        if self.kind().is_none() {
            return self.custom_list_type(&names);
        }
        match list_strategy(self.kind(), &names) {
            ListStrategy::Replace => ListType::Atomic,
            ListStrategy::Primitive => ListType::Set,
            ListStrategy::ByKey("containerPort") => keys(&["containerPort", "protocol"]),
            ListStrategy::ByKey("port") => keys(&["port", "protocol"]),
            ListStrategy::ByKey("topologyKey") => keys(&["topologyKey", "whenUnsatisfiable"]),
            ListStrategy::ByKey(key) => {
                if matches!(names.last().map(String::as_str), Some("hostIPs"))
                    || (self.kind() == Some(Kind::Job)
                        && names.last().map(String::as_str) == Some("conditions"))
                {
                    ListType::Atomic
                } else {
                    keys(&[key])
                }
            }
        }
    }

    fn custom_list_type(&self, names: &[String]) -> ListType {
        let Some(custom) = &self.resource.custom else {
            return ListType::Atomic;
        };
        let mut schema = &custom.schema;
        for name in names {
            let next = schema
                .get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| {
                    schema
                        .get("items")
                        .and_then(|i| i.get("properties"))
                        .and_then(|p| p.get(name))
                });
            match next {
                Some(s) => schema = s,
                None => return ListType::Atomic,
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => {
                let keys: Vec<String> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| {
                        k.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                if keys.is_empty() {
                    ListType::Atomic
                } else {
                    ListType::Map(keys)
                }
            }
            _ => ListType::Atomic,
        }
    }

    /// Structs and maps owned as a whole.
    fn atomic_object(&self, path: &Path) -> bool {
        let names = Self::names(path);
        let last = names.last().map(String::as_str);
        self.kind().is_some()
            && matches!(
                last,
                Some(
                    "nodeSelector"
                        | "selector"
                        | "podSelector"
                        | "namespaceSelector"
                        | "labelSelector"
                        | "roleRef"
                        | "involvedObject"
                )
            )
    }
}

fn keys(names: &[&str]) -> ListType {
    ListType::Map(names.iter().map(|n| (*n).to_owned()).collect())
}

fn key_of(item: &Value, keys: &[String]) -> String {
    let mut map = Map::new();
    for key in keys {
        match item.get(key) {
            Some(v) => {
                map.insert(key.clone(), v.clone());
            }
            // SSA defaults a missing protocol to TCP for the key.
            None if key == "protocol" => {
                map.insert("protocol".into(), Value::String("TCP".into()));
            }
            None => {}
        }
    }
    // serde_json maps are sorted by key.
    Value::Object(map).to_string()
}

/// Every field path of `value` under `path`, with the value at each leaf (`None` for
/// an associative-list item or an empty map, which are members themselves).
fn leaves(
    rules: &Rules<'_>,
    value: &Value,
    path: &mut Path,
    out: &mut BTreeMap<Path, Option<Value>>,
) {
    match value {
        Value::Object(map) if !rules.atomic_object(path) && !map.is_empty() => {
            for (key, inner) in map {
                path.push(Elem::Field(key.clone()));
                leaves(rules, inner, path, out);
                path.pop();
            }
        }
        Value::Array(items) => match rules.list_type(path) {
            ListType::Atomic => {
                out.insert(path.clone(), Some(value.clone()));
            }
            ListType::Set => {
                if items.is_empty() {
                    out.insert(path.clone(), Some(value.clone()));
                }
                for item in items {
                    path.push(Elem::Value(item.to_string()));
                    out.insert(path.clone(), Some(Value::Bool(true)));
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                if items.is_empty() {
                    out.insert(path.clone(), Some(value.clone()));
                }
                for item in items {
                    path.push(Elem::Key(key_of(item, &keys)));
                    out.insert(path.clone(), None);
                    leaves(rules, item, path, out);
                    path.pop();
                }
            }
        },
        other => {
            out.insert(path.clone(), Some(other.clone()));
        }
    }
}

/// The fields of an object that managers own: everything but the identity and
/// bookkeeping metadata (and `status` on the main resource of kinds with a status
/// subresource, or everything but `status` on `/status`).
fn object_leaves(
    rules: &Rules<'_>,
    object: &Value,
    subresource: Option<&str>,
) -> BTreeMap<Path, Option<Value>> {
    let mut out = BTreeMap::new();
    let Value::Object(map) = object else {
        return out;
    };
    for (key, value) in map {
        if matches!(key.as_str(), "apiVersion" | "kind") {
            continue;
        }
        let status_field = key == "status";
        match subresource {
            Some("status") if !status_field => continue,
            None if status_field && rules.resource.status => continue,
            _ => {}
        }
        if key == "metadata" {
            let Value::Object(meta) = value else { continue };
            for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                if let Some(inner) = meta.get(field) {
                    let mut path = vec![Elem::Field("metadata".into()), Elem::Field(field.into())];
                    leaves(rules, inner, &mut path, &mut out);
                }
            }
            continue;
        }
        let mut path = vec![Elem::Field(key.clone())];
        leaves(rules, value, &mut path, &mut out);
    }
    out
}

/// The paths that differ between `before` and `after` (changed, added or removed).
fn changed(
    before: &BTreeMap<Path, Option<Value>>,
    after: &BTreeMap<Path, Option<Value>>,
) -> (FieldSet, FieldSet) {
    let mut modified = FieldSet::new();
    let mut removed = FieldSet::new();
    for (path, value) in after {
        if before.get(path) != Some(value) {
            modified.insert(path.clone());
        }
    }
    for path in before.keys() {
        if !after.contains_key(path) {
            removed.insert(path.clone());
        }
    }
    (modified, removed)
}

/// A `FieldSet` as the `fieldsV1` tree.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for (i, elem) in path.iter().enumerate() {
            let entry = node
                .entry(elem.encode())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else { break };
            node = next;
            if i + 1 == path.len() {
                // A member with children of its own is marked with ".".
                node.insert("..member".into(), Value::Bool(true));
            }
        }
    }
    finish(Value::Object(root))
}

fn finish(value: Value) -> Value {
    let Value::Object(map) = value else {
        return value;
    };
    let member = map.contains_key("..member");
    let children: Map<String, Value> = map
        .into_iter()
        .filter(|(k, _)| k != "..member")
        .map(|(k, v)| (k, finish(v)))
        .collect();
    if children.is_empty() {
        return json!({});
    }
    let mut out = Map::new();
    if member {
        out.insert(".".into(), json!({}));
    }
    out.extend(children);
    Value::Object(out)
}

/// A `fieldsV1` tree as a `FieldSet`.
pub fn from_fields_v1(tree: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    walk_tree(tree, &mut Vec::new(), &mut set);
    set
}

fn walk_tree(tree: &Value, path: &mut Path, set: &mut FieldSet) {
    let Value::Object(map) = tree else { return };
    if (map.is_empty() || map.contains_key(".")) && !path.is_empty() {
        set.insert(path.clone());
    }
    for (key, inner) in map {
        if key == "." {
            continue;
        }
        if let Some(elem) = Elem::decode(key) {
            path.push(elem);
            walk_tree(inner, path, set);
            path.pop();
        }
    }
}

/// One manager's entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: String,
    fields: FieldSet,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.fields),
        });
        if let Some(sub) = &self.subresource {
            v["subresource"] = Value::String(sub.clone());
        }
        v
    }

    fn describe(&self) -> String {
        let mut text = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            text.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation != "Apply" {
            text.push_str(&format!(" using {}", self.api_version));
        }
        text
    }
}

fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|e| {
                    Some(Entry {
                        manager: e["manager"].as_str()?.to_owned(),
                        operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
                        api_version: e["apiVersion"].as_str().unwrap_or("").to_owned(),
                        subresource: e["subresource"].as_str().map(str::to_owned),
                        time: e["time"].as_str().unwrap_or("").to_owned(),
                        fields: from_fields_v1(&e["fieldsV1"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(object: &mut Value, mut list: Vec<Entry>) {
    list.retain(|e| !e.fields.is_empty());
    list.sort_by(|a, b| {
        (
            a.operation.as_str(),
            a.time.as_str(),
            a.manager.as_str(),
            a.api_version.as_str(),
        )
            .cmp(&(
                b.operation.as_str(),
                b.time.as_str(),
                b.manager.as_str(),
                b.api_version.as_str(),
            ))
    });
    let json: Vec<Value> = list.iter().map(Entry::to_json).collect();
    if json.is_empty() {
        crate::meta::remove_meta(object, "managedFields");
    } else {
        crate::meta::set_meta(object, "managedFields", Value::Array(json));
    }
}

/// The manager name of a non-apply write: `fieldManager`, else the User-Agent's
/// first word, else `unknown`.
pub fn manager_name(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    user_agent
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

/// Records a create, update or non-apply patch by `manager` on `new` (whose body's
/// own `managedFields`, if it changed them, are taken as the base).
pub fn record_update(
    resource: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
) {
    let rules = Rules { resource };
    let empty = Value::Null;
    let old_object = old.unwrap_or(&empty);
    let given = new.pointer("/metadata/managedFields").cloned();
    let mut list = match (&given, old_object.pointer("/metadata/managedFields")) {
        (Some(given), previous) if Some(given) != previous => entries(new),
        _ => entries(old_object),
    };
    let before = object_leaves(&rules, old_object, subresource);
    let after = object_leaves(&rules, new, subresource);
    let (modified, removed) = changed(&before, &after);
    if modified.is_empty() && removed.is_empty() {
        write_entries(new, list);
        return;
    }
    for entry in &mut list {
        if entry.manager == manager
            && entry.operation == "Update"
            && entry.subresource.as_deref() == subresource
        {
            continue;
        }
        entry
            .fields
            .retain(|p| !modified.contains(p) && !removed.contains(p));
    }
    let api_version = resource.api_version();
    let now = crate::meta::now();
    let mine = list.iter_mut().find(|e| {
        e.manager == manager
            && e.operation == "Update"
            && e.api_version == api_version
            && e.subresource.as_deref() == subresource
    });
    match mine {
        Some(entry) => {
            entry.fields.extend(modified);
            entry.fields.retain(|p| !removed.contains(p));
            entry.time = now;
        }
        None => list.push(Entry {
            manager: manager.to_owned(),
            operation: "Update".into(),
            api_version,
            subresource: subresource.map(str::to_owned),
            time: now,
            fields: modified,
        }),
    }
    // At most ten Update managers; the oldest are folded into one.
    let updates: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, e)| e.operation == "Update")
        .map(|(i, _)| i)
        .collect();
    if updates.len() > 10 {
        let mut by_time: Vec<usize> = updates.clone();
        by_time.sort_by(|a, b| list[*a].time.cmp(&list[*b].time));
        let fold: Vec<usize> = by_time[..updates.len() - 9].to_vec();
        let mut ancient = FieldSet::new();
        for i in &fold {
            ancient.extend(list[*i].fields.iter().cloned());
        }
        let mut kept: Vec<Entry> = list
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !fold.contains(i))
            .map(|(_, e)| e)
            .collect();
        kept.push(Entry {
            manager: "ancient-changes".into(),
            operation: "Update".into(),
            api_version: resource.api_version(),
            subresource: None,
            time: crate::meta::now(),
            fields: ancient,
        });
        list = kept;
    }
    write_entries(new, list);
}

fn merge_apply(rules: &Rules<'_>, live: &Value, config: &Value, path: &mut Path) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if !rules.atomic_object(path) => {
            let mut out = l.clone();
            for (key, value) in c {
                path.push(Elem::Field(key.clone()));
                let merged = match l.get(key) {
                    Some(existing) => merge_apply(rules, existing, value, path),
                    None => value.clone(),
                };
                path.pop();
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => match rules.list_type(path) {
            ListType::Atomic => config.clone(),
            ListType::Set => {
                let mut out = l.clone();
                for item in c {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            ListType::Map(keys) => {
                let mut out = l.clone();
                for item in c {
                    let id = key_of(item, &keys);
                    path.push(Elem::Key(id.clone()));
                    match out.iter().position(|o| key_of(o, &keys) == id) {
                        Some(i) => out[i] = merge_apply(rules, &out[i], item, path),
                        None => out.push(item.clone()),
                    }
                    path.pop();
                }
                Value::Array(out)
            }
        },
        _ => config.clone(),
    }
}

/// Removes `path` from `object` if it is there.
fn remove_path(rules: &Rules<'_>, object: &mut Value, path: &[Elem], prefix: &mut Path) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match (object, first) {
        (Value::Object(map), Elem::Field(f)) => {
            if rest.is_empty() {
                // An associative list item keeps its key fields while it exists.
                let key_field = matches!(prefix.last(), Some(Elem::Key(_)))
                    && matches!(
                        rules.list_type(&prefix[..prefix.len() - 1].to_vec()),
                        ListType::Map(keys) if keys.iter().any(|k| k == f)
                    );
                if !key_field {
                    map.remove(f);
                }
            } else if let Some(inner) = map.get_mut(f) {
                prefix.push(first.clone());
                remove_path(rules, inner, rest, prefix);
                prefix.pop();
                // A map or list emptied by removals goes too, as structured-merge-diff
                // leaves no empty container behind.
                let emptied = match inner {
                    Value::Object(m) => m.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => false,
                };
                if emptied {
                    map.remove(f);
                }
            }
        }
        (Value::Array(items), Elem::Key(id)) => {
            let ListType::Map(keys) = rules.list_type(prefix) else {
                return;
            };
            if let Some(i) = items.iter().position(|o| key_of(o, &keys) == *id) {
                if rest.is_empty() {
                    items.remove(i);
                } else {
                    prefix.push(first.clone());
                    remove_path(rules, &mut items[i], rest, prefix);
                    prefix.pop();
                }
            }
        }
        (Value::Array(items), Elem::Value(v)) if rest.is_empty() => {
            // A set item's path holds its JSON.
            let value = serde_json::from_str::<Value>(v).ok();
            items.retain(|item| Some(item) != value.as_ref());
        }
        _ => {}
    }
}

/// A server-side apply of `config` by `manager` onto `live` (an empty object for a
/// create): the new object, or the 409 listing the conflicts.
pub fn apply(
    resource: &ResourceType,
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
) -> Result<Value, ApiError> {
    let rules = Rules { resource };
    let mut list = entries(live);
    let live_leaves = object_leaves(&rules, live, subresource);
    if list.is_empty() && !live_leaves.is_empty() {
        list.push(Entry {
            manager: "before-first-apply".into(),
            operation: "Update".into(),
            api_version: resource.api_version(),
            subresource: subresource.map(str::to_owned),
            time: crate::meta::now(),
            fields: live_leaves.keys().cloned().collect(),
        });
    }
    let config_leaves = object_leaves(&rules, config, subresource);
    let applied: FieldSet = config_leaves.keys().cloned().collect();
    let mut merged = merge_apply(&rules, live, config, &mut Vec::new());
    // The identity the client sent is the object's own.
    if let (Some(meta), Some(live_meta)) = (merged.get_mut("metadata"), live.get("metadata")) {
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ] {
            match live_meta.get(field) {
                Some(v) => meta[field] = v.clone(),
                None => {
                    if let Some(m) = meta.as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
    }
    let mine = list.iter().position(|e| {
        e.manager == manager && e.operation == "Apply" && e.subresource.as_deref() == subresource
    });
    let previous: FieldSet = mine.map(|i| list[i].fields.clone()).unwrap_or_default();
    // Conflicts: fields this apply changes that another manager owns.
    let merged_leaves = object_leaves(&rules, &merged, subresource);
    let (modified, _) = changed(&live_leaves, &merged_leaves);
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        for path in entry.fields.intersection(&applied) {
            if modified.contains(path) {
                conflicts.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(resource, live, &list, &conflicts));
    }
    for (i, path) in &conflicts {
        list[*i].fields.remove(path);
    }
    // Prune what this manager applied before and no longer does, unless another
    // manager owns it (or something under it).
    let others: FieldSet = list
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != mine)
        .flat_map(|(_, e)| e.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&Path> = previous
        .iter()
        .filter(|p| !applied.contains(*p))
        .filter(|p| !others.iter().any(|o| o.starts_with(p)))
        .collect();
    // Outer paths first: a dropped list item goes whole, before its fields.
    dropped.sort_by_key(|p| p.len());
    for path in dropped {
        remove_path(&rules, &mut merged, path, &mut Vec::new());
    }
    // Fields the result no longer has belong to nobody.
    let final_leaves = object_leaves(&rules, &merged, subresource);
    for entry in &mut list {
        entry.fields.retain(|p| final_leaves.contains_key(p));
    }
    let entry = Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: resource.api_version(),
        subresource: subresource.map(str::to_owned),
        time: crate::meta::now(),
        fields: applied,
    };
    match mine {
        Some(i) => list[i] = entry,
        None => list.push(entry),
    }
    write_entries(&mut merged, list);
    Ok(merged)
}

fn conflict_error(
    resource: &ResourceType,
    live: &Value,
    list: &[Entry],
    conflicts: &[(usize, Path)],
) -> ApiError {
    let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, path) in conflicts {
        by_manager
            .entry(list[*i].describe())
            .or_default()
            .push(display(path));
    }
    let count = conflicts.len();
    let message = if count == 1 {
        let (manager, paths) = by_manager
            .iter()
            .next()
            .map(|(m, p)| (m.clone(), p.clone()))
            .unwrap_or_default();
        format!(
            "Apply failed with 1 conflict: conflict with {manager}: {}",
            paths.join("")
        )
    } else {
        let blocks: Vec<String> = by_manager
            .iter()
            .map(|(manager, paths)| {
                let lines: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
                format!("conflicts with {manager}:\n{}", lines.join("\n"))
            })
            .collect();
        format!("Apply failed with {count} conflicts: {}", blocks.join("\n"))
    };
    ApiError::Conflict {
        message,
        kind: resource.plural.clone(),
        group: resource.group.clone(),
        name: crate::meta::name_of(live).to_owned(),
        causes: conflicts
            .iter()
            .map(|(i, path)| {
                (
                    "FieldManagerConflict".to_owned(),
                    format!("conflict with {}", list[*i].describe()),
                    display(path),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn deployment(replicas: i64, image: &str, env: bool) -> Value {
        let mut container = json!({"name": "web", "image": image});
        if env {
            container["env"] = json!([{"name": "A", "value": "1"}]);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}}}})
    }

    #[test]
    fn fields_v1_round_trips_with_keys_and_member_marks() {
        let registry = Registry::new();
        let rules = Rules {
            resource: &registry.builtin(Kind::Deployment),
        };
        let leaves = object_leaves(&rules, &deployment(1, "nginx", true), None);
        let set: FieldSet = leaves.keys().cloned().collect();
        let tree = to_fields_v1(&set);
        let containers = &tree["f:spec"]["f:template"]["f:spec"]["f:containers"];
        let item = &containers["k:{\"name\":\"web\"}"];
        assert_eq!(item["."], json!({}));
        assert_eq!(item["f:image"], json!({}));
        assert_eq!(item["f:env"]["k:{\"name\":\"A\"}"]["f:value"], json!({}));
        assert_eq!(
            tree["f:spec"]["f:selector"],
            json!({}),
            "a selector is atomic"
        );
        assert_eq!(from_fields_v1(&tree), set);
    }

    #[test]
    fn apply_prunes_what_it_stopped_applying_and_conflicts_with_other_owners() {
        let registry = Registry::new();
        let resource = registry.builtin(Kind::Deployment);
        let first = apply(
            &resource,
            &json!({}),
            &deployment(2, "nginx:1", true),
            "kubectl",
            false,
            None,
        )
        .unwrap();
        assert_eq!(first["metadata"]["managedFields"][0]["manager"], "kubectl");
        assert_eq!(first["metadata"]["managedFields"][0]["operation"], "Apply");
        // The same manager drops env: it goes.
        let second = apply(
            &resource,
            &first,
            &deployment(2, "nginx:2", false),
            "kubectl",
            false,
            None,
        )
        .unwrap();
        assert!(
            second["spec"]["template"]["spec"]["containers"][0]
                .get("env")
                .is_none()
        );
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        // Another manager changes replicas with an update; a new apply of another
        // value conflicts, and force takes it over.
        let mut scaled = second.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(&resource, Some(&second), &mut scaled, "kubectl-scale", None);
        let err = apply(
            &resource,
            &scaled,
            &deployment(3, "nginx:2", false),
            "kubectl",
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(err.code(), 409);
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        assert_eq!(
            err.status()["details"]["causes"][0]["reason"],
            "FieldManagerConflict"
        );
        // Applying the value it already has is no conflict.
        assert!(
            apply(
                &resource,
                &scaled,
                &deployment(5, "nginx:2", false),
                "kubectl",
                false,
                None
            )
            .is_ok()
        );
        let forced = apply(
            &resource,
            &scaled,
            &deployment(3, "nginx:2", false),
            "kubectl",
            true,
            None,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers,
            ["kubectl"],
            "the scaler owned only replicas and lost it"
        );
    }

    #[test]
    fn updates_record_their_manager_and_take_fields_from_others() {
        let registry = Registry::new();
        let resource = registry.builtin(Kind::ConfigMap);
        let mut created = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        record_update(&resource, None, &mut created, "kubectl-create", None);
        let mut edited = created.clone();
        edited["data"]["b"] = json!("2");
        record_update(&resource, Some(&created), &mut edited, "kubectl-edit", None);
        let fields = edited["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0]["fieldsV1"], json!({"f:data": {"f:a": {}}}));
        assert_eq!(fields[1]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!(
            manager_name(None, Some("kubectl/v1.37.0 (linux/amd64)")),
            "kubectl"
        );
    }
}
