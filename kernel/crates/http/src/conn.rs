//! One HTTP/1.1 connection, sans-IO.
//!
//! Driving order: [`Conn::handle_input`] while [`Conn::wants_input`]; then
//! [`Conn::poll_request`], and for a request [`Conn::respond`] (at once or
//! later: the connection waits, reading nothing more, until it has the
//! answer); send [`Conn::poll_output`] and report it with
//! [`Conn::consume_output`]; call [`Conn::handle_timeout`] when
//! [`Conn::poll_timeout`] is due; close the socket once
//! [`Conn::finished`].
//!
//! One request is served at a time: pipelined requests wait in the socket,
//! so a connection holds at most one head, one body and one response.

use crate::request::Request;
use crate::response::Response;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::SocketAddr;

/// Bounds and deadlines of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line and headers (431 beyond).
    pub max_head: usize,
    pub max_headers: usize,
    /// Body (413 beyond).
    pub max_body: usize,
    /// From a request's first byte to its last (408 after).
    pub request_ms: u64,
    /// A kept-alive connection with no request begun is closed after this.
    pub idle_ms: u64,
    /// POST/PUT/PATCH without a Content-Length get 411 (targetd); when
    /// false they have an empty body, as RFC 9112 reads them (curl -X POST
    /// sends none).
    pub require_length: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 << 10,
            max_headers: 64,
            max_body: 128 << 10,
            request_ms: 10_000,
            idle_ms: 60_000,
            require_length: true,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Reading a head (nothing of it yet when `begun` is `None`).
    Head { begun: Option<u64> },
    /// Head parsed; `need` body bytes to go.
    Body { begun: u64, need: usize },
    /// A request is ready or with the handler.
    Busy,
    /// The last response is queued; close once it is out.
    Closing,
}

pub struct Conn {
    limits: Limits,
    peer: Option<SocketAddr>,
    state: State,
    /// Bytes of the current request (head, then body).
    input: Vec<u8>,
    head: Option<Request>,
    ready: Option<Request>,
    /// The request being answered: HEAD and keep-alive rules.
    head_only: bool,
    close_after: bool,
    out: Vec<u8>,
    sent: usize,
    /// A response held back until a time (a tarpit).
    delayed: Option<(u64, Vec<u8>)>,
    last_ms: u64,
}

impl Conn {
    pub fn new(limits: Limits, peer: Option<SocketAddr>, now_ms: u64) -> Self {
        Conn {
            limits,
            peer,
            state: State::Head { begun: None },
            input: Vec::new(),
            head: None,
            ready: None,
            head_only: false,
            close_after: false,
            out: Vec::new(),
            sent: 0,
            delayed: None,
            last_ms: now_ms,
        }
    }

    pub fn wants_input(&self) -> bool {
        matches!(self.state, State::Head { .. } | State::Body { .. })
    }

    /// Last time the peer sent something or we answered.
    pub fn last_activity_ms(&self) -> u64 {
        self.last_ms
    }

    /// A request is with the handler or its answer is held back.
    pub fn is_busy(&self) -> bool {
        self.state == State::Busy
    }

    /// Takes bytes from the peer; returns how many were used.
    pub fn handle_input(&mut self, data: &[u8], now_ms: u64) -> usize {
        let mut used = 0;
        while used < data.len() && self.wants_input() {
            let room = match self.state {
                State::Head { .. } => self.limits.max_head + 1 - self.input.len(),
                State::Body { need, .. } => need,
                _ => 0,
            };
            let take = room.min(data.len() - used);
            if take == 0 {
                break;
            }
            if let State::Head { begun: None } = self.state {
                self.state = State::Head {
                    begun: Some(now_ms),
                };
            }
            self.input.extend_from_slice(&data[used..used + take]);
            used += take;
            self.last_ms = now_ms;
            self.advance(now_ms);
        }
        used
    }

    fn advance(&mut self, now_ms: u64) {
        match self.state {
            State::Head { .. } => self.parse_head(now_ms),
            State::Body { begun, need } => {
                let take = need.min(self.input.len());
                if let Some(r) = self.head.as_mut() {
                    r.body.extend_from_slice(&self.input[..take]);
                }
                self.input.drain(..take);
                if take == need {
                    self.ready = self.head.take();
                    self.state = State::Busy;
                } else {
                    self.state = State::Body {
                        begun,
                        need: need - take,
                    };
                }
            }
            _ => {}
        }
    }

