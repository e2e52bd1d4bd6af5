//! The `--endpoint` syntax of the mount client (spec §9.1).
//!
//! `<name>=<ws-url>[#<export>][@<mount>]`: split at the first `=`; if the text after the
//! **last** `@` starts with `/` it is the mount path; then the text after the **last** `#` is
//! the export name (non-empty); the rest is the URL. Default mount `/<name>`.

/// One parsed endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub name: String,
    pub url: String,
    /// `None`: the node's first export.
    pub export: Option<String>,
    /// Normalised: starts with `/`, no trailing `/` (except the root itself).
    pub mount: String,
}

/// Why an `--endpoint` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint must be <name>=<ws-url>[#<export>][@<mount>]")]
    MissingEquals,
    #[error("endpoint name is empty")]
    EmptyName,
    #[error("endpoint export after '#' is empty")]
    EmptyExport,
    #[error("endpoint URL must start with ws:// (got {0:?})")]
    NotWebSocket(String),
    #[error("mount path {0:?} may not contain '.' or '..' components")]
    BadMount(String),
}

impl EndpointSpec {
    pub fn parse(text: &str) -> Result<EndpointSpec, EndpointError> {
        let (name, mut rest) = text.split_once('=').ok_or(EndpointError::MissingEquals)?;
        if name.is_empty() {
            return Err(EndpointError::EmptyName);
        }
        let mut mount = format!("/{name}");
        if let Some((head, tail)) = rest.rsplit_once('@').filter(|(_, tail)| tail.starts_with('/')) {
            mount = tail.to_owned();
            rest = head;
        }
        let mut export = None;
        if let Some((head, tail)) = rest.rsplit_once('#') {
            if tail.is_empty() {
                return Err(EndpointError::EmptyExport);
            }
            export = Some(tail.to_owned());
            rest = head;
        }
        if !rest.starts_with("ws://") {
            return Err(EndpointError::NotWebSocket(rest.to_owned()));
        }
        Ok(EndpointSpec { name: name.to_owned(), url: rest.to_owned(), export, mount: normalise_mount(&mount)? })
    }
}

impl EndpointSpec {
    /// An endpoint from its parts (a workspace's mount list), checked like `--endpoint`.
    pub fn from_parts(name: &str, url: &str, export: Option<&str>, mount: &str) -> Result<EndpointSpec, EndpointError> {
        if name.is_empty() {
            return Err(EndpointError::EmptyName);
        }
        if export == Some("") {
            return Err(EndpointError::EmptyExport);
        }
        if !url.starts_with("ws://") {
            return Err(EndpointError::NotWebSocket(url.to_owned()));
        }
        Ok(EndpointSpec {
            name: name.to_owned(),
            url: url.to_owned(),
            export: export.map(str::to_owned),
            mount: normalise_mount(mount)?,
        })
    }
}

fn normalise_mount(mount: &str) -> Result<String, EndpointError> {
    let parts: Vec<&str> = mount.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(EndpointError::BadMount(mount.to_owned()));
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_syntax_table() {
        let ok = |name: &str, url: &str, export: Option<&str>, mount: &str| {
            Ok(EndpointSpec { name: name.into(), url: url.into(), export: export.map(Into::into), mount: mount.into() })
        };
        let cases = [
            ("a=ws://127.0.0.1:18891/v2/fs#work@/src", ok("a", "ws://127.0.0.1:18891/v2/fs", Some("work"), "/src")),
            ("a=ws://h:1/v2/fs", ok("a", "ws://h:1/v2/fs", None, "/a")),
            ("a=ws://h:1/v2/fs#e", ok("a", "ws://h:1/v2/fs", Some("e"), "/a")),
            ("a=ws://h:1/v2/fs@/m/x/", ok("a", "ws://h:1/v2/fs", None, "/m/x")),
            ("a=ws://u@h:1/v2/fs#e", ok("a", "ws://u@h:1/v2/fs", Some("e"), "/a")),
            ("a=ws://h:1/v2/fs#e@/", ok("a", "ws://h:1/v2/fs", Some("e"), "/")),
            ("a=b=ws://h:1/#x", Err(EndpointError::NotWebSocket("b=ws://h:1/".into()))),
            ("a=ws://h:1/v2/fs#@/m", Err(EndpointError::EmptyExport)),
            ("noequals", Err(EndpointError::MissingEquals)),
            ("=ws://h:1/", Err(EndpointError::EmptyName)),
            ("a=http://h:1/", Err(EndpointError::NotWebSocket("http://h:1/".into()))),
            ("a=ws://h:1/@/m/../x", Err(EndpointError::BadMount("/m/../x".into()))),
        ];
        for (text, want) in cases {
            assert_eq!(EndpointSpec::parse(text), want, "{text}");
        }
    }
}
