//! What the gate lets a job ask of the engine: each request decided by its
//! method and path (the `/vX.Y` prefix taken off), and the bodies that
//! create something (containers, execs, networks, volumes) checked and
//! labelled. Pure functions: what must be asked of the engine (whether a
//! named object is the job's) comes back as a list of [`Object`]s for the
//! connection to check.
//!
//! The rules (README "Docker in compose jobs"): images, the registry and the
//! engine's own description are free; containers, execs, networks and
//! volumes are the job's own or refused; lists and events see only the
//! job's objects; nothing may reach the host (privileges, capabilities,
//! devices, the host's namespaces, bind mounts outside the job's directory,
//! volumes backed by host devices); swarm, plugins, prunes and other
//! engine-wide writes are refused.

use std::path::{Component, Path};

use serde_json::{Map, Value};

/// The label the gate puts on what a job creates; its value is the job's
/// mark.
pub const JOB_LABEL: &str = "agent.job";
/// Compose's project label: the objects of the job's own compose project
/// (its main container, its services, their network) were made by the
/// agent, not through the gate, and carry this instead.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";

/// What the rules need to know about the job.
#[derive(Debug, Clone)]
pub struct JobFacts {
    /// The value of [`JOB_LABEL`] on the job's objects.
    pub mark: String,
    /// The job's compose project, whose objects count as the job's.
    pub project: Option<String>,
    /// The job's directory on the host: the only place bind mounts may
    /// come from (read-only). None: no bind mount at all (a shell job's
    /// gate, whose paths the job's user controls: a link there could lead
    /// the engine anywhere).
    pub job_dir: Option<std::path::PathBuf>,
    /// `/dev/kvm` is exposed to the job's containers.
    pub kvm: bool,
}

impl JobFacts {
    /// Whether an object with these labels is the job's.
    pub fn owns(&self, labels: Option<&Map<String, Value>>) -> bool {
        let Some(labels) = labels else { return false };
        let is = |key: &str, want: &str| labels.get(key).and_then(Value::as_str) == Some(want);
        is(JOB_LABEL, &self.mark)
            || self
                .project
                .as_deref()
                .is_some_and(|p| is(COMPOSE_PROJECT_LABEL, p))
    }

    pub fn label_filter(&self) -> String {
        format!("{JOB_LABEL}={}", self.mark)
    }
}

/// An object a request names, to be found the job's before it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Container(String),
    Exec(String),
    Network(String),
    /// A named volume: one that does not exist yet is created, labelled,
    /// before the request goes on (the engine would create it unlabelled).
    Volume(String),
}

/// The body the gate must read and check before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Streamed through as it comes (build contexts, image loads, archives).
    Stream,
    ContainerCreate,
    ExecCreate,
    NetworkCreate,
    NetworkConnect,
    VolumeCreate,
}

/// How a request goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub objects: Vec<Object>,
    /// The first object is the path's second segment (`/containers/{id}/..`):
    /// the request goes on naming it by what the engine resolved it to.
    pub in_path: bool,
    pub body: Body,
    /// A list or the events: only the job's objects.
    pub label_filter: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward(Plan),
    /// Refused: the rule, for `agent docker gate: <rule>`.
    Refuse(String),
}

fn forward(objects: Vec<Object>, body: Body, label_filter: bool) -> Decision {
    Decision::Forward(Plan {
        objects,
        in_path: false,
        body,
        label_filter,
    })
}

/// A request on the object its path names.
fn on_object(object: Object, body: Body) -> Decision {
    Decision::Forward(Plan {
        objects: vec![object],
        in_path: true,
        body,
        label_filter: false,
    })
}

/// `path` (version prefix kept) with its object segment replaced by `id`.
pub fn with_object_id(path: &str, id: &str) -> String {
    let rest = unversioned(path);
    let prefix = &path[..path.len() - rest.len()];
    let mut segments: Vec<String> = rest.split('/').map(str::to_string).collect();
    // "", kind, object, ...
    if segments.len() > 2 {
        segments[2] = super::wire::percent_encode(id);
    }
    format!("{prefix}{}", segments.join("/"))
}

