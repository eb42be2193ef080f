//! One JSON-RPC connection: a stream of JSON values in, responses out.
//!
//! The caller drives a [`Session`] in this order: while
//! [`Session::wants_input`], hand it the bytes received
//! ([`Session::handle_input`]); send what [`Session::poll_output`] holds and
//! report what went out ([`Session::consume_output`]); when a deferred
//! request's event comes, [`Session::complete_deferred`]; once
//! [`Session::closed`] and the output is sent, close the connection.
//!
//! A management peer is still a network peer, so what one session holds is
//! bounded: the unparsed input ([`MAX_REQUEST`]), what a request may expand
//! to when parsed ([`MAX_VALUES`]), what runs per batch ([`MAX_BATCH`],
//! [`MAX_BATCH_OUTPUT`]) and the replies waiting to be read ([`MAX_OUTPUT`],
//! [`MAX_REFUSED`]).

use crate::methods::{self, RpcError, code};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ironbay_model::Model;
use serde_json::{Map, Value, json};

/// Largest request (or batch) accepted; a bigger one is a parse error and
/// ends the connection, since the stream can no longer be trusted.
pub const MAX_REQUEST: usize = 1 << 20;

/// JSON values (containers, elements, members) one request or batch may
/// hold. A parsed value takes far more memory than its text: the 7-byte
/// `{"a":0}` is a whole B-tree node, about 700 bytes, so a megabyte of them
/// would be a hundred megabytes of heap; at this cap it is under 2 MiB. A
/// full batch of real set-up calls needs a few thousand.
pub const MAX_VALUES: usize = 8192;

/// Requests run from one batch; the rest are answered with a
/// [`code::LIMIT`] error. SPDK's client sends one request at a time, and
/// without a cap a single small input could run hundreds of thousands of
/// calls in one turn of the poll loop.
pub const MAX_BATCH: usize = 128;

/// Reply bytes one batch may produce. A batch's reply is built whole before
/// any of it is sent, and small requests can have large answers
/// (`bdev_get_bdevs`); once this is reached nothing more in the batch runs.
pub const MAX_BATCH_OUTPUT: usize = 1 << 20;

/// Replies waiting to be read beyond which no request runs: the caller stops
/// reading at this mark ([`Session::wants_input`]), and requests already
/// received in the same input are answered with a [`code::LIMIT`] error.
pub const MAX_OUTPUT: usize = 1 << 20;

/// Error bytes a peer that keeps sending without reading may collect past
/// [`MAX_OUTPUT`] before the session gives up on it.
pub const MAX_REFUSED: usize = 64 << 10;

/// Buffers that grew past this are released once empty, so an idle session
/// does not keep the memory of its largest exchange.
const KEEP_CAPACITY: usize = 64 << 10;

/// What a deferred reply waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `bdevperf_run`: the benchmark's end.
    Bench,
    /// `framework_wait_init` before `framework_start_init`.
    Init,
}

#[derive(Default)]
pub struct Session {
    /// Received bytes not yet parsed: the start of the value being framed.
    buf: Vec<u8>,
    framer: Framer,
    out: Vec<u8>,
    /// Bytes of errors for requests refused since the output was last below
    /// [`MAX_OUTPUT`].
    refused: usize,
    closed: bool,
    /// A request answered later, and what it waits for.
    deferred: Option<(Value, Wait)>,
}

/// Finds where the JSON value at the front of the input ends by looking at
/// each byte once. Parsing the whole buffer again on every segment would
/// cost the square of a request's length when a peer trickles it in.
#[derive(Default)]
struct Framer {
    /// Bytes of the current value scanned so far; 0 between values.
    len: usize,
    /// `{` and `[` open outside strings.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// A bare number or literal: it ends where a delimiter starts.
    scalar: bool,
    /// Containers, elements and members seen, what parsing will allocate.
    values: usize,
    /// Length of the unfinished value when its syntax was last checked.
    checked: usize,
}

enum Frame {
    /// The value is this many bytes long.
    Complete(usize),
    Partial,
    TooComplex,
}

