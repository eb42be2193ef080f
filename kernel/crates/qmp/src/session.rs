//! One QMP connection: bytes in, replies and events out.

use crate::args::{self, Args};
use crate::error::QmpError;
use crate::json;
use crate::stream::{Split, Splitter};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value, json};

/// Replies waiting to be read beyond which no more input is taken: the
/// caller stops reading ([`Session::wants_input`]) until the peer reads.
pub const MAX_OUTPUT: usize = 256 << 10;

/// Largest single reply. A bigger one is replaced by an error, so a
/// command cannot push the output past [`MAX_PENDING`].
pub const MAX_REPLY: usize = 256 << 10;

/// The most output a session ever holds. Replies are made only below
/// [`MAX_OUTPUT`] and are at most [`MAX_REPLY`]; an event that would pass
/// this marks the session stalled instead.
pub const MAX_PENDING: usize = MAX_OUTPUT + MAX_REPLY;

/// Output buffers that grew past this are released once drained.
const KEEP_CAPACITY: usize = 64 << 10;

/// Capabilities the protocol defines. None is offered: out-of-band
/// execution needs a second dispatch path the appliance does not have.
const KNOWN_CAPABILITIES: &[&str] = &["oob"];

/// Commands the session answers itself.
const BUILTIN: &[&str] = &["qmp_capabilities", "query-commands", "query-version"];

/// The server version reported in the greeting and by `query-version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// Free text naming the build, e.g. `"ironbay 0.1.0"`.
    pub package: String,
}

/// What a new connection is told before anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub version: Version,
}

impl Greeting {
    /// The `query-version` return value.
    pub fn version_value(&self) -> Value {
        let v = &self.version;
        json!({
            "qemu": { "major": v.major, "minor": v.minor, "micro": v.micro },
            "package": v.package,
        })
    }