fn refuse(rule: impl Into<String>) -> Decision {
    Decision::Refuse(rule.into())
}

/// The path without its API version prefix (`/v1.41/containers/json` is
/// `/containers/json`).
pub fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let numeric = !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && version.as_bytes()[0].is_ascii_digit();
    if numeric {
        &rest[end..]
    } else {
        path
    }
}

/// Decides a request from its method, its path (version prefix included
/// or not) and its query.
pub fn route(method: &str, path: &str, query: &str) -> Decision {
    let path = unversioned(path);
    // The engine's router cleans and decodes paths; the gate decides on
    // what it reads, so a path that cleaning or decoding would change is
    // refused rather than guessed at. Image names are the one place with
    // slashes of their own, and they are all allowed.
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if path.contains('%')
        || segments
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return refuse("a request path with empty, dot or escaped segments");
    }
    let get = method == "GET" || method == "HEAD";
    let post = method == "POST";
    match (segments.as_slice(), method) {
        (["_ping"], _) if get => forward(vec![], Body::Stream, false),
        (["version"] | ["info"], _) if get => forward(vec![], Body::Stream, false),
        (["auth"], "POST") => forward(vec![], Body::Stream, false),
        (["events"], _) if get => forward(vec![], Body::Stream, true),
        (["system", ..], _) => refuse("engine-wide reads and writes (system df, prune)"),

        // Images are shared by every job, as a cache.
        (["images", "prune"], _) | (["build", "prune"], _) => {
            refuse("pruning images or the build cache of the whole engine")
        }
        (["images", ..], _) => forward(vec![], Body::Stream, false),
        (["build"], "POST") => build(query),
        (["build", "cancel"], "POST") => forward(vec![], Body::Stream, false),
        // BuildKit's session: services the client offers the build.
        (["session"], "POST") => forward(vec![], Body::Stream, false),
        (["grpc"], _) => refuse(
            "BuildKit's gRPC endpoint (buildx): the entitlements of its builds cannot be checked; use the classic builder or BuildKit through `docker build`",
        ),
        (["distribution", ..], _) if get => forward(vec![], Body::Stream, false),
        (["commit"], "POST") => match query_one(query, "container") {
            Some(c) if !c.is_empty() => forward(vec![Object::Container(c)], Body::Stream, false),
            _ => refuse("a commit without a container"),
        },

        (["containers", "json"], _) if get => forward(vec![], Body::Stream, true),
        (["containers", "create"], "POST") => forward(vec![], Body::ContainerCreate, false),
        (["containers", "prune"], _) => refuse("pruning containers"),
        (["containers", id, rest @ ..], _) => {
            let body = if post && rest == ["exec"] {
                Body::ExecCreate
            } else {
                Body::Stream
            };
            on_object(Object::Container(id.to_string()), body)
        }
        (["exec", id, ..], _) => on_object(Object::Exec(id.to_string()), Body::Stream),

        (["networks"], _) if get => forward(vec![], Body::Stream, true),
        (["networks", "create"], "POST") => forward(vec![], Body::NetworkCreate, false),
        (["networks", "prune"], _) => refuse("pruning networks"),
        (["networks", id], "GET" | "HEAD" | "DELETE") => {
            on_object(Object::Network(id.to_string()), Body::Stream)
        }
        (["networks", id, "connect" | "disconnect"], "POST") => {
            on_object(Object::Network(id.to_string()), Body::NetworkConnect)
        }

        (["volumes"], _) if get => forward(vec![], Body::Stream, true),
        (["volumes", "create"], "POST") => forward(vec![], Body::VolumeCreate, false),
        (["volumes", "prune"], _) => refuse("pruning volumes"),
        (["volumes", name], "GET" | "HEAD" | "DELETE") => {
            on_object(Object::Volume(name.to_string()), Body::Stream)
        }

        ([first, ..], _)
            if matches!(
                *first,
                "swarm" | "nodes" | "services" | "tasks" | "secrets" | "configs" | "plugins"
            ) =>
        {
            refuse(format!("{first}: swarm and plugins are engine-wide"))
        }
        _ => refuse(format!("{method} {path} is not an endpoint a job may use")),
    }
}