impl Framer {
    /// Scans `value` (the current value from its first byte) past what an
    /// earlier call saw. Only framing: the parser checks the syntax.
    fn scan(&mut self, value: &[u8]) -> Frame {
        while let Some(&b) = value.get(self.len) {
            self.len += 1;
            if self.len == 1 {
                self.values = 1;
                match b {
                    b'{' | b'[' => self.depth = 1,
                    b'"' => self.in_string = true,
                    b'}' | b']' | b',' | b':' => return Frame::Complete(1),
                    _ => self.scalar = true,
                }
            } else if self.scalar {
                if b.is_ascii_whitespace() || b"{}[],:\"".contains(&b) {
                    return Frame::Complete(self.len - 1);
                }
            } else if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Frame::Complete(self.len);
                    }
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => {
                        self.depth += 1;
                        self.values += 1;
                    }
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Frame::Complete(self.len);
                        }
                    }
                    b',' | b':' => self.values += 1,
                    _ => {}
                }
                if self.values > MAX_VALUES {
                    return Frame::TooComplex;
                }
            }
        }
        Frame::Partial
    }
}

fn error(id: Value, e: RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": e.code, "message": e.message } })
}

fn invalid(message: &str) -> RpcError {
    RpcError {
        code: code::INVALID_REQUEST,
        message: message.into(),
    }
}

fn limit(message: String) -> RpcError {
    RpcError {
        code: code::LIMIT,
        message,
    }
}

/// The answer to a request that was not run; none for a notification.
fn refusal(req: &Value, why: &str) -> Option<Value> {
    let id = match req.get("id") {
        None if req.is_object() => return None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => id.clone(),
        _ => Value::Null,
    };
    Some(error(id, limit(why.into())))
}