    fn parse_head(&mut self, now_ms: u64) {
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let max = self.limits.max_headers.min(storage.len());
        let mut req = httparse::Request::new(&mut storage[..max]);
        let parsed = req.parse(&self.input);
        let head_len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.input.len() > self.limits.max_head {
                    return self.fail(431, "request head too large");
                }
                return;
            }
            Err(httparse::Error::TooManyHeaders) => {
                return self.fail(431, "too many header fields");
            }
            Err(httparse::Error::Version) => return self.fail(505, ""),
            Err(_) => return self.fail(400, "malformed request"),
        };
        if head_len > self.limits.max_head {
            return self.fail(431, "request head too large");
        }
        let method = String::from(req.method.unwrap_or(""));
        let target = String::from(req.path.unwrap_or(""));
        let minor = req.version.unwrap_or(1);
        let headers: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|h| (String::from(h.name), h.value.to_vec()))
            .collect();
        let request = Request {
            method,
            target,
            minor,
            headers,
            body: Vec::new(),
            peer: self.peer,
        };
        if request.header("transfer-encoding").is_some() {
            // Bodies come with a Content-Length here.
            return self.fail(411, "send the body with a Content-Length");
        }
        let mut length: Option<usize> = None;
        for (n, v) in &request.headers {
            if !n.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let parsed = core::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (parsed, length) {
                (None, _) => return self.fail(400, "bad Content-Length"),
                (Some(a), Some(b)) if a as usize != b => {
                    return self.fail(400, "conflicting Content-Length");
                }
                (Some(a), _) if a > self.limits.max_body as u64 => {
                    return self.fail(413, "request body too large");
                }
                (Some(a), _) => length = Some(a as usize),
            }
        }
        let needs_body = matches!(request.method.as_str(), "POST" | "PUT" | "PATCH");
        if needs_body && length.is_none() && self.limits.require_length {
            return self.fail(411, "");
        }
        let expect = request.header("expect").map(<[u8]>::to_ascii_lowercase);
        match expect.as_deref() {
            None => {}
            Some(b"100-continue") if length.unwrap_or(0) > 0 => {
                self.queue(b"HTTP/1.1 100 Continue\r\n\r\n")
            }
            Some(b"100-continue") => {}
            Some(_) => return self.fail(417, ""),
        }
        let rest = self.input.split_off(head_len);
        self.input = rest;
        self.head_only = request.method == "HEAD";
        self.close_after = request.wants_close();
        let need = length.unwrap_or(0);
        self.head = Some(request);
        self.state = State::Body {
            begun: match self.state {
                State::Head { begun } => begun.unwrap_or(now_ms),
                _ => now_ms,
            },
            need,
        };
        // Bytes beyond the body stay in `input`: the next request's.
        self.advance(now_ms);
    }

    /// Answers a protocol error and closes.
    fn fail(&mut self, status: u16, detail: &str) {
        self.input.clear();
        self.head = None;
        self.ready = None;
        self.head_only = false;
        let bytes = Response::error(status, detail).encode(true, false);
        self.queue(&bytes);
        self.state = State::Closing;
    }

    fn queue(&mut self, bytes: &[u8]) {
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// The request read, once: the handler answers with [`Conn::respond`].
    pub fn poll_request(&mut self) -> Option<Request> {
        self.ready.take()
    }

    /// The answer to the request taken; sent at `at_ms` if given and
    /// later than now (input stays paused until then), else at once.
    pub fn respond(&mut self, resp: &Response, at_ms: Option<u64>, now_ms: u64) {
        if self.state != State::Busy {
            return;
        }
        let close = self.close_after;
        let bytes = resp.encode(close, self.head_only);
        self.last_ms = now_ms;
        match at_ms {
            Some(at) if at > now_ms => self.delayed = Some((at, bytes)),
            _ => self.release(bytes, close),
        }
    }

    fn release(&mut self, bytes: Vec<u8>, close: bool) {
        self.queue(&bytes);
        self.head_only = false;
        if close {
            self.state = State::Closing;
            self.input.clear();
        } else {
            self.state = State::Head { begun: None };
            if !self.input.is_empty() {
                let now = self.last_ms;
                self.state = State::Head { begun: Some(now) };
                self.parse_head(now);
            }
        }
    }

    pub fn poll_output(&self) -> Option<&[u8]> {
        (self.sent < self.out.len()).then(|| &self.out[self.sent..])
    }

    pub fn consume_output(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
    }

    fn out_pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// When [`Conn::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        if let Some((at, _)) = &self.delayed {
            return Some(*at);
        }
        match self.state {
            State::Head { begun: Some(t) } | State::Body { begun: t, .. } => {
                Some(t + self.limits.request_ms)
            }
            State::Head { begun: None } if self.out_pending() == 0 => {
                Some(self.last_ms + self.limits.idle_ms)
            }
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        if let Some((at, _)) = &self.delayed {
            if now_ms >= *at
                && let Some((_, bytes)) = self.delayed.take()
            {
                let close = self.close_after;
                self.release(bytes, close);
            }
            return;
        }
        match self.state {
            State::Head { begun: Some(t) } | State::Body { begun: t, .. }
                if now_ms >= t + self.limits.request_ms =>
            {
                self.fail(408, "request not finished in time");
            }
            State::Head { begun: None }
                if self.out_pending() == 0 && now_ms >= self.last_ms + self.limits.idle_ms =>
            {
                self.state = State::Closing;
            }
            _ => {}
        }
    }

    /// Nothing more will be said: close once output is out.
    pub fn finished(&self) -> bool {
        self.state == State::Closing && self.out_pending() == 0 && self.delayed.is_none()
    }

    /// The peer closed its side: no more requests will come.
    pub fn handle_peer_closed(&mut self) {
        if let State::Head { .. } | State::Body { .. } = self.state {
            self.input.clear();
            self.head = None;
            self.state = State::Closing;
        }
        self.close_after = true;
    }
}