fn query_one(query: &str, name: &str) -> Option<String> {
    super::wire::query_values(query, name)?.into_iter().next()
}

/// `POST /build`: BuildKit's `network.host` entitlement is what
/// `networkmode=host` asks for; a cgroup parent would place the build
/// outside the engine's.
fn build(query: &str) -> Decision {
    let Some(modes) = super::wire::query_values(query, "networkmode") else {
        return refuse("a build query that cannot be read");
    };
    if modes.iter().any(|m| !network_mode_free(m)) {
        return refuse("builds in the host's or another container's network (network.host)");
    }
    match super::wire::query_values(query, "cgroupparent") {
        Some(v) if v.iter().all(|p| p.is_empty()) => forward(vec![], Body::Stream, false),
        _ => refuse("builds in a cgroup parent of their own"),
    }
}

/// A network mode that needs no check: the engine's default networks.
fn network_mode_free(mode: &str) -> bool {
    matches!(mode, "" | "default" | "bridge" | "none")
}

// ---------------------------------------------------------------------------
// Bodies

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Sets the job's label in `labels` (an object or null), whatever the job
/// gave it.
fn label(parent: &mut Map<String, Value>, key: &str, facts: &JobFacts) {
    let entry = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(labels) = entry {
        labels.insert(JOB_LABEL.into(), Value::String(facts.mark.clone()));
    }
}

/// A namespace field of a host config, its kind as refusals name it, and
/// the modes that need no check.
type NamespaceRule = (&'static str, &'static str, fn(&str) -> bool);

/// A namespace mode: the host's is refused, another container's must be
/// the job's.
fn namespace(
    kind: &str,
    mode: &str,
    objects: &mut Vec<Object>,
    free: fn(&str) -> bool,
) -> Result<(), String> {
    if mode == "host" {
        return Err(format!("the host's {kind} namespace"));
    }
    if let Some(id) = mode.strip_prefix("container:") {
        objects.push(Object::Container(id.to_string()));
        return Ok(());
    }
    if free(mode) {
        Ok(())
    } else if kind == "network" {
        objects.push(Object::Network(mode.to_string()));
        Ok(())
    } else {
        Err(format!("the {kind} namespace mode {mode:?}"))
    }
}

/// A bind mount's host path: inside the job's directory, read-only.
fn bind_source(source: &str, read_only: bool, facts: &JobFacts) -> Result<(), String> {
    let Some(job_dir) = &facts.job_dir else {
        return Err(format!(
            "bind mounts of host paths ({source}): a shell job's gate allows none; use docker cp or a volume"
        ));
    };
    let path = Path::new(source);
    let inside = path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
        && path.starts_with(job_dir);
    if !inside {
        return Err(format!(
            "bind mounts of host paths outside the job's directory ({source})"
        ));
    }
    if !read_only {
        return Err(format!(
            "a bind mount of the job's directory that is not read-only ({source})"
        ));
    }
    Ok(())
}

/// Volume driver options that put a host device or path behind a volume.
fn host_backed(options: Option<&Value>) -> bool {
    let Some(Value::Object(opts)) = options else {
        return false;
    };
    opts.iter().any(|(k, v)| {
        let k = k.to_ascii_lowercase();
        k == "device"
            || (k == "o"
                && v.as_str()
                    .is_some_and(|o| o.split(',').any(|p| p == "bind")))
    })
}