    /// The greeting line, `{"QMP": {"version": ..., "capabilities": []}}`
    /// and CR LF.
    pub fn greeting_bytes(&self) -> Vec<u8> {
        let g = json!({ "QMP": { "version": self.version_value(), "capabilities": [] } });
        let mut out = Vec::new();
        json::write(&mut out, &g);
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// The appliance's commands.
pub trait Dispatch {
    /// Names of the commands [`Dispatch::call`] serves. A name the session
    /// answers itself (`qmp_capabilities`, `query-version`,
    /// `query-commands`) is never passed on.
    fn commands(&self) -> &[&str];

    /// Runs one command. `args` is the request's `arguments`, or empty;
    /// read it with [`Args`] for the usual errors. Commands without a
    /// result return an empty object.
    fn call(&mut self, name: &str, args: &Map<String, Value>) -> Result<Value, QmpError>;
}

/// One connection. Drive it in this order:
///
/// 1. [`Session::new`] queues the greeting.
/// 2. Send [`Session::poll_output`]; report what went out with
///    [`Session::consume_output`].
/// 3. While [`Session::wants_input`], hand received bytes to
///    [`Session::handle_input`]; it returns how many it took, and the rest
///    must be offered again later (leave it in the socket).
/// 4. [`Session::push_event`] whenever something happens.
/// 5. Close the connection once [`Session::is_stalled`], or when
///    `wants_input` stays false past the caller's deadline: the peer is not
///    reading.
#[derive(Debug)]
pub struct Session {
    greeting: Greeting,
    splitter: Splitter,
    out: Vec<u8>,
    negotiated: bool,
    stalled: bool,
}

impl Session {
    pub fn new(greeting: &Greeting) -> Self {
        Session {
            greeting: greeting.clone(),
            splitter: Splitter::new(),
            out: greeting.greeting_bytes(),
            negotiated: false,
            stalled: false,
        }
    }

    /// Whether `qmp_capabilities` has succeeded.
    pub fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// An event did not fit because the peer stopped reading; the session
    /// takes no more input and the connection should be closed.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Whether [`Session::handle_input`] would take bytes now.
    pub fn wants_input(&self) -> bool {
        !self.stalled && self.out.len() < MAX_OUTPUT
    }

    /// Bytes to send.
    pub fn poll_output(&self) -> &[u8] {
        &self.out
    }

    /// Drops the first `n` bytes of [`Session::poll_output`], which went out.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
        if self.out.is_empty() && self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
    }

    /// Bytes held for an unfinished request.
    pub fn buffered_input(&self) -> usize {
        self.splitter.buffered()
    }

    /// Takes requests from `input`, answering each in order, until the
    /// input ends or the output reaches [`MAX_OUTPUT`]. Returns the number
    /// of bytes taken.
    pub fn handle_input(&mut self, input: &[u8], dispatcher: &mut impl Dispatch) -> usize {
        let mut used = 0;
        while self.wants_input() {
            let Some(rest) = input.get(used..).filter(|r| !r.is_empty()) else {
                break;
            };
            let (n, split) = self.splitter.split(rest);
            used += n;
            match split {
                Split::NeedMore => {}
                Split::Message => match json::parse(self.splitter.message()) {
                    Ok(req) => self.request(req, dispatcher),
                    Err(desc) => self.respond(None, Err(QmpError::generic(desc))),
                },
                Split::Error(e) => self.respond(None, Err(QmpError::generic(json::split_error(e)))),
            }
        }
        used
    }

    /// Queues an event, `{"event": NAME, "data": DATA, "timestamp": ...}`,
    /// with `timestamp_us` in microseconds since the epoch. Sessions still
    /// negotiating get none. Returns whether it was queued; an event that
    /// does not fit stalls the session, since a client that misses one
    /// would be misled about the state of things.
    pub fn push_event(&mut self, name: &str, data: Option<Value>, timestamp_us: u64) -> bool {
        if !self.negotiated || self.stalled {
            return false;
        }
        let mut ev = Map::new();
        ev.insert("event".into(), Value::String(name.into()));
        if let Some(data) = data {
            ev.insert("data".into(), data);
        }
        ev.insert(
            "timestamp".into(),
            json!({
                "seconds": timestamp_us / 1_000_000,
                "microseconds": timestamp_us % 1_000_000,
            }),
        );
        let start = self.out.len();
        json::write(&mut self.out, &Value::Object(ev));
        self.out.extend_from_slice(b"\r\n");
        if self.out.len() > MAX_PENDING {
            self.out.truncate(start);
            self.stalled = true;
            return false;
        }
        true
    }

    fn request(&mut self, req: Value, d: &mut impl Dispatch) {
        let Value::Object(mut req) = req else {
            let e = QmpError::generic("QMP input must be a JSON object");
            return self.respond(None, Err(e));
        };
        let result = self.run(&req, d);
        self.respond(req.remove("id"), result);
    }

    fn run(&mut self, req: &Map<String, Value>, d: &mut impl Dispatch) -> Result<Value, QmpError> {
        let Request { name, args } = check_request(req)?;
        let empty = Map::new();
        let args = args.unwrap_or(&empty);
        if !self.negotiated && name != "qmp_capabilities" {
            return Err(QmpError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        match name {
            "qmp_capabilities" => self.qmp_capabilities(args),
            "query-version" => {
                Args::new(args).finish()?;
                Ok(self.greeting.version_value())
            }
            "query-commands" => {
                Args::new(args).finish()?;
                let mut names: Vec<&str> = BUILTIN.to_vec();
                names.extend(d.commands().iter().filter(|n| !BUILTIN.contains(n)));
                Ok(names.iter().map(|n| json!({ "name": n })).collect())
            }
            _ if d.commands().contains(&name) => d.call(name, args),
            _ => Err(QmpError::command_not_found(format!(
                "The command {name} has not been found"
            ))),
        }
    }

    fn qmp_capabilities(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let mut a = Args::new(args);
        let mut unavailable = Vec::new();
        for (i, cap) in a
            .opt_array("enable")?
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let path = a.path(&format!("enable[{i}]"));
            let cap = cap
                .as_str()
                .ok_or_else(|| args::invalid_type(&path, "string"))?;
            if !KNOWN_CAPABILITIES.contains(&cap) {
                return Err(QmpError::generic(format!(
                    "Parameter '{path}' does not accept value '{cap}'"
                )));
            }
            unavailable.push(cap);
        }
        a.finish()?;
        // Checked after the arguments, as the reference server does.
        if self.negotiated {
            return Err(QmpError::command_not_found(
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        if !unavailable.is_empty() {
            return Err(QmpError::generic(format!(
                "Capability {} not available",
                unavailable.join(", ")
            )));
        }
        self.negotiated = true;
        Ok(Value::Object(Map::new()))
    }

    /// Appends the reply, with the request's `id` when it had one.
    fn respond(&mut self, id: Option<Value>, result: Result<Value, QmpError>) {
        let start = self.out.len();
        write_reply(&mut self.out, id.as_ref(), result);
        if self.out.len() - start > MAX_REPLY {
            self.out.truncate(start);
            let e = QmpError::generic("The reply is too large to send");
            write_reply(&mut self.out, id.as_ref(), Err(e));
        }
    }
}

fn write_reply(out: &mut Vec<u8>, id: Option<&Value>, result: Result<Value, QmpError>) {
    let mut m = Map::new();
    match result {
        Ok(v) => m.insert("return".into(), v),
        Err(e) => m.insert(
            "error".into(),
            json!({ "class": e.class.as_str(), "desc": e.desc }),
        ),
    };
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    json::write(out, &Value::Object(m));
    out.extend_from_slice(b"\r\n");
}

/// What a request object asks for.
struct Request<'a> {
    name: &'a str,
    args: Option<&'a Map<String, Value>>,
}

/// Checks a request object's members. `exec-oob` is an unexpected member
/// like any other, since out-of-band execution is never negotiated.
fn check_request(req: &Map<String, Value>) -> Result<Request<'_>, QmpError> {
    let mut execute = None;
    let mut args = None;
    for (k, v) in req {
        match k.as_str() {
            "execute" => {
                let name = v.as_str().ok_or_else(|| {
                    QmpError::generic("QMP input member 'execute' must be a string")
                })?;
                execute = Some(name);
            }
            "arguments" => {
                let map = v.as_object().ok_or_else(|| {
                    QmpError::generic("QMP input member 'arguments' must be an object")
                })?;
                args = Some(map);
            }
            "id" => {}
            other => {
                return Err(QmpError::generic(format!(
                    "QMP input member '{other}' is unexpected"
                )));
            }
        }
    }
    let name = execute.ok_or_else(|| QmpError::generic("QMP input lacks member 'execute'"))?;
    Ok(Request { name, args })
}
