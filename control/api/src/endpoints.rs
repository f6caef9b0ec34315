//! The API's routes as data: every [`Endpoint`] with its method, path and
//! summary.
//!
//! The daemon builds its router from [`Endpoint::ALL`] (one handler per
//! endpoint, an exhaustive match), the OpenAPI document's paths are
//! generated from it, and the client and `xdpctl` take their paths from it,
//! so a route cannot be served without being documented, or documented
//! without being served.

use std::fmt;

/// An HTTP method the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET: read.
    Get,
    /// POST: add or act.
    Post,
    /// PUT: replace.
    Put,
    /// DELETE: remove.
    Delete,
}

impl Method {
    /// The method as HTTP spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    /// The key of an operation in an OpenAPI path item (`get`, `post`, ...).
    pub const fn openapi_key(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
            Self::Put => "put",
            Self::Delete => "delete",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operation of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /v1/health`
    Health,
    /// `GET /v1/flows`
    ListFlows,
    /// `POST /v1/flows`
    AddFlow,
    /// `PUT /v1/flows`
    ReplaceFlows,
    /// `DELETE /v1/flows/{id}`
    DeleteFlow,
    /// `GET /v1/prefixes`
    ListPrefixes,
    /// `POST /v1/prefixes`
    AddPrefix,
    /// `PUT /v1/prefixes`
    ReplacePrefixes,
    /// `DELETE /v1/prefixes/{id}`
    DeletePrefix,
    /// `GET /v1/guests`
    ListGuests,
    /// `POST /v1/guests`
    AddGuest,
    /// `GET /v1/guests/{name}`
    GetGuest,
    /// `DELETE /v1/guests/{name}` (query `force=true`)
    DeleteGuest,
    /// `GET /v1/queues`
    Queues,
    /// `POST /v1/queues/{queue}/replace`
    ReplaceQueue,
    /// `GET /v1/stats`
    Stats,
    /// `GET /metrics`
    Metrics,
}

impl Endpoint {
    /// Every endpoint, in the order the document lists them.
    pub const ALL: [Endpoint; 17] = [
        Self::Health,
        Self::ListFlows,
        Self::AddFlow,
        Self::ReplaceFlows,
        Self::DeleteFlow,
        Self::ListPrefixes,
        Self::AddPrefix,
        Self::ReplacePrefixes,
        Self::DeletePrefix,
        Self::ListGuests,
        Self::AddGuest,
        Self::GetGuest,
        Self::DeleteGuest,
        Self::Queues,
        Self::ReplaceQueue,
        Self::Stats,
        Self::Metrics,
    ];

    /// The HTTP method.
    pub const fn method(self) -> Method {
        match self {
            Self::Health
            | Self::ListFlows
            | Self::ListPrefixes
            | Self::ListGuests
            | Self::GetGuest
            | Self::Queues
            | Self::Stats
            | Self::Metrics => Method::Get,
            Self::AddFlow | Self::AddPrefix | Self::AddGuest | Self::ReplaceQueue => Method::Post,
            Self::ReplaceFlows | Self::ReplacePrefixes => Method::Put,
            Self::DeleteFlow | Self::DeletePrefix | Self::DeleteGuest => Method::Delete,
        }
    }

    /// The path template, with `{name}` for a path parameter (the syntax of
    /// both OpenAPI and axum).
    pub const fn path(self) -> &'static str {
        match self {
            Self::Health => "/v1/health",
            Self::ListFlows | Self::AddFlow | Self::ReplaceFlows => "/v1/flows",
            Self::DeleteFlow => "/v1/flows/{id}",
            Self::ListPrefixes | Self::AddPrefix | Self::ReplacePrefixes => "/v1/prefixes",
            Self::DeletePrefix => "/v1/prefixes/{id}",
            Self::ListGuests | Self::AddGuest => "/v1/guests",
            Self::GetGuest | Self::DeleteGuest => "/v1/guests/{name}",
            Self::Queues => "/v1/queues",
            Self::ReplaceQueue => "/v1/queues/{queue}/replace",
            Self::Stats => "/v1/stats",
            Self::Metrics => "/metrics",
        }
    }

    /// The path parameter, if the path has one.
    pub const fn param(self) -> Option<&'static str> {
        match self {
            Self::DeleteFlow | Self::DeletePrefix => Some("id"),
            Self::ReplaceQueue => Some("queue"),
            Self::GetGuest | Self::DeleteGuest => Some("name"),
            _ => None,
        }
    }

    /// The concrete path with `arg` in place of the parameter (the path
    /// itself when it has none).
    pub fn uri(self, arg: impl fmt::Display) -> String {
        match self.param() {
            Some(p) => self.path().replace(&format!("{{{p}}}"), &arg.to_string()),
            None => self.path().to_string(),
        }
    }

    /// One line saying what it does (the document's `summary`).
    pub const fn summary(self) -> &'static str {
        match self {
            Self::Health => "Liveness and a summary",
            Self::ListFlows => "List exact 5-tuple rules (sorted by id)",
            Self::AddFlow => "Add one exact rule (id assigned if omitted)",
            Self::ReplaceFlows => {
                "Replace all exact rules atomically (the XDP program sees the old set or the new one, never a mix)"
            }
            Self::DeleteFlow => "Delete one exact rule",
            Self::ListPrefixes => "List destination prefix rules",
            Self::AddPrefix => "Add one prefix rule",
            Self::ReplacePrefixes => "Replace all prefix rules atomically",
            Self::DeletePrefix => "Delete one prefix rule",
            Self::ListGuests => {
                "List the guests: id, name, MAC, IPs, vhost-user socket, queue pairs, connected, counters, rules"
            }
            Self::AddGuest => {
                "Add a guest (id assigned: the lowest free one); saved before it is applied"
            }
            Self::GetGuest => "One guest, by name",
            Self::DeleteGuest => {
                "Remove a guest; refused (409) while rules send to it, unless force=true, which deletes those rules in the same step"
            }
            Self::Queues => "Queues: socket state, socket generation, per-queue counters",
            Self::ReplaceQueue => {
                "Replace a queue's AF_XDP socket (XSKMAP entry out, worker releases, new socket bound and registered, worker installs)"
            }
            Self::Stats => {
                "Classifier counters (per action, per rule class, parse errors, redirects) and per-queue counters"
            }
            Self::Metrics => "Prometheus/OpenMetrics text exposition of all counters",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_listed_once_and_paths_fill_in() {
        let mut seen = std::collections::HashSet::new();
        for e in Endpoint::ALL {
            assert!(seen.insert((e.method(), e.path())), "{e:?} twice");
            assert_eq!(e.path().contains('{'), e.param().is_some(), "{e:?}");
        }
        assert_eq!(Endpoint::DeleteFlow.uri(7), "/v1/flows/7");
        assert_eq!(Endpoint::ReplaceQueue.uri(1), "/v1/queues/1/replace");
        assert_eq!(Endpoint::Stats.uri(""), "/v1/stats");
        assert_eq!(Endpoint::DeleteGuest.uri("web1"), "/v1/guests/web1");
    }
}