/// `-v source:dest[:options]`: a path is a bind mount, a name a volume.
fn legacy_bind(bind: &str, objects: &mut Vec<Object>, facts: &JobFacts) -> Result<(), String> {
    let mut parts = bind.split(':');
    let source = parts.next().unwrap_or("");
    let _dest = parts.next();
    let options = parts.next().unwrap_or("");
    if source.starts_with('/') {
        let read_only = options.split(',').any(|o| o == "ro");
        return bind_source(source, read_only, facts);
    }
    if source.is_empty() {
        return Err("a bind without a source".into());
    }
    objects.push(Object::Volume(source.to_string()));
    Ok(())
}

fn mount(m: &Value, objects: &mut Vec<Object>, facts: &JobFacts) -> Result<(), String> {
    let kind = m.get("Type").and_then(Value::as_str).unwrap_or("");
    let source = m.get("Source").and_then(Value::as_str).unwrap_or("");
    let read_only = m.get("ReadOnly").and_then(Value::as_bool).unwrap_or(false);
    match kind {
        "bind" => bind_source(source, read_only, facts),
        "volume" => {
            let driver = m.pointer("/VolumeOptions/DriverConfig");
            if host_backed(driver.and_then(|d| d.get("Options"))) {
                return Err("volumes backed by a host device or path".into());
            }
            if !source.is_empty() {
                objects.push(Object::Volume(source.to_string()));
            }
            Ok(())
        }
        "tmpfs" => Ok(()),
        other => Err(format!("mounts of type {other:?}")),
    }
}

/// The field names the rules read. The engine decodes JSON as Go does,
/// matching a field name in any case (and with `ſ` for `s`, `K` for `k`),
/// so `"privileged": true` would be its `Privileged` without being the
/// gate's: a body naming one of these in another spelling is refused.
const CHECKED_FIELDS: &[&str] = &[
    "HostConfig",
    "Privileged",
    "CapAdd",
    "Devices",
    "PathOnHost",
    "DeviceCgroupRules",
    "DeviceRequests",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "NetworkMode",
    "CgroupnsMode",
    "Cgroup",
    "CgroupParent",
    "SecurityOpt",
    "MaskedPaths",
    "ReadonlyPaths",
    "VolumeDriver",
    "Binds",
    "Mounts",
    "Type",
    "Source",
    "ReadOnly",
    "VolumeOptions",
    "DriverConfig",
    "Options",
    "VolumesFrom",
    "Links",
    "NetworkingConfig",
    "EndpointsConfig",
    "Labels",
    "Driver",
    "DriverOpts",
    "ConfigFrom",
    "Ingress",
    "Name",
    "ClusterVolumeSpec",
    "Container",
];

/// Objects whose keys are data (labels, options, network names), not
/// field names.
const FREE_MAPS: &[&str] = &[
    "Labels",
    "DriverOpts",
    "Options",
    "Sysctls",
    "StorageOpt",
    "Tmpfs",
    "ExposedPorts",
    "Volumes",
    "PortBindings",
    "Config",
    "EndpointsConfig",
    "DriverOptions",
    "Annotations",
];