/// Appends `v` to a batch reply under construction unless that would take
/// it past [`MAX_BATCH_OUTPUT`].
fn append(body: &mut Vec<u8>, v: &Value) -> bool {
    let Ok(bytes) = serde_json::to_vec(v) else {
        return false;
    };
    if body.len() + 1 + bytes.len() > MAX_BATCH_OUTPUT {
        return false;
    }
    if !body.is_empty() {
        body.push(b',');
    }
    body.extend_from_slice(&bytes);
    true
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes received bytes and answers every complete request in them.
    pub fn handle_input(&mut self, data: &[u8], model: &mut Model<'_>) {
        if self.closed {
            return;
        }
        self.buf.extend_from_slice(data);
        // Start of the unparsed rest; consumed bytes leave in one move at
        // the end rather than one per request.
        let mut pos = 0;
        while !self.closed {
            if self.framer.len == 0 {
                match self.buf[pos..]
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                {
                    Some(n) => pos += n,
                    None => {
                        pos = self.buf.len();
                        break;
                    }
                }
            }
            let value = &self.buf[pos..];
            match self.framer.scan(value) {
                Frame::Complete(end) => {
                    self.framer = Framer::default();
                    let parsed = serde_json::from_slice::<Value>(&value[..end]);
                    pos += end;
                    match parsed {
                        Ok(v) => self.dispatch(v, model),
                        Err(_) => self.give_up(code::PARSE_ERROR, "Parse error"),
                    }
                }
                Frame::TooComplex => self.give_up(
                    code::PARSE_ERROR,
                    &format!("request has more than {MAX_VALUES} values"),
                ),
                Frame::Partial if value.len() > MAX_REQUEST => {
                    self.give_up(code::PARSE_ERROR, "request too large")
                }
                Frame::Partial => {
                    // Syntax errors show before the value ends, at a cost
                    // that stays linear: only each time it doubled.
                    if value.len() >= 2 * self.framer.checked {
                        self.framer.checked = value.len();
                        if serde_json::from_slice::<Value>(value).is_err_and(|e| !e.is_eof()) {
                            self.give_up(code::PARSE_ERROR, "Parse error");
                        }
                    }
                    break;
                }
            }
        }
        if self.closed {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..pos);
            if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
    }

    /// Answers with a last error and ends the session: the stream can no
    /// longer be trusted, or the peer is not reading.
    fn give_up(&mut self, code: i64, message: &str) {
        self.send(&error(
            Value::Null,
            RpcError {
                code,
                message: message.into(),
            },
        ));
        self.closed = true;
    }

    fn send(&mut self, v: &Value) {
        if let Ok(bytes) = serde_json::to_vec(v) {
            self.out.extend_from_slice(&bytes);
            self.out.push(b'\n');
        }
    }

    fn dispatch(&mut self, v: Value, model: &mut Model<'_>) {
        let run = self.out.len() < MAX_OUTPUT;
        let before = self.out.len();
        match v {
            Value::Array(reqs) if reqs.is_empty() => {
                self.send(&error(Value::Null, invalid("empty batch")))
            }
            Value::Array(reqs) => self.batch(reqs, run, model),
            other => {
                let reply = if run {
                    self.one(other, model, false)
                } else {
                    refusal(&other, &Self::output_full())
                };
                if let Some(r) = reply {
                    self.send(&r);
                }
            }
        }
        if !run {
            self.refused += self.out.len() - before;
            if self.refused > MAX_REFUSED {
                self.give_up(
                    code::LIMIT,
                    "requests keep coming while replies are not read; closing",
                );
            }
        }
    }

    fn output_full() -> String {
        format!("not run: {MAX_OUTPUT} bytes of replies wait to be read; read them first")
    }

    /// A batch: at most [`MAX_BATCH`] requests run and [`MAX_BATCH_OUTPUT`]
    /// bytes of replies; the rest are answered with errors while those fit,
    /// and a last error counts what got no answer at all.
    fn batch(&mut self, reqs: Vec<Value>, run: bool, model: &mut Model<'_>) {
        let output_full = Self::output_full();
        let too_many = format!("not run: a batch runs at most {MAX_BATCH} requests");
        let batch_full = format!("not run: the batch's replies reached {MAX_BATCH_OUTPUT} bytes");
        let mut body = Vec::new();
        // A reply did not fit: nothing more runs.
        let mut full = false;
        let (mut unanswered, mut skipped) = (0usize, 0usize);
        for (i, req) in reqs.into_iter().enumerate() {
            let why = if !run {
                &output_full
            } else if i >= MAX_BATCH {
                &too_many
            } else if full {
                &batch_full
            } else {
                let Some(reply) = self.one(req, model, true) else {
                    continue;
                };
                if append(&mut body, &reply) {
                    continue;
                }
                full = true;
                // Its effect stands; only the answer is too big to carry.
                let e = error(
                    reply["id"].clone(),
                    limit(format!(
                        "the reply does not fit the batch's {MAX_BATCH_OUTPUT} bytes; \
                         send the request alone to read it"
                    )),
                );
                if !append(&mut body, &e) {
                    unanswered += 1;
                }
                continue;
            };
            match refusal(&req, why) {
                None => skipped += 1,
                Some(e) if !append(&mut body, &e) => {
                    full = true;
                    unanswered += 1;
                }
                Some(_) => {}
            }
        }
        if unanswered + skipped > 0 {
            let note = error(
                Value::Null,
                limit(format!(
                    "batch limits ({MAX_BATCH} requests, {MAX_BATCH_OUTPUT} bytes of replies): \
                     {unanswered} requests got no reply, {skipped} notifications were not run"
                )),
            );
            if let Ok(bytes) = serde_json::to_vec(&note) {
                if !body.is_empty() {
                    body.push(b',');
                }
                body.extend_from_slice(&bytes);
            }
        }
        if !body.is_empty() {
            self.out.push(b'[');
            self.out.extend_from_slice(&body);
            self.out.extend_from_slice(b"]\n");
        }
    }

    /// One request; `None` for notifications.
    fn one(&mut self, v: Value, model: &mut Model<'_>, batched: bool) -> Option<Value> {
        let Value::Object(mut req) = v else {
            return Some(error(Value::Null, invalid("request must be an object")));
        };
        let id = req.remove("id");
        let notification = id.is_none();
        let id = id.unwrap_or(Value::Null);
        if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
            return Some(error(
                Value::Null,
                invalid("id must be a number, string or null"),
            ));
        }
        if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Some(error(id, invalid("jsonrpc must be \"2.0\"")));
        }
        let Some(Value::String(method)) = req.remove("method") else {
            return Some(error(id, invalid("method must be a string")));
        };
        let params = match req.remove("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return Some(error(id, RpcError::params("params must be an object"))),
        };
        let wait = match methods::lookup(&method).map(|m| m.name) {
            Some("bdevperf_run") => Some(Wait::Bench),
            Some("framework_wait_init") if !*model.initialized => Some(Wait::Init),
            _ => None,
        };
        if wait.is_some() && notification {
            // Nobody would hear the result.
            return None;
        }
        if wait.is_some() && (batched || self.deferred.is_some()) {
            return Some(error(
                id,
                invalid(&format!("{method} must be sent alone, one at a time")),
            ));
        }
        let result = methods::call(model, &method, &params);
        if notification {
            return None;
        }
        if let Some(w) = wait
            && result.is_ok()
        {
            self.deferred = Some((id, w));
            return None;
        }
        Some(match result {
            Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
            Err(e) => error(id, e),
        })
    }

    /// Answers the deferred request if it waits for `what`.
    pub fn complete_deferred(&mut self, what: Wait, result: Result<Value, RpcError>) {
        if let Some((id, _)) = self.deferred.take_if(|(_, w)| *w == what) {
            let v = match result {
                Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
                Err(e) => error(id, e),
            };
            self.send(&v);
        }
    }

    pub fn poll_output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
        if self.out.len() < MAX_OUTPUT {
            self.refused = 0;
        }
        if self.out.is_empty() && self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
    }

    /// A parse error or a peer that does not read ended the session; close
    /// once the output is sent.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Requests are not read while [`MAX_OUTPUT`] bytes of replies wait.
    pub fn wants_input(&self) -> bool {
        !self.closed && self.out.len() < MAX_OUTPUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironbay_bdev::Registry;

    /// State a test session works on.
    struct World {
        reg: Registry,
        init: bool,
        down: bool,
        bench: Option<ironbay_bdev::bench::BenchSpec>,
    }

    impl World {
        fn new(init: bool) -> Self {
            World {
                reg: Registry::new(),
                init,
                down: false,
                bench: None,
            }
        }

        fn model(&mut self) -> Model<'_> {
            Model {
                bdevs: &mut self.reg,
                devices: None,
                nbd: None,
                iscsi: None,
                nvmf: None,
                memory_budget: 1 << 30,
                initialized: &mut self.init,
                shutdown: &mut self.down,
                bench: Some(&mut self.bench),
                config_store: None,
                lvol: None,
                targetd: None,
            }
        }

        /// Feeds `input` to `s` and returns every reply so far.
        fn feed(&mut self, s: &mut Session, input: &str) -> Vec<Value> {
            s.handle_input(input.as_bytes(), &mut self.model());
            replies(s)
        }
    }

    fn replies(s: &Session) -> Vec<Value> {
        serde_json::Deserializer::from_slice(s.poll_output())
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect()
    }

    fn session_with(input: &str) -> (Vec<Value>, Registry) {
        let mut w = World::new(true);
        let r = w.feed(&mut Session::new(), input);
        (r, w.reg)
    }

    fn code_of(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap_or(0)
    }

    #[test]
    fn create_list_delete_with_modern_and_seed_names() {
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"num_blocks":2048,"block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"construct_null_bdev","params":{"name":"Null0","num_blocks":10,"block_size":4096}}"#,
            "\n  ",
            r#"{"jsonrpc":"2.0","id":3,"method":"get_bdevs","params":{"name":"Malloc0"}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"bdev_null_delete","params":{"name":"Null0"}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"bdev_get_bdevs"}"#,
        ));
        assert_eq!(r[0]["result"], "Malloc0");
        assert_eq!(r[1]["result"], "Null0");
        assert_eq!(r[2]["result"][0]["num_blocks"], 2048);
        assert_eq!(r[2]["result"][0]["product_name"], "Malloc disk");
        assert_eq!(r[3]["result"], true);
        assert_eq!(r[4]["result"].as_array().unwrap().len(), 1);
        assert_eq!(reg.ids().count(), 1);
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_set_options","params":{"bdev_io_pool_size":1024,"bdev_io_cache_size":16}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"set_bdev_options","params":{"bdev_io_cache_size":2048}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"framework_get_config","params":{"name":"bdev"}}"#,
        ));
        assert_eq!(r[0]["result"], true);
        assert_eq!(code_of(&r[1]), -32602);
        assert_eq!(r[2]["result"][0]["params"]["bdev_io_pool_size"], 1024);
        assert_eq!(reg.options.bdev_io_cache_size, 16);
    }

    #[test]
    fn every_error_code() {
        let (r, _) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"bdev_malloc_create","params":{"num_blocks":"x","block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512,"colour":1}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"bdev_malloc_create"}"#,
            r#"{"jsonrpc":"1.0","id":5,"method":"spdk_get_version"}"#,
            r#"{"jsonrpc":"2.0","id":6,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"framework_start_init"}"#,
            r#"[]"#,
            r#"{"jsonrpc":"2.0","id":8,"method":"bdev_get_bdevs","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"bdev_malloc_delete","params":{"name":"X"}}"#,
        ));
        let codes: Vec<i64> = r.iter().map(code_of).collect();
        assert_eq!(
            codes,
            vec![
                -32601, -32602, -32602, -32602, -32600, -32600, -1, -32600, -32602, -32602
            ]
        );
        assert!(
            r[1]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("num_blocks")
        );
        assert!(
            r[2]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("colour")
        );
    }

    #[test]
    fn create_params_are_checked_before_anything_is_made() {
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"num_blocks":8}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"bdev_malloc_create","params":{"num_blocks":-1,"block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512,"uuid":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"bdev_null_create","params":{"name":7,"num_blocks":8,"block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":1000}}"#,
            r#"{"jsonrpc":"2.0","id":6,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512,"dif_type":1}}"#,
        ));
        for (reply, why) in r.iter().zip([
            "missing `block_size`",
            "non-negative",
            "not a UUID",
            "must be a string",
            "multiple of 512",
            "not supported",
        ]) {
            assert_eq!(code_of(reply), -32602);
            let msg = reply["error"]["message"].as_str().unwrap();
            assert!(msg.contains(why), "{msg} lacks {why}");
        }
        assert_eq!(reg.ids().count(), 0);
    }

    #[test]
    fn notifications_batches_and_parse_errors() {
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"},{"jsonrpc":"2.0","method":"spdk_get_version"},{"jsonrpc":"2.0","id":2,"method":"rpc_get_methods"}]"#,
            r#"{"jsonrpc": "2.0", "id": 3, "method": "#,
        ));
        assert_eq!(reg.ids().count(), 1, "the notification ran");
        assert_eq!(r.len(), 1, "one batch reply; the half request waits");
        assert_eq!(r[0].as_array().unwrap().len(), 2);
        assert!(
            r[0][1]["result"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == "bdev_get_bdevs")
        );
        let (r, _) = session_with(r#"{"jsonrpc": "2.0", "id": 3, "method": ]}"#);
        assert_eq!(code_of(&r[0]), -32700);
    }

    #[test]
    fn benchmark_reply_waits_for_the_run() {
        let mut w = World::new(true);
        let mut s = Session::new();
        let run = |id: u32| {
            alloc::format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"perform_tests","params":{{"bdev_name":"Malloc0","workload":"randread","io_size":4096,"queue_depth":4,"time_in_sec":1}}}}"#
            )
        };
        let input = alloc::format!(
            "{}{}{}{}",
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"num_blocks":64,"block_size":4096}}"#,
            r#"[{"jsonrpc":"2.0","id":9,"method":"bdevperf_run","params":{}}]"#,
            run(2),
            run(3)
        );
        let replies = w.feed(&mut s, &input);
        assert_eq!(replies.len(), 3, "no reply yet for the run: {replies:?}");
        assert_eq!(code_of(&replies[1][0]), -32600, "not in a batch");
        assert_eq!(replies[2]["id"], 3);
        assert_eq!(code_of(&replies[2]), -32600, "one at a time");
        let spec = w.bench.take().unwrap();
        assert_eq!((spec.bdev.as_str(), spec.queue_depth), ("Malloc0", 4));
        let consumed = s.poll_output().len();
        s.consume_output(consumed);
        s.complete_deferred(Wait::Init, Ok(json!({})));
        assert!(s.poll_output().is_empty(), "waits for the bench, not init");
        s.complete_deferred(Wait::Bench, Ok(json!({ "iops": 1.0 })));
        let v: Value = serde_json::from_slice(s.poll_output()).unwrap();
        assert_eq!(
            (v["id"].clone(), v["result"]["iops"].clone()),
            (json!(2), json!(1.0))
        );
    }

    #[test]
    fn wait_init_replies_once_init_starts() {
        let mut w = World::new(false);
        let mut s = Session::new();
        let r = w.feed(
            &mut s,
            concat!(
                r#"{"jsonrpc":"2.0","id":1,"method":"framework_wait_init"}"#,
                r#"{"jsonrpc":"2.0","id":2,"method":"bdev_get_bdevs"}"#,
                r#"{"jsonrpc":"2.0","id":3,"method":"bdev_set_options","params":{"bdev_io_pool_size":4096}}"#,
                r#"{"jsonrpc":"2.0","id":4,"method":"framework_start_init"}"#,
                r#"{"jsonrpc":"2.0","id":5,"method":"framework_wait_init"}"#,
            ),
        );
        let ids: Vec<&Value> = r.iter().map(|v| &v["id"]).collect();
        assert_eq!(ids, [2, 3, 4, 5], "id 1 waits: {r:?}");
        assert_eq!(code_of(&r[0]), -1);
        assert_eq!(
            (&r[1]["result"], &r[2]["result"]),
            (&json!(true), &json!(true))
        );
        assert!(w.init);
        let n = s.poll_output().len();
        s.consume_output(n);
        s.complete_deferred(Wait::Init, Ok(json!(true)));
        let v: Value = serde_json::from_slice(s.poll_output()).unwrap();
        assert_eq!((&v["id"], &v["result"]), (&json!(1), &json!(true)));
    }

    /// Creates `n` null bdevs, one request each.
    fn null_bdevs(w: &mut World, n: usize) {
        let mut s = Session::new();
        let input: String = (0..n)
            .map(|i| {
                alloc::format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"bdev_null_create","params":{{"name":"Null{i}","num_blocks":8,"block_size":512}}}}"#
                )
            })
            .collect();
        let r = w.feed(&mut s, &input);
        assert!(r.iter().all(|r| r.get("result").is_some()), "{r:?}");
    }

    fn batch_of(entries: impl Iterator<Item = String>) -> String {
        alloc::format!("[{}]", entries.collect::<Vec<_>>().join(","))
    }

    fn call(id: usize, method: &str) -> String {
        alloc::format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#)
    }

    #[test]
    fn a_batch_runs_at_most_max_batch_requests() {
        let mut w = World::new(true);
        let entries = (0..2)
            .map(|i| {
                alloc::format!(
                    r#"{{"jsonrpc":"2.0","method":"bdev_null_create","params":{{"name":"Early{i}","num_blocks":8,"block_size":512}}}}"#
                )
            })
            .chain((2..MAX_BATCH + 20).map(|i| call(i, "spdk_get_version")))
            .chain((0..5).map(|i| {
                alloc::format!(
                    r#"{{"jsonrpc":"2.0","method":"bdev_null_create","params":{{"name":"Late{i}","num_blocks":8,"block_size":512}}}}"#
                )
            }));
        let r = w.feed(&mut Session::new(), &batch_of(entries));
        let r = r[0].as_array().unwrap();
        assert_eq!(
            r.len(),
            MAX_BATCH + 18 + 1,
            "every id answered, plus a note"
        );
        for (i, reply) in r[..MAX_BATCH + 18].iter().enumerate() {
            assert_eq!(reply["id"], i + 2);
            if i + 2 < MAX_BATCH {
                assert!(reply["result"].is_object(), "{reply}");
            } else {
                assert_eq!(code_of(reply), code::LIMIT, "{reply}");
            }
        }
        let note = &r[MAX_BATCH + 18];
        assert_eq!((code_of(note), &note["id"]), (code::LIMIT, &Value::Null));
        assert!(
            note["error"]["message"]
                .as_str()
                .unwrap()
                .contains("5 notifications were not run")
        );
        let names: Vec<_> = w.reg.ids().filter_map(|id| w.reg.info(id)).collect();
        assert_eq!(names.len(), 2, "the early notifications ran, the late not");
    }

    #[test]
    fn batch_output_is_bounded_when_answers_are_large() {
        let mut w = World::new(true);
        null_bdevs(&mut w, 40);
        // 40 bdevs are over 20 KiB of JSON: 100 listings are twice the limit.
        let entries = (0..100).map(|i| call(i, "bdev_get_bdevs")).chain((100..MAX_BATCH).map(|i| {
            alloc::format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"bdev_null_create","params":{{"name":"Late{i}","num_blocks":8,"block_size":512}}}}"#
            )
        }));
        let mut s = Session::new();
        let r = w.feed(&mut s, &batch_of(entries));
        assert!(s.poll_output().len() <= MAX_BATCH_OUTPUT + 64);
        let r = r[0].as_array().unwrap();
        assert_eq!(r.len(), MAX_BATCH, "every request answered");
        let listed = r.iter().take_while(|r| r.get("result").is_some()).count();
        assert!((30..60).contains(&listed), "{listed} listings fit");
        let ran_too_big = &r[listed];
        assert_eq!(code_of(ran_too_big), code::LIMIT);
        assert!(
            ran_too_big["error"]["message"]
                .as_str()
                .unwrap()
                .contains("send the request alone")
        );
        for (i, reply) in r.iter().enumerate().skip(listed) {
            assert_eq!((code_of(reply), &reply["id"]), (code::LIMIT, &json!(i)));
        }
        assert_eq!(
            w.reg.ids().count(),
            40,
            "nothing ran once the batch was full"
        );
    }

    #[test]
    fn refusals_in_a_batch_are_bounded_too() {
        // Requests that cost little to send but whose errors echo long ids.
        let id = "i".repeat(300);
        let entries = (0..2700).map(|_| alloc::format!(r#"{{"id":"{id}"}}"#));
        let mut w = World::new(true);
        let mut s = Session::new();
        let r = w.feed(&mut s, &batch_of(entries));
        assert!(s.poll_output().len() <= MAX_BATCH_OUTPUT + 512);
        let r = r[0].as_array().unwrap();
        assert!(r.len() < 2700);
        assert_eq!(code_of(&r[0]), code::INVALID_REQUEST);
        assert_eq!(code_of(&r[MAX_BATCH]), code::LIMIT);
        let note = r.last().unwrap();
        assert_eq!(note["id"], Value::Null);
        assert!(
            note["error"]["message"]
                .as_str()
                .unwrap()
                .contains("requests got no reply")
        );
    }

    #[test]
    fn pipelined_requests_stop_running_while_replies_wait() {
        let mut w = World::new(true);
        null_bdevs(&mut w, 40);
        let late = r#"{"jsonrpc":"2.0","id":"late","method":"bdev_null_create","params":{"name":"Late","num_blocks":8,"block_size":512}}"#;
        let input: String = (0..100)
            .map(|i| call(i, "bdev_get_bdevs"))
            .collect::<String>()
            + late;
        let mut s = Session::new();
        let r = w.feed(&mut s, &input);
        assert_eq!(r.len(), 101, "every request answered");
        let listed = r.iter().take_while(|r| r.get("result").is_some()).count();
        assert!((30..90).contains(&listed), "{listed} listings ran");
        assert!(r[listed..].iter().all(|r| code_of(r) == code::LIMIT));
        assert_eq!(r[100]["id"], "late");
        assert_eq!(w.reg.ids().count(), 40, "the late create did not run");
        assert!(!s.wants_input() && !s.closed());
        let n = s.poll_output().len();
        s.consume_output(n);
        assert_eq!(s.out.capacity(), 0, "the big output buffer is released");
        assert!(s.wants_input());
        let r = w.feed(&mut s, late);
        assert_eq!(r[0]["result"], "Late");
    }

    #[test]
    fn a_peer_that_does_not_read_is_dropped() {
        let mut w = World::new(true);
        null_bdevs(&mut w, 40);
        let mut s = Session::new();
        let fill: String = (0..100).map(|i| call(i, "bdev_get_bdevs")).collect();
        w.feed(&mut s, &fill);
        let full = s.poll_output().len();
        // The caller ignores wants_input(): the session still stays bounded.
        for _ in 0..4 {
            let flood: String = (0..500).map(|i| call(i, "spdk_get_version")).collect();
            w.feed(&mut s, &flood);
        }
        assert!(s.closed());
        assert!(s.poll_output().len() <= full + MAX_REFUSED + 1024);
        let last = replies(&s).pop().unwrap();
        assert_eq!((code_of(&last), &last["id"]), (code::LIMIT, &Value::Null));
    }

    #[test]
    fn a_trickled_request_is_framed_once() {
        // Parsing the whole buffer again per byte would take minutes here.
        let id = "x".repeat(256 << 10);
        let req = alloc::format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"spdk_get_version"}}"#);
        let mut w = World::new(true);
        let mut s = Session::new();
        for b in req.as_bytes().chunks(1) {
            w.feed(&mut s, core::str::from_utf8(b).unwrap());
        }
        let r = replies(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["id"].as_str().map(str::len), Some(256 << 10));
    }

    #[test]
    fn framing_follows_strings_escapes_and_scalars() {
        let input = concat!(
            r#" {"jsonrpc":"2.0","id":"a}\"]\\","method":"spdk_get_version"}"#,
            r#"[{"jsonrpc":"2.0","id":"[{","method":"spdk_get_version"}]"#,
            "1 \"s\"",
            r#"{"jsonrpc":"2.0","id":2,"method":"spdk_get_version"}"#,
        );
        let mut w = World::new(true);
        let mut s = Session::new();
        for chunk in input.as_bytes().chunks(3) {
            s.handle_input(chunk, &mut w.model());
        }
        let r = replies(&s);
        assert_eq!(r.len(), 5, "{r:?}");
        assert_eq!(r[0]["id"], "a}\"]\\");
        assert_eq!(r[1][0]["id"], "[{");
        assert_eq!((code_of(&r[2]), code_of(&r[3])), (-32600, -32600));
        assert_eq!(r[4]["id"], 2);
        let (r, _) = session_with("} ");
        assert_eq!(code_of(&r[0]), -32700);
    }

    #[test]
    fn syntax_errors_show_before_the_value_ends() {
        let mut w = World::new(true);
        let mut s = Session::new();
        let head = r#"{"jsonrpc": "2.0", "id": 3, "method": "#;
        w.feed(&mut s, head);
        assert!(!s.closed(), "only unfinished so far");
        // Checked again once the unfinished value doubled.
        let r = w.feed(&mut s, &alloc::format!("nope, {}", " ".repeat(head.len())));
        assert_eq!(code_of(&r[0]), -32700);
        assert!(s.closed());
        let (r, _) = session_with(r#"{"jsonrpc": "2.0", "id": 3, "method": nope"#);
        assert_eq!(code_of(&r[0]), -32700);
    }

    #[test]
    fn a_request_may_not_expand_without_bound() {
        let many = batch_of((0..MAX_VALUES).map(|_| "{}".into()));
        let mut w = World::new(true);
        let mut s = Session::new();
        let r = w.feed(&mut s, &many[..many.len() * 3 / 4]);
        assert!(s.closed(), "refused before the value is complete");
        assert_eq!(code_of(&r[0]), -32700);
        assert!(
            r[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("values")
        );
        // A full batch of real calls is well inside the cap.
        let real = batch_of((0..MAX_BATCH).map(|i| {
            alloc::format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"bdev_get_bdevs","params":{{"name":"Null0","timeout":1}}}}"#
            )
        }));
        let (r, _) = session_with(&real);
        assert_eq!(r[0].as_array().unwrap().len(), MAX_BATCH);
    }

    #[test]
    fn ram_bdevs_in_one_input_share_the_memory_budget() {
        let mut w = World::new(true);
        let mut s = Session::new();
        let create = |i: usize| {
            alloc::format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"bdev_malloc_create","params":{{"num_blocks":1024,"block_size":512}}}}"#
            )
        };
        let mut m = w.model();
        m.memory_budget = 3 << 19; // room for three 512 KiB bdevs
        let batch = batch_of((0..4).map(create));
        let pipelined: String = (4..6).map(create).collect();
        s.handle_input(alloc::format!("{batch}{pipelined}").as_bytes(), &mut m);
        let r = replies(&s);
        let batch = r[0].as_array().unwrap();
        assert_eq!(batch[2]["result"], "Malloc2");
        assert_eq!(code_of(&batch[3]), -32602, "{}", batch[3]);
        assert_eq!(code_of(&r[1]), -32602);
        assert_eq!(w.reg.ids().count(), 3);
    }

    #[test]
    fn oversized_request_is_refused() {
        let big = alloc::format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{}",
            "x".repeat(MAX_REQUEST + 10)
        );
        let (r, _) = session_with(&big);
        assert_eq!(code_of(&r[0]), -32700);
    }
}
