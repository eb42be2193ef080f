//! Responses and their wire form.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A response to send; `Content-Length` and `Connection` are added when it
/// is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: alloc::vec![("Content-Type", content_type.into())],
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "application/json", body)
    }

    /// A short plain-text answer naming the status.
    pub fn error(status: u16, detail: &str) -> Self {
        let text = if detail.is_empty() {
            format!("{status} {}\n", reason(status))
        } else {
            format!("{status} {}: {detail}\n", reason(status))
        };
        Self::new(status, "text/plain; charset=utf-8", text)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; `head_only` for answers to HEAD.
    pub fn encode(&self, close: bool, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).into_bytes();
        for (n, v) in &self.headers {
            // Header values never carry line breaks onto the wire.
            let v: String = v.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let r = Response::json(200, "{}").with_header("X-A", "b\r\nInjected: 1");
        let s = String::from_utf8(r.encode(true, false)).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: bInjected: 1\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
        let h = String::from_utf8(Response::error(404, "").encode(false, true)).unwrap();
        assert!(h.starts_with("HTTP/1.1 404 Not Found\r\n") && h.ends_with("\r\n\r\n"));
        assert!(h.contains("Content-Length: 14\r\n"), "{h}");
    }
}