/// Go's case folding of a field name.
fn folded(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Refuses a body with a checked field name spelled otherwise (see
/// `CHECKED_FIELDS`), or spelled twice.
pub fn exact_field_names(value: &Value) -> Result<(), String> {
    fn walk(value: &Value, free: bool) -> Result<(), String> {
        match value {
            Value::Object(map) => {
                if !free {
                    let mut seen = std::collections::HashSet::new();
                    for key in map.keys() {
                        let fold = folded(key);
                        let checked = CHECKED_FIELDS.iter().find(|f| folded(f) == fold);
                        if let Some(field) = checked {
                            if key != field || !seen.insert(fold) {
                                return Err(format!(
                                    "a config field spelled {key:?} (the gate reads {field:?})"
                                ));
                            }
                        }
                    }
                }
                for (key, inner) in map {
                    walk(inner, !free && FREE_MAPS.contains(&key.as_str()))?;
                }
                Ok(())
            }
            Value::Array(list) => list.iter().try_for_each(|v| walk(v, false)),
            _ => Ok(()),
        }
    }
    walk(value, false)
}

/// `POST /containers/create`: refuses what would reach the host, lists the
/// objects the container would use, and labels it.
pub fn container_create(body: &mut Value, facts: &JobFacts) -> Result<Vec<Object>, String> {
    exact_field_names(body)?;
    let mut objects = Vec::new();
    let Some(config) = body.as_object_mut() else {
        return Err("a container config that is not a JSON object".into());
    };
    label(config, "Labels", facts);
    let host = config.get("HostConfig").cloned().unwrap_or(Value::Null);
    if host.get("Privileged").and_then(Value::as_bool) == Some(true) {
        return Err("privileged containers".into());
    }
    if !strings(host.get("CapAdd")).is_empty() {
        return Err(format!(
            "added capabilities ({})",
            strings(host.get("CapAdd")).join(", ")
        ));
    }
    if let Some(Value::Array(devices)) = host.get("Devices") {
        for d in devices {
            let on_host = d.get("PathOnHost").and_then(Value::as_str).unwrap_or("");
            if !(facts.kvm && on_host == "/dev/kvm") {
                return Err(format!("devices ({on_host})"));
            }
        }
    }
    if !strings(host.get("DeviceCgroupRules")).is_empty()
        || host
            .get("DeviceRequests")
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty())
    {
        return Err("devices (device cgroup rules, GPU requests)".into());
    }
    let modes: [NamespaceRule; 6] = [
        ("PidMode", "pid", |m| m.is_empty()),
        ("IpcMode", "ipc", |m| {
            matches!(m, "" | "private" | "shareable" | "none")
        }),
        ("UTSMode", "uts", |m| m.is_empty()),
        ("UsernsMode", "user", |m| m.is_empty()),
        ("NetworkMode", "network", network_mode_free),
        ("Cgroup", "cgroup", |m| m.is_empty()),
    ];
    for (key, kind, free) in modes {
        let mode = host.get(key).and_then(Value::as_str).unwrap_or("");
        namespace(kind, mode, &mut objects, free)?;
    }
    if host
        .get("CgroupnsMode")
        .and_then(Value::as_str)
        .is_some_and(|m| m == "host")
    {
        return Err("the host's cgroup namespace".into());
    }
    if host
        .get("CgroupParent")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty())
    {
        return Err("a cgroup parent of the container's own".into());
    }
    for opt in strings(host.get("SecurityOpt")) {
        let (key, value) = opt.split_once(['=', ':']).unwrap_or((opt, ""));
        let refused = match key {
            "no-new-privileges" => false,
            "apparmor" | "label" => value == "unconfined" || value == "disable",
            // A profile of the job's own may allow every system call.
            "seccomp" => true,
            _ => true,
        };
        if refused {
            return Err(format!("the security option {opt}"));
        }
    }
    // The CLI sends these (empty) for `--security-opt systempaths=unconfined`.
    for key in ["MaskedPaths", "ReadonlyPaths"] {
        if host.get(key).is_some_and(Value::is_array) {
            return Err("unmasked system paths (systempaths=unconfined)".into());
        }
    }
    if !matches!(
        host.get("VolumeDriver").and_then(Value::as_str),
        None | Some("" | "local")
    ) {
        return Err("volumes of a driver other than local".into());
    }
    for bind in strings(host.get("Binds")) {
        legacy_bind(bind, &mut objects, facts)?;
    }
    if let Some(Value::Array(mounts)) = host.get("Mounts") {
        for m in mounts {
            mount(m, &mut objects, facts)?;
        }
    }
    for from in strings(host.get("VolumesFrom")) {
        let id = from.split(':').next().unwrap_or(from);
        objects.push(Object::Container(id.to_string()));
    }
    // A link gives the linked container's environment to this one.
    for link in strings(host.get("Links")) {
        let name = link.split(':').next().unwrap_or(link);
        objects.push(Object::Container(name.trim_start_matches('/').to_string()));
    }
    if let Some(Value::Object(endpoints)) = body.pointer("/NetworkingConfig/EndpointsConfig") {
        for network in endpoints.keys() {
            if !network_mode_free(network) {
                objects.push(Object::Network(network.clone()));
            }
        }
    }
    Ok(objects)
}

