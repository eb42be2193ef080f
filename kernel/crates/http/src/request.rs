//! A parsed request: what handlers see.

use alloc::string::String;
use alloc::vec::Vec;
use base64::Engine as _;
use core::net::SocketAddr;

/// One HTTP request, head and body complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// `HTTP/1.x` minor version.
    pub minor: u8,
    /// Header names as sent (compare without case: [`Request::header`]).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

/// A user name and password from `Authorization: Basic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Basic credentials, if the request carries well-formed ones.
    pub fn basic_auth(&self) -> Option<Credentials> {
        let v = core::str::from_utf8(self.header("authorization")?).ok()?;
        let (scheme, rest) = v.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        Some(Credentials {
            user: user.into(),
            password: password.into(),
        })
    }

    /// Whether the client asked to close after this exchange (or speaks
    /// HTTP/1.0 without asking to keep it open).
    pub fn wants_close(&self) -> bool {
        let tokens = |v: &[u8], t: &str| {
            core::str::from_utf8(v)
                .map(|s| s.split(',').any(|x| x.trim().eq_ignore_ascii_case(t)))
                .unwrap_or(false)
        };
        match self.header("connection") {
            Some(v) if tokens(v, "close") => true,
            Some(v) if tokens(v, "keep-alive") => false,
            _ => self.minor == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], minor: u8) -> Request {
        Request {
            method: "POST".into(),
            target: "/targetrpc?x=1".into(),
            minor,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
            peer: None,
        }
    }

    #[test]
    fn basic_credentials_and_connection_rules() {
        // "admin:se:cret" (a colon in the password is the password's).
        let r = req(&[("AUTHORIZATION", "Basic YWRtaW46c2U6Y3JldA==")], 1);
        assert_eq!(
            r.basic_auth(),
            Some(Credentials {
                user: "admin".into(),
                password: "se:cret".into()
            })
        );
        assert_eq!(req(&[("Authorization", "Basic !!!")], 1).basic_auth(), None);
        assert_eq!(
            req(&[("Authorization", "Bearer abc")], 1).basic_auth(),
            None
        );
        assert_eq!(req(&[], 1).basic_auth(), None);
        assert_eq!(r.path(), "/targetrpc");
        assert_eq!(r.query(), Some("x=1"));
        assert!(!req(&[], 1).wants_close());
        assert!(req(&[], 0).wants_close());
        assert!(!req(&[("Connection", "Keep-Alive")], 0).wants_close());
        assert!(req(&[("connection", "foo, close")], 1).wants_close());
    }
}