/// `POST /containers/{id}/exec`.
pub fn exec_create(body: &Value) -> Result<(), String> {
    exact_field_names(body)?;
    if body.get("Privileged").and_then(Value::as_bool) == Some(true) {
        return Err("privileged execs".into());
    }
    Ok(())
}

/// `POST /networks/create`: a bridge of the job's own, labelled.
pub fn network_create(body: &mut Value, facts: &JobFacts) -> Result<(), String> {
    exact_field_names(body)?;
    let Some(config) = body.as_object_mut() else {
        return Err("a network config that is not a JSON object".into());
    };
    let driver = config.get("Driver").and_then(Value::as_str).unwrap_or("");
    if !matches!(driver, "" | "bridge") {
        return Err(format!("networks with the driver {driver:?}"));
    }
    if config.get("ConfigFrom").is_some_and(|c| !c.is_null())
        || config.get("Ingress").and_then(Value::as_bool) == Some(true)
    {
        return Err("networks from another network's config, or ingress networks".into());
    }
    if let Some(Value::Object(options)) = config.get("Options") {
        if options.contains_key("com.docker.network.bridge.name") {
            return Err("networks on a bridge of the host's choosing".into());
        }
    }
    label(config, "Labels", facts);
    Ok(())
}

/// `POST /networks/{id}/{connect,disconnect}`: the container must be the
/// job's too.
pub fn network_connect(body: &Value) -> Result<Vec<Object>, String> {
    exact_field_names(body)?;
    match body.get("Container").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => Ok(vec![Object::Container(c.to_string())]),
        _ => Err("a network connect without a container".into()),
    }
}

/// `POST /volumes/create`: a local volume without a host device, labelled.
/// Returns its name, which must not be another's volume (the engine
/// answers a create of an existing name with that volume).
pub fn volume_create(body: &mut Value, facts: &JobFacts) -> Result<Option<String>, String> {
    exact_field_names(body)?;
    let Some(config) = body.as_object_mut() else {
        return Err("a volume config that is not a JSON object".into());
    };
    let driver = config.get("Driver").and_then(Value::as_str).unwrap_or("");
    if !matches!(driver, "" | "local") {
        return Err(format!("volumes with the driver {driver:?}"));
    }
    if host_backed(config.get("DriverOpts")) {
        return Err("volumes backed by a host device or path (device, o=bind)".into());
    }
    if config
        .get("ClusterVolumeSpec")
        .is_some_and(|c| !c.is_null())
    {
        return Err("cluster volumes".into());
    }
    label(config, "Labels", facts);
    Ok(config
        .get("Name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> JobFacts {
        JobFacts {
            mark: "job-1.abcd".into(),
            project: Some("agent-job-1-abcd".into()),
            job_dir: Some("/data/jobs/job-1.abcd/work".into()),
            kvm: false,
        }
    }

    fn refused(d: Decision) -> bool {
        matches!(d, Decision::Refuse(_))
    }

    #[test]
    fn version_prefixes_come_off() {
        assert_eq!(unversioned("/v1.41/containers/json"), "/containers/json");
        assert_eq!(unversioned("/v1/_ping"), "/_ping");
        assert_eq!(unversioned("/volumes"), "/volumes");
        assert_eq!(unversioned("/vx/volumes"), "/vx/volumes");
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("GET", "/v1.41/containers/json", "all=1"),
            forward(vec![], Body::Stream, true)
        );
        assert_eq!(
            route("POST", "/v1.41/containers/abc/exec", ""),
            on_object(Object::Container("abc".into()), Body::ExecCreate)
        );
        assert_eq!(
            route("POST", "/v1.41/exec/e1/start", ""),
            on_object(Object::Exec("e1".into()), Body::Stream)
        );
        assert_eq!(
            with_object_id("/v1.41/containers/web/logs", "f00d"),
            "/v1.41/containers/f00d/logs"
        );
        assert_eq!(with_object_id("/volumes/v", "v"), "/volumes/v");
        assert_eq!(
            route("POST", "/v1.41/images/localhost:5000/a/b:1/push", ""),
            forward(vec![], Body::Stream, false)
        );
        assert_eq!(
            route("POST", "/commit", "container=c9&repo=x"),
            forward(vec![Object::Container("c9".into())], Body::Stream, false)
        );
        for (method, path) in [
            ("POST", "/v1.41/swarm/init"),
            ("GET", "/plugins"),
            ("POST", "/containers/prune"),
            ("POST", "/images/prune"),
            ("POST", "/volumes/prune"),
            ("GET", "/system/df"),
            ("POST", "/grpc"),
            ("GET", "/containers/a%2F..%2Fb/json"),
            ("GET", "/containers//json"),
            ("GET", "/containers/../swarm"),
            ("PUT", "/volumes/x"),
        ] {
            assert!(refused(route(method, path, "")), "{method} {path}");
        }
        assert!(refused(route("POST", "/build", "networkmode=host")));
        assert!(!refused(route("POST", "/build", "networkmode=default&t=x")));
    }

    #[test]
    fn container_creates_that_reach_the_host_are_refused() {
        let f = facts();
        let cases = [
            json!({"HostConfig": {"Privileged": true}}),
            json!({"HostConfig": {"CapAdd": ["SYS_ADMIN"]}}),
            json!({"HostConfig": {"Devices": [{"PathOnHost": "/dev/sda"}]}}),
            json!({"HostConfig": {"PidMode": "host"}}),
            json!({"HostConfig": {"NetworkMode": "host"}}),
            json!({"HostConfig": {"IpcMode": "host"}}),
            json!({"HostConfig": {"UTSMode": "host"}}),
            json!({"HostConfig": {"UsernsMode": "host"}}),
            json!({"HostConfig": {"Cgroup": "host"}}),
            json!({"HostConfig": {"SecurityOpt": ["seccomp=unconfined"]}}),
            json!({"HostConfig": {"SecurityOpt": ["apparmor:unconfined"]}}),
            json!({"HostConfig": {"SecurityOpt": ["label=disable"]}}),
            json!({"HostConfig": {"MaskedPaths": [], "ReadonlyPaths": []}}),
            json!({"HostConfig": {"Binds": ["/:/host"]}}),
            json!({"HostConfig": {"Binds": ["/data/jobs/job-1.abcd/work/../../x:/x:ro"]}}),
            json!({"HostConfig": {"Binds": ["/data/jobs/job-1.abcd/work:/w"]}}),
            json!({"HostConfig": {"Binds": ["/data/jobs/job-1.abcdEF:/w:ro"]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/etc", "ReadOnly": true}]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "volume", "Source": "v",
                "VolumeOptions": {"DriverConfig": {"Options": {"device": "/", "o": "bind"}}}}]}}),
        ];
        for mut case in cases {
            let shown = case.to_string();
            assert!(container_create(&mut case, &f).is_err(), "{shown}");
        }
        let mut kvm = json!({"HostConfig": {"Devices": [{"PathOnHost": "/dev/kvm"}]}});
        assert!(container_create(&mut kvm.clone(), &f).is_err());
        let with_kvm = JobFacts { kvm: true, ..f };
        assert!(container_create(&mut kvm, &with_kvm).is_ok());
    }

    #[test]
    fn container_creates_list_what_they_use_and_get_the_label() {
        let f = facts();
        let mut body = json!({
            "Labels": {"agent.job": "someone-else", "x": "y"},
            "HostConfig": {
                "NetworkMode": "container:other",
                "PidMode": "container:other",
                "Binds": ["data:/data", "/data/jobs/job-1.abcd/work/src:/src:ro"],
                "VolumesFrom": ["c2:ro"],
                "Links": ["/db:db"],
                "SecurityOpt": ["no-new-privileges"],
                "MaskedPaths": null,
            },
            "NetworkingConfig": {"EndpointsConfig": {"proj_default": {}, "bridge": {}}}
        });
        let objects = container_create(&mut body, &f).unwrap();
        assert_eq!(body["Labels"]["agent.job"], "job-1.abcd");
        assert_eq!(body["Labels"]["x"], "y");
        assert_eq!(
            objects,
            vec![
                Object::Container("other".into()),
                Object::Container("other".into()),
                Object::Volume("data".into()),
                Object::Container("c2".into()),
                Object::Container("db".into()),
                Object::Network("proj_default".into()),
            ]
        );
        let mut bare = json!({"Image": "x", "Labels": null});
        assert!(container_create(&mut bare, &f).unwrap().is_empty());
        assert_eq!(bare["Labels"]["agent.job"], "job-1.abcd");
    }

    #[test]
    fn field_names_in_another_case_are_refused() {
        let f = facts();
        for mut case in [
            json!({"hostconfig": {"Privileged": true}}),
            json!({"HostConfig": {"privileged": true}}),
            json!({"HostConfig": {"\u{17f}ecurityOpt": ["seccomp=unconfined"]}}),
            json!({"HostConfig": {"Privileged": false, "PRIVILEGED": true}}),
            json!({"HostConfig": {"Mounts": [{"type": "bind", "Source": "/"}]}}),
        ] {
            let shown = case.to_string();
            assert!(container_create(&mut case, &f).is_err(), "{shown}");
        }
        // Keys that are data may be anything.
        let mut labels = json!({"Labels": {"type": "x", "hostconfig": "y"},
            "HostConfig": {"Sysctls": {"privileged": "1"}}});
        assert!(container_create(&mut labels, &f).is_ok());
        assert!(exec_create(&json!({"privileged": true})).is_err());
        assert!(volume_create(&mut json!({"driveropts": {"device": "/"}}), &f).is_err());
    }

    #[test]
    fn volumes_and_networks() {
        let f = facts();
        let mut host =
            json!({"Name": "v", "DriverOpts": {"device": "/", "o": "bind", "type": "none"}});
        assert!(volume_create(&mut host, &f).is_err());
        let mut ok = json!({"Name": "v", "DriverOpts": {"type": "tmpfs", "o": "size=1m"}});
        assert_eq!(volume_create(&mut ok, &f).unwrap().as_deref(), Some("v"));
        assert_eq!(ok["Labels"]["agent.job"], "job-1.abcd");
        let mut mac = json!({"Name": "n", "Driver": "macvlan"});
        assert!(network_create(&mut mac, &f).is_err());
        let mut br = json!({"Name": "n", "Options": {"com.docker.network.bridge.name": "docker0"}});
        assert!(network_create(&mut br, &f).is_err());
        let mut plain = json!({"Name": "n", "Labels": {"com.docker.compose.network": "default"}});
        assert!(network_create(&mut plain, &f).is_ok());
        assert_eq!(plain["Labels"]["agent.job"], "job-1.abcd");
        assert!(exec_create(&json!({"Privileged": true})).is_err());
    }

    #[test]
    fn ownership_by_label_or_project() {
        let f = facts();
        let own = json!({"agent.job": "job-1.abcd"});
        let project = json!({"com.docker.compose.project": "agent-job-1-abcd"});
        let other = json!({"agent.job": "job-2.ffff"});
        assert!(f.owns(own.as_object()));
        assert!(f.owns(project.as_object()));
        assert!(!f.owns(other.as_object()));
        assert!(!f.owns(None));
    }
}
